"""Losses: the triplet margin loss, the multi-similarity loss, the proxy-anchor loss, and a
similarity-preserving regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.miners import Triplets, pair_masks


def triplet_margin_loss(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float
) -> tuple[torch.Tensor, float]:
    """mean(max(0, d(a,p) - d(a,n) + margin)) over the triplets, and the fraction that are
    active (non-zero loss). Distances are Euclidean between unit vectors."""
    if len(anchors) == 0:
        return anchors.sum() * 0.0, 0.0
    d_ap = (anchors - positives).pow(2).sum(1).clamp_min(1e-12).sqrt()
    d_an = (anchors - negatives).pow(2).sum(1).clamp_min(1e-12).sqrt()
    losses = F.relu(d_ap - d_an + margin)
    return losses.mean(), float((losses > 0).float().mean())


def mined_triplet_loss(
    embeddings: torch.Tensor, triplets: Triplets, margin: float
) -> tuple[torch.Tensor, float]:
    a, p, n = triplets
    return triplet_margin_loss(embeddings[a], embeddings[p], embeddings[n], margin)


def multi_similarity_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0, beta: float = 50.0,
    base: float = 0.5, epsilon: float = 0.1,
) -> tuple[torch.Tensor, float]:
    """Multi-similarity loss (Wang et al. 2019) over every pair of a batch, on cosines S.

    Each anchor keeps the negatives with S_an + epsilon > its least similar positive and the
    positives with S_ap - epsilon < its most similar negative, then pays
    log(1 + sum exp(-alpha (S_ap - base))) / alpha + log(1 + sum exp(beta (S_an - base))) / beta.
    Weighing every informative pair, not one triplet per anchor, is what the paper credits
    for its transfer to unseen classes. Returns the mean over anchors and the share of
    anchors that kept a pair.
    """
    n = len(labels)
    positive, negative = pair_masks(labels)
    valid = positive.any(1) & negative.any(1)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0, 0.0
    sim = embeddings.float() @ embeddings.float().T
    with torch.no_grad():
        least_positive = sim.masked_fill(~positive, float("inf")).amin(1, keepdim=True)
        most_negative = sim.masked_fill(~negative, float("-inf")).amax(1, keepdim=True)
        kept_negative = negative & (sim + epsilon > least_positive)
        kept_positive = positive & (sim - epsilon < most_negative)
    zero = sim.new_zeros(n, 1)
    pos_term = torch.cat([zero, (-alpha * (sim - base)).masked_fill(~kept_positive,
                                                                     float("-inf"))], 1)
    neg_term = torch.cat([zero, (beta * (sim - base)).masked_fill(~kept_negative,
                                                                   float("-inf"))], 1)
    per_anchor = pos_term.logsumexp(1) / alpha + neg_term.logsumexp(1) / beta
    kept = (kept_positive.any(1) | kept_negative.any(1)) & valid
    return per_anchor[valid].mean(), float(kept[valid].float().mean())


class ProxyAnchorLoss(torch.nn.Module):
    """Proxy-anchor loss (Kim et al. 2020): one learnt proxy per training class.

    Each proxy p that has positives X+ in the batch pays log(1 + sum exp(-alpha (S_xp - delta)))
    over them, and every proxy pays log(1 + sum exp(alpha (S_xp + delta))) over its negatives;
    the first sum is averaged over proxies with positives, the second over all proxies. Each
    photo is pulled toward its class and pushed from every other class at once, not only from
    what one batch happens to hold. ``init`` starts the proxies (e.g. the class means of the
    starting encoder's embeddings) so that the first steps do not pull toward random points.
    """

    def __init__(self, num_classes: int, dim: int, alpha: float = 32.0, delta: float = 0.1,
                 init: torch.Tensor | None = None):
        super().__init__()
        start = init.clone().float() if init is not None else torch.randn(num_classes, dim)
        if start.shape != (num_classes, dim):
            raise ValueError(f"proxy init has shape {tuple(start.shape)}, "
                             f"expected {(num_classes, dim)}")
        self.proxies = torch.nn.Parameter(F.normalize(start, dim=1))
        self.alpha = alpha
        self.delta = delta

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                                float]:
        """The loss, and the share of photos whose own proxy does not lead every other proxy
        by 2 delta (the photos the loss still moves most)."""
        sim = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.proxies, dim=1).T
        positive = F.one_hot(labels, len(self.proxies)).bool()
        pos_exp = torch.exp(-self.alpha * (sim - self.delta)).masked_fill(~positive, 0.0)
        neg_exp = torch.exp(self.alpha * (sim + self.delta)).masked_fill(positive, 0.0)
        with_positives = positive.any(0)
        pos_term = torch.log1p(pos_exp.sum(0))[with_positives].sum() / with_positives.sum()
        neg_term = torch.log1p(neg_exp.sum(0)).sum() / len(self.proxies)
        with torch.no_grad():
            own = sim.gather(1, labels[:, None]).squeeze(1)
            other = sim.masked_fill(positive, float("-inf")).amax(1)
            within_margin = float((own - other < 2 * self.delta).float().mean())
        return pos_term + neg_term, within_margin


def similarity_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the two batches' cosine-similarity matrices.

    Keeps the trained embedding's geometry close to the frozen ImageNet features' on the
    pairs the triplet loss says nothing about, which is what transfers to unseen domains.
    """
    student = F.normalize(student.float(), dim=1)
    teacher = F.normalize(teacher.float(), dim=1)
    return (student @ student.T - teacher @ teacher.T).pow(2).mean()
