"""Class prototypes: one definition for /classify, the few-shot metric and calibration, so a
threshold calibrated offline means the same thing in the service."""

from __future__ import annotations

import numpy as np


def prototypes(embedding_sums: np.ndarray) -> np.ndarray:
    """Rows of summed (or averaged) unit embeddings, one per class -> unit prototypes,
    compared with a query by inner product (cosine)."""
    return embedding_sums / np.maximum(
        np.linalg.norm(embedding_sums, axis=1, keepdims=True), 1e-12)
