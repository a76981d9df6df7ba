"""P x K batch sampling: each batch holds P classes with K images each.

Online triplet mining needs positives in every batch; drawing P classes and K images per
class guarantees P*K*(K-1) anchor-positive pairs per batch.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Yields lists of ``p * k`` dataset indices; classes with fewer than 2 images are unused.

    A class with fewer than ``k`` images is sampled with replacement. One epoch is
    ``len(labels) // (p * k)`` batches, so it sees about as many images as the dataset has.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        by_class: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[label].append(index)
        self.by_class = {c: idx for c, idx in by_class.items() if len(idx) >= 2}
        if len(self.by_class) < 2:
            raise ValueError("P x K sampling needs at least 2 classes with 2+ images each")
        self.p = min(p, len(self.by_class))
        self.k = k
        self.num_batches = max(1, len(labels) // (self.p * k))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        classes = sorted(self.by_class)
        for _ in range(self.num_batches):
            batch: list[int] = []
            for label in rng.sample(classes, self.p):
                pool = self.by_class[label]
                if len(pool) >= self.k:
                    batch.extend(rng.sample(pool, self.k))
                else:
                    batch.extend(rng.choices(pool, k=self.k))
            yield batch
