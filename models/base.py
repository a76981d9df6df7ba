"""What serving needs from ``models`` without PyTorch: names, the embedder protocol, and
the fingerprint that keeps embeddings of different weights apart.

Importing torch and timm costs seconds, more than everything else a restart does, so this
module (and :mod:`models.runtimes.onnx`) must never import them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from models.preprocessing import Preprocessing, gallery_views, preprocess
from models.prototypes import prototypes

Runtime = Literal["auto", "torch", "onnx", "int8"]
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default.pt"
IMAGENET = "imagenet"  # pseudo-checkpoint: the backbone's ImageNet features, untrained


class Embedder(Protocol):
    name: str
    dim: int
    preprocessing: Preprocessing

    def embed_batch(self, batch: Any) -> np.ndarray:
        """(N, 3, H, W) normalised float32 array or CPU tensor -> (N, dim) unit vectors."""
        ...


def embed_images(embedder: Embedder, images: Sequence[Image.Image]) -> np.ndarray:
    """Preprocess RGB images with the checkpoint's settings and embed them as one batch."""
    if not images:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return embedder.embed_batch(np.stack([preprocess(i, embedder.preprocessing) for i in images]))


def embed_for_gallery(embedder: Embedder, batch: Any) -> np.ndarray:
    """Gallery photos' embeddings: each the normalised mean of its views
    (``Preprocessing.gallery_views``); queries use ``embed_batch`` alone."""
    views = embedder.preprocessing.gallery_views
    if views == 1:
        return embedder.embed_batch(batch)
    return mean_of_views(embedder.embed_batch(gallery_views(batch, views)), views)


def mean_of_views(vectors: np.ndarray, views: int) -> np.ndarray:
    """(views * N, dim) embeddings, view-major as :func:`gallery_views` orders them ->
    (N, dim) unit vectors, each the normalised mean of its photo's views."""
    return prototypes(vectors.reshape(views, -1, vectors.shape[-1]).sum(0))


def file_fingerprint(path: str | os.PathLike) -> str:
    """Identifies a checkpoint's weights: embeddings of different fingerprints never mix.
    Hashed once per file version (path, size, modification time), not once per caller."""
    stat = os.stat(path)
    return _hash_file(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def cpu_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The fields of ``/proc/cpuinfo`` (or of the text given), e.g. "model name" and "flags";
    {} where it cannot be read (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    pairs = (line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset, not the whole host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
