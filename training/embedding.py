"""Embed a whole image folder in batches, with a progress bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.atomic import atomic_write_with
from models.base import Embedder
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


def embed_folder_cached(
    embedder: Embedder,
    folder: ImageFolder,
    cache: Path | None,
    fingerprint: str,
    **kwargs,
) -> np.ndarray:
    """:func:`embed_folder` with a per-image cache (one ``.npz`` per checkpoint fingerprint),
    so repeated evaluations over overlapping folders embed each photo once."""
    if cache is None:
        return embed_folder(embedder, folder, **kwargs)
    path = Path(cache) / f"{fingerprint.replace(':', '-')}-{embedder.name}.npz"
    known: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as stored:
            known = dict(zip(stored["paths"].tolist(), stored["vectors"], strict=True))
    missing = [s for s in folder.samples if str(s.path) not in known]
    if missing:
        subset = ImageFolder(folder.root, folder.classes, missing)
        for sample, vector in zip(missing, embed_folder(embedder, subset, **kwargs),
                                  strict=True):
            known[str(sample.path)] = vector
        atomic_write_with(path, lambda handle: np.savez(
            handle, paths=np.array(list(known)), vectors=np.stack(list(known.values()))))
    return np.stack([known[str(s.path)] for s in folder.samples])


def default_workers() -> int:
    return min(4, max(0, (torch.get_num_threads() or 1) - 1))
