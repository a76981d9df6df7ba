"""Losses: the triplet margin loss, and a similarity-preserving regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.miners import Triplets


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


def similarity_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the two batches' cosine-similarity matrices.

    Keeps the trained embedding's geometry close to the frozen ImageNet features' on the
    pairs the triplet loss says nothing about, which is what transfers to unseen domains.
    """
    student = F.normalize(student.float(), dim=1)
    teacher = F.normalize(teacher.float(), dim=1)
    return (student @ student.T - teacher @ teacher.T).pow(2).mean()
