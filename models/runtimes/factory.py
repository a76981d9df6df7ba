"""The one place that chooses a runtime: PyTorch on CUDA, ONNX Runtime on the CPU.

On a CPU machine whose checkpoint was exported before, the cached export is served without
importing torch (seconds of a restart); everything else loads the checkpoint first.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.base import IMAGENET, Embedder, Runtime, file_fingerprint, usable_cpus
from models.decision import ShotCalibration, shot_calibration
from models.runtimes.int8 import INT8_SUFFIX, int8_cache_path, quantize_export
from models.runtimes.onnx import OnnxEmbedder, onnx_cache_path, onnx_metadata, open_cached_onnx

if TYPE_CHECKING:
    from models.checkpoint import LoadedEncoder

log = logging.getLogger(__name__)


@dataclass
class OpenedEmbedder:
    embedder: Embedder
    fingerprint: str  # of the weights (and test-time size) the embedder computes with
    device: str
    openset: ShotCalibration | None = None  # the checkpoint's /classify calibration


def open_embedder(
    checkpoint: str | os.PathLike | LoadedEncoder,
    runtime: Runtime = "auto",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> OpenedEmbedder:
    """The runtime for ``checkpoint`` (a file, :data:`IMAGENET`, or an already loaded
    encoder): PyTorch on CUDA or with ``runtime="torch"``, else ONNX Runtime from the export
    cached in ``cache_dir`` (default: beside the checkpoint), exported once if missing."""
    if isinstance(checkpoint, (str, os.PathLike)):
        cpu = device == "cpu" or (device == "auto" and not cuda_may_be_available())
        path = Path(checkpoint)
        if runtime != "torch" and cpu and str(checkpoint) != IMAGENET and path.is_file():
            fingerprint = file_fingerprint(path)
            cached = open_cached_onnx(onnx_cache_path(cache_dir or path.parent, fingerprint),
                                      fingerprint, threads)
            if cached is not None:
                log.info("serving the cached ONNX export of %s (fingerprint %s)", path,
                         fingerprint)
                return on_cpu(cached, fingerprint, runtime, threads)
    from models.checkpoint import load_checkpoint
    from models.runtimes.eager import TorchEmbedder, resolve_device

    torch_device = resolve_device(device)
    loaded = (load_checkpoint(checkpoint, torch_device)
              if isinstance(checkpoint, (str, os.PathLike)) else checkpoint)
    if runtime == "torch" or (runtime == "auto" and torch_device.type == "cuda"):
        embedder = TorchEmbedder(loaded.encoder, loaded.meta.preprocessing, torch_device)
        return OpenedEmbedder(embedder, loaded.fingerprint, str(torch_device),
                              shot_calibration(loaded.meta.extra))
    if torch_device.type == "cuda":
        log.warning("runtime=onnx runs on the CPU here even though CUDA is available")
    onnx_path = onnx_cache_path(cache_dir or Path(loaded.path).parent, loaded.fingerprint)
    cached = open_cached_onnx(onnx_path, loaded.fingerprint, threads)
    if cached is None:
        from models.runtimes.onnx_export import export_onnx

        log.info("exporting the encoder to ONNX at %s (once per checkpoint)", onnx_path)
        export_onnx(loaded, onnx_path)
        cached = OnnxEmbedder(onnx_path, threads)
    return on_cpu(cached, loaded.fingerprint, runtime, threads)


def on_cpu(fp32: OnnxEmbedder, fingerprint: str, runtime: Runtime,
           threads: int | None) -> OpenedEmbedder:
    """fp32 ONNX, or its INT8 quantisation where the export carries a calibration that
    passed its accuracy gate (``auto``) or INT8 is asked for by name. The INT8 graph is
    made once from the fp32 export and cached beside it."""
    calibration = fp32.int8 if fp32.int8 is not None and fp32.int8.passed else None
    if runtime == "int8" and calibration is None:
        raise RuntimeError(f"RUNTIME=int8, but {fp32.path.name} carries no INT8 calibration "
                           "that passed its gate: make one with python -m training.export "
                           "--int8, or use RUNTIME=onnx")
    if runtime not in ("auto", "int8") or calibration is None:
        return OpenedEmbedder(fp32, fingerprint, "cpu", fp32.openset)
    int8_fingerprint = fingerprint + INT8_SUFFIX
    path = int8_cache_path(fp32.path, calibration)
    embedder = open_cached_onnx(path, int8_fingerprint, threads)
    if embedder is None:
        log.info("quantising the ONNX export to INT8 at %s (once per checkpoint)", path)
        quantize_export(fp32.path, path, calibration, int8_metadata(fp32))
        embedder = OnnxEmbedder(path, threads)
    return OpenedEmbedder(embedder, int8_fingerprint, "cpu", fp32.openset)


def int8_metadata(fp32: OnnxEmbedder) -> dict[str, str]:
    """What the INT8 graph quantised from ``fp32`` carries about itself."""
    return onnx_metadata(fp32.fingerprint + INT8_SUFFIX, fp32.preprocessing, fp32.dim,
                         runtime="int8", openset=fp32.openset)


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


def lone_call_embedder(embedder: Embedder) -> OnnxEmbedder | None:
    """The session for a lone image on an otherwise idle service: ONNX Runtime on every
    core with its threads spinning during the call (None for other runtimes)."""
    if isinstance(embedder, OnnxEmbedder) and embedder.threads != 1:
        return embedder.spinning_in_calls()
    return None


def cuda_may_be_available() -> bool:
    """False only where there certainly is no usable NVIDIA GPU: Linux without its device
    nodes (containers get them from the NVIDIA runtime). Lets CPU serving skip torch."""
    if sys.platform != "linux":
        return True
    return any(Path("/dev").glob("nvidia*")) or Path("/dev/dxg").exists()  # dxg: WSL
