"""Embedding throughput: eager fp32 PyTorch against the service's runtime and its lanes."""

from __future__ import annotations

import copy
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from models.base import Embedder
from models.checkpoint import LoadedEncoder
from models.runtimes.eager import TorchEmbedder
from models.runtimes.factory import model_lanes


class SideBySide:
    """The service's lanes under load as one runtime: single-threaded calls of
    ``embedder``, one image each, ``lanes`` of them at a time, each lane taking the next
    image as soon as its call ends."""

    def __init__(self, embedder: Embedder, lanes: int) -> None:
        self.embedder, self.lanes = embedder, lanes
        self.pool = ThreadPoolExecutor(lanes)

    def embed_batch(self, batch) -> np.ndarray:
        images = np.asarray(batch)
        return np.concatenate(list(self.pool.map(
            lambda i: self.embedder.embed_batch(images[i : i + 1]), range(len(images)))))


def runtime_device(runtime: Embedder) -> str:
    """"cuda:0", "cpu", ...: where the runtime computes (ONNX Runtime here: the CPU)."""
    return str(getattr(runtime, "device", "cpu"))


def service_lanes(runtime: Embedder) -> SideBySide | None:
    """The lanes the service runs under load with this runtime at its default settings
    (``models.runtimes.factory.model_lanes``), or None."""
    lane_embedder, lanes = model_lanes(runtime)
    return SideBySide(lane_embedder, lanes) if lane_embedder else None


def bench_embedding(loaded: LoadedEncoder, service_runtime: Embedder,
                    lanes: SideBySide | None = None,
                    fp32_onnx: Embedder | None = None) -> dict:
    """Eager fp32 PyTorch against the service's runtime (and its lanes at batch 32) in
    alternating blocks of calls, so that a drifting machine slows all alike; with
    ``fp32_onnx`` (the service runs INT8), the fp32 export and its lanes beside them. Each
    block starts with an untimed call: the runtime that ran before may still hold the cores
    (PyTorch's OpenMP threads spin for a while after a call) and the caches."""
    fp32_lanes = service_lanes(fp32_onnx) if fp32_onnx is not None else None
    size = loaded.meta.preprocessing.image_size
    device = runtime_device(service_runtime)
    # Eager fp32 on the service's device, each on a copy of the encoder (a PyTorch service
    # runtime holds ``loaded.encoder`` itself, moved and converted): plain, the reference
    # of the target, and channels_last, the fastest eager PyTorch on a CPU.
    eager = {channels_last: TorchEmbedder(copy.deepcopy(loaded.encoder),
                                          loaded.meta.preprocessing, device, bf16=False,
                                          channels_last=channels_last)
             for channels_last in (False, True)}
    out: dict = {"service_runtime": service_runtime.name, "device": device,
                 "lanes": lanes.lanes if lanes else 0}
    for batch, blocks, per_block in ((1, 5, 4), (32, 4, 2)):
        x = torch.randn(batch, 3, size, size)
        runs: dict[str, tuple[Embedder | SideBySide, torch.Tensor]] = {
            "eager_fp32": (eager[False], x), "eager_fp32_channels_last": (eager[True], x),
            "service": (service_runtime, x)}
        if lanes and batch > 1:  # (a lone request gets the all-core call, "service")
            runs["lanes"] = (lanes, x)
        if fp32_onnx is not None:
            runs["onnx_fp32"] = (fp32_onnx, x)
            if fp32_lanes and batch > 1:
                runs["onnx_fp32_lanes"] = (fp32_lanes, x)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(blocks):
            for name, (runtime, inputs) in runs.items():
                runtime.embed_batch(inputs)
                for _ in range(per_block):
                    start = time.perf_counter()
                    runtime.embed_batch(inputs)
                    times[name].append(time.perf_counter() - start)
        for name, seconds in times.items():
            out[f"{name}_b{batch}_images_per_s"] = len(runs[name][1]) / statistics.median(seconds)
    # Under load the service embeds its batches in lanes where it has them.
    best = max(out["service_b32_images_per_s"], out.get("lanes_b32_images_per_s", 0.0))
    out["speedup_b32"] = best / out["eager_fp32_b32_images_per_s"]
    out["speedup_b32_over_channels_last"] = best / out["eager_fp32_channels_last_b32_images_per_s"]
    out["bare_single_image_ms"] = 1000 / out["service_b1_images_per_s"]
    if fp32_onnx is not None:
        fp32_best = max(out["onnx_fp32_b32_images_per_s"],
                        out.get("onnx_fp32_lanes_b32_images_per_s", 0.0))
        out["fp32_onnx_speedup_b32"] = fp32_best / out["eager_fp32_b32_images_per_s"]
        out["int8_over_fp32_b32"] = best / fp32_best
    return out
