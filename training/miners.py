"""Triplet miners: choose (anchor, positive, negative) index triples within a batch.

All work on L2-normalised embeddings and Euclidean distances. Each returns three
``LongTensor`` index vectors of equal length.
"""

from __future__ import annotations

import torch

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between unit vectors: sqrt(2 - 2 cos), stable at zero."""
    cosine = embeddings @ embeddings.T
    return (2.0 - 2.0 * cosine).clamp_min(1e-12).sqrt()


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) pairs of a batch: same label but not itself, other label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def batch_hard(embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """For every anchor: its farthest positive and its nearest negative (Hermans et al. 2017)."""
    dist = pairwise_distances(embeddings.detach())
    positive, negative = pair_masks(labels)
    valid = positive.any(1) & negative.any(1)
    hardest_pos = dist.masked_fill(~positive, float("-inf")).argmax(1)
    hardest_neg = dist.masked_fill(~negative, float("inf")).argmin(1)
    anchors = valid.nonzero().squeeze(1)
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


def semi_hard(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """For every anchor-positive pair: the nearest negative still farther than the positive
    and inside the margin, d(a,p) < d(a,n) < d(a,p) + margin (FaceNet). Pairs with no such
    negative are left out."""
    dist = pairwise_distances(embeddings.detach())
    positive, negative = pair_masks(labels)
    a, p = positive.nonzero(as_tuple=True)
    d_ap = dist[a, p][:, None]
    d_an = dist[a]  # (pairs, batch)
    band = negative[a] & (d_an > d_ap) & (d_an < d_ap + margin)
    nearest = d_an.masked_fill(~band, float("inf")).argmin(1)
    keep = band.any(1)
    return a[keep], p[keep], nearest[keep]


def random_triplets(labels: list[int], count: int, generator: torch.Generator) -> list[tuple]:
    """Offline mode: ``count`` uniformly random (anchor, positive, negative) dataset indices,
    the classic Siamese setup, for comparison with online mining."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    usable = [c for c, idx in by_class.items() if len(idx) >= 2]
    if not usable or len(by_class) < 2:
        raise ValueError("random triplets need a class with 2+ images and a second class")
    everyone = torch.arange(len(labels))
    label_tensor = torch.tensor(labels)
    triplets = []
    for _ in range(count):
        cls = usable[int(torch.randint(len(usable), (1,), generator=generator))]
        pool = by_class[cls]
        i, j = torch.randperm(len(pool), generator=generator)[:2].tolist()
        others = everyone[label_tensor != cls]
        neg = int(others[torch.randint(len(others), (1,), generator=generator)])
        triplets.append((pool[i], pool[j], neg))
    return triplets
