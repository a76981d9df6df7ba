"""Embed a whole image folder in batches, with a progress bar."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.inference import Embedder
from models.preprocessing import eval_transform
from training.data import ImageDataset, ImageFolder


def embed_folder(
    embedder: Embedder,
    folder: ImageFolder,
    batch_size: int = 32,
    workers: int = 0,
    desc: str = "embedding",
) -> np.ndarray:
    """(len(folder), dim) embeddings in the folder's sample order."""
    loader = DataLoader(
        ImageDataset(folder, eval_transform(embedder.preprocessing)),
        batch_size=batch_size,
        num_workers=workers,
    )
    parts = [
        embedder.embed_batch(images)
        for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)


def default_workers() -> int:
    return min(4, max(0, (torch.get_num_threads() or 1) - 1))
