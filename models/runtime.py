"""The serving side of the models that needs no torch: ONNX Runtime, and choosing a runtime.

Importing torch and timm costs seconds, more than everything else a restart does. On a CPU
machine whose checkpoint was exported to ONNX before (the export is cached under the
checkpoint's fingerprint and carries its own preprocessing metadata), :func:`open_embedder`
serves from ONNX Runtime without importing either. Anything else (the first start, CUDA,
``runtime=torch``, the ImageNet baseline) goes through :mod:`models.inference`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from models.preprocessing import Preprocessing, preprocess

log = logging.getLogger(__name__)

Runtime = Literal["auto", "torch", "onnx"]
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default.pt"
IMAGENET = "imagenet"  # pseudo-checkpoint: the backbone's ImageNet features, untrained
# Bumped when export_onnx changes the graph it writes, so that stale cached exports are
# not reused (2: static 'same' padding, 1.5x faster; preprocessing metadata in the file).
ONNX_EXPORT_VERSION = 2
_META_PREFIX = "fewshot."


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


def onnx_export_path(cache_dir: str | os.PathLike, fingerprint: str) -> Path:
    safe = fingerprint.replace(":", "-")
    return Path(cache_dir) / f"encoder-{safe}.v{ONNX_EXPORT_VERSION}.onnx"


def onnx_metadata(fingerprint: str, preprocessing: Preprocessing, dim: int) -> dict[str, str]:
    """What an exported graph carries about itself (ONNX ``metadata_props``)."""
    return {
        f"{_META_PREFIX}fingerprint": fingerprint,
        f"{_META_PREFIX}preprocessing": json.dumps(preprocessing.to_dict()),
        f"{_META_PREFIX}embedding_dim": str(dim),
        f"{_META_PREFIX}export_version": str(ONNX_EXPORT_VERSION),
    }


class OnnxEmbedder:
    """ONNX Runtime on CPU: the fast path where there is no GPU."""

    name = "onnx"

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Idle pool threads would otherwise spin for work after each call, taking the cores
        # that HTTP parsing and image decoding need (16-client /search throughput went from
        # 43.6 to 52.5 req/s with spinning off, one A/B run on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if f"{_META_PREFIX}preprocessing" not in meta:
            raise ValueError(f"{onnx_path} has no preprocessing metadata: export it again "
                             "with python -m training.export")
        self.fingerprint = meta[f"{_META_PREFIX}fingerprint"]
        self.preprocessing = Preprocessing.from_dict(
            json.loads(meta[f"{_META_PREFIX}preprocessing"]))
        self.dim = int(meta[f"{_META_PREFIX}embedding_dim"])
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(onnx_path)

    def single_threaded(self) -> OnnxEmbedder:
        """Another session of the same export on one thread, which several threads may run
        at once: parallel batches instead of threads working in lock-step on one."""
        return OnnxEmbedder(self.path, threads=1)

    def embed_batch(self, batch: Any) -> np.ndarray:
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        (out,) = self.session.run(None, {self.input_name: inputs})
        return out.astype(np.float32, copy=False)


def onnx_cache_path(checkpoint: str | os.PathLike, fingerprint: str,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the export of ``checkpoint`` is cached: ``cache_dir``, else beside the checkpoint."""
    return onnx_export_path(Path(cache_dir) if cache_dir else Path(checkpoint).parent, fingerprint)


def open_cached_onnx(path: Path, fingerprint: str, threads: int | None) -> OnnxEmbedder | None:
    """The cached export if it is there, readable and of these weights; else None. A damaged
    or foreign file is removed (and then exported again), not trusted."""
    if not path.is_file():
        return None
    try:
        embedder = OnnxEmbedder(path, threads)
        if embedder.fingerprint == fingerprint:
            return embedder
        problem = f"it is the export of other weights ({embedder.fingerprint})"
    except Exception as exc:
        problem = str(exc)
    log.warning("removing the unusable cached ONNX export %s: %s", path, problem)
    path.unlink(missing_ok=True)
    return None


def usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset, not the whole host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def model_lanes(embedder: Embedder, lanes: int | None = None,
                threads: int | None = None) -> tuple[OnnxEmbedder | None, int]:
    """The service's lanes under load: ONNX Runtime on the CPU runs ``lanes`` single-threaded
    calls side by side (default: one per inference thread, i.e. per usable CPU). Returns
    the single-threaded session and the count, or ``(None, 0)`` where there are none (other
    runtimes, or fewer than 2)."""
    count = lanes if lanes is not None else threads or usable_cpus()
    if isinstance(embedder, OnnxEmbedder) and count > 1:
        return embedder.single_threaded(), count
    return None, 0


def cuda_may_be_available() -> bool:
    """False only where there certainly is no usable NVIDIA GPU: Linux without its device
    nodes (containers get them from the NVIDIA runtime). Lets CPU serving skip torch."""
    if sys.platform != "linux":
        return True
    return any(Path("/dev").glob("nvidia*")) or Path("/dev/dxg").exists()  # dxg: WSL


@dataclass
class OpenedEmbedder:
    embedder: Embedder
    fingerprint: str
    device: str


def open_embedder(
    checkpoint: str | os.PathLike,
    runtime: Runtime = "auto",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> OpenedEmbedder:
    """The runtime the service should use for ``checkpoint``: PyTorch on CUDA, else ONNX
    Runtime; from the cached export without importing torch when it can."""
    cpu = device == "cpu" or (device == "auto" and not cuda_may_be_available())
    path = Path(checkpoint)
    if runtime != "torch" and cpu and str(checkpoint) != IMAGENET and path.is_file():
        fingerprint = file_fingerprint(path)
        cached = open_cached_onnx(onnx_cache_path(path, fingerprint, cache_dir), fingerprint,
                                  threads)
        if cached is not None:
            log.info("serving the cached ONNX export of %s (fingerprint %s)", path, fingerprint)
            return OpenedEmbedder(cached, fingerprint, "cpu")
    from models.checkpoint import load_checkpoint
    from models.inference import make_embedder, resolve_device

    torch_device = resolve_device(device)
    loaded = load_checkpoint(checkpoint, device=torch_device)
    embedder = make_embedder(loaded, runtime, str(torch_device), cache_dir, threads)
    return OpenedEmbedder(embedder, loaded.fingerprint, str(torch_device))
