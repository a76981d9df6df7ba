"""Eager PyTorch: the runtime on CUDA (bf16 autocast, channels_last) and the reference the
others are checked and benchmarked against."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.encoder import Encoder
from models.preprocessing import Preprocessing


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda was asked for, but no CUDA device is available")
    return torch.device(device)


class TorchEmbedder:
    """Eager PyTorch; on CUDA with bf16 autocast. It takes ``encoder`` over: the module is
    moved to ``device`` and memory format in place (pass a copy to keep the original)."""

    name = "torch"

    def __init__(
        self,
        encoder: Encoder,
        preprocessing: Preprocessing,
        device: torch.device | str = "cpu",
        bf16: bool | None = None,
        channels_last: bool = True,  # faster for these convolutions on CPU and GPU
    ) -> None:
        device = torch.device(device)
        self.device = device
        self.dim = encoder.embedding_dim
        self.preprocessing = preprocessing
        self.bf16 = device.type == "cuda" if bf16 is None else bf16
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.encoder = encoder.to(device, memory_format=memory_format).eval()

    @torch.inference_mode()
    def embed_batch(self, batch: Any) -> np.ndarray:
        batch = torch.as_tensor(batch).to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.encoder(batch)
        return out.float().cpu().numpy().astype(np.float32, copy=False)
