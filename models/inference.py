"""Embedding runtimes: eager PyTorch and ONNX Runtime behind one small interface.

On CUDA, PyTorch with bf16 autocast and channels_last is fastest; on CPU, ONNX Runtime runs
EfficientNet-Lite about 3-4x faster than eager PyTorch fp32 (see bench/). ``make_embedder``
picks the runtime; ``export_onnx`` writes the ONNX graph (cached per checkpoint fingerprint).
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from PIL import Image

from models.checkpoint import LoadedEncoder
from models.encoder import Encoder
from models.preprocessing import Preprocessing, eval_transform

log = logging.getLogger(__name__)
Runtime = Literal["auto", "torch", "onnx"]


class Embedder(Protocol):
    name: str
    dim: int
    preprocessing: Preprocessing

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) normalised float tensor -> (N, dim) float32 unit vectors."""
        ...


def embed_images(embedder: Embedder, images: Sequence[Image.Image]) -> np.ndarray:
    """Preprocess RGB images with the checkpoint's transform and embed them as one batch."""
    if not images:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    transform = eval_transform(embedder.preprocessing)
    return embedder.embed_batch(torch.stack([transform(image) for image in images]))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda was asked for, but no CUDA device is available")
    return torch.device(device)


class TorchEmbedder:
    """Eager PyTorch; on CUDA with bf16 autocast and channels_last."""

    name = "torch"

    def __init__(
        self,
        encoder: Encoder,
        preprocessing: Preprocessing,
        device: torch.device | str = "cpu",
        bf16: bool | None = None,
    ) -> None:
        device = torch.device(device)
        self.encoder = encoder.to(device).eval()
        self.device = device
        self.dim = encoder.embedding_dim
        self.preprocessing = preprocessing
        self.bf16 = device.type == "cuda" if bf16 is None else bf16
        self.channels_last = True  # ~1.7x faster on CPU too (measured, AVX2)
        if self.channels_last:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.encoder(batch)
        return out.float().cpu().numpy().astype(np.float32, copy=False)


class OnnxEmbedder:
    """ONNX Runtime on CPU: the fast path where there is no GPU."""

    name = "onnx"

    def __init__(self, onnx_path: str | os.PathLike, preprocessing: Preprocessing, dim: int,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.preprocessing = preprocessing
        self.dim = dim

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: batch.numpy().astype(np.float32)})
        return out.astype(np.float32, copy=False)


def export_onnx(loaded: LoadedEncoder, out: str | os.PathLike, opset: int = 17) -> Path:
    """Export the encoder (normalised embeddings, dynamic batch) to ONNX, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder = copy.deepcopy(loaded.encoder).to("cpu").float().eval()
    size = loaded.meta.preprocessing.image_size
    example = torch.zeros(2, 3, size, size)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but exports this CNN exactly with no
            # extra packages; move to the torch.export-based one when it is removed.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                encoder,
                (example,),
                str(tmp),
                input_names=["images"],
                output_names=["embeddings"],
                dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def make_embedder(
    loaded: LoadedEncoder,
    runtime: Runtime = "auto",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> Embedder:
    """Choose the runtime: PyTorch on CUDA; ONNX Runtime on CPU (exported once and cached)."""
    torch_device = resolve_device(device)
    if runtime == "torch" or (runtime == "auto" and torch_device.type == "cuda"):
        return TorchEmbedder(loaded.encoder, loaded.meta.preprocessing, torch_device)
    if torch_device.type == "cuda":
        log.warning("runtime=onnx runs on the CPU here even though CUDA is available")
    cache = Path(cache_dir) if cache_dir else Path(loaded.path).parent
    onnx_path = cache / f"encoder-{loaded.fingerprint.replace(':', '-')}.onnx"
    if not onnx_path.exists():
        log.info("exporting the encoder to ONNX at %s (once per checkpoint)", onnx_path)
        export_onnx(loaded, onnx_path)
    return OnnxEmbedder(onnx_path, loaded.meta.preprocessing, loaded.encoder.embedding_dim,
                        threads)


__all__ = [
    "Embedder",
    "OnnxEmbedder",
    "TorchEmbedder",
    "embed_images",
    "export_onnx",
    "make_embedder",
    "resolve_device",
]
