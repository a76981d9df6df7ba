"""Embed a whole image folder in batches, with a progress bar: as queries, or as gallery
photos (``gallery=True``: each the mean of its views, as the service stores them)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.atomic import atomic_write_with
from models.base import Embedder, embed_for_gallery
from models.preprocessing import eval_transform
from training.data import ImageDataset, ImageFolder


def embed_folder(
    embedder: Embedder,
    folder: ImageFolder,
    batch_size: int = 32,
    workers: int = 0,
    desc: str = "embedding",
    gallery: bool = False,
) -> np.ndarray:
    """(len(folder), dim) embeddings in the folder's sample order."""
    embed = functools.partial(embed_for_gallery, embedder) if gallery else embedder.embed_batch
    loader = DataLoader(
        ImageDataset(folder, eval_transform(embedder.preprocessing)),
        batch_size=batch_size,
        num_workers=workers,
    )
    parts = [
        embed(images)
        for images, _ in tqdm(loader, desc=desc, unit="batch", leave=False)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)


def embed_folder_cached(
    embedder: Embedder,
    folder: ImageFolder,
    cache: Path | None,
    fingerprint: str,
    gallery: bool = False,
    **kwargs,
) -> np.ndarray:
    """:func:`embed_folder` with a per-image cache (one ``.npz`` per checkpoint fingerprint,
    and one more for its gallery-side embeddings where those are of several views), so
    repeated evaluations over overlapping folders embed each photo once."""
    views = embedder.preprocessing.gallery_views if gallery else 1
    if cache is None:
        return embed_folder(embedder, folder, gallery=gallery, **kwargs)
    kind = f"-views{views}" if views > 1 else ""
    path = Path(cache) / f"{fingerprint.replace(':', '-')}-{embedder.name}{kind}.npz"
    known: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as stored:
            known = dict(zip(stored["paths"].tolist(), stored["vectors"], strict=True))
    missing = [s for s in folder.samples if str(s.path) not in known]
    if missing:
        subset = ImageFolder(folder.root, folder.classes, missing)
        for sample, vector in zip(missing, embed_folder(embedder, subset, gallery=gallery,
                                                        **kwargs), strict=True):
            known[str(sample.path)] = vector
        atomic_write_with(path, lambda handle: np.savez(
            handle, paths=np.array(list(known)), vectors=np.stack(list(known.values()))))
    return np.stack([known[str(s.path)] for s in folder.samples])


def default_workers() -> int:
    return min(4, max(0, (torch.get_num_threads() or 1) - 1))
