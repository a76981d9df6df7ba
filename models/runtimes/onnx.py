"""ONNX Runtime on the CPU: the fast path where there is no GPU, and it needs no torch.

An export is cached per checkpoint fingerprint and carries its own preprocessing metadata,
so a restart serves from it without loading the checkpoint at all.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.decision import ShotCalibration
from models.preprocessing import Preprocessing
from models.runtimes.int8 import Int8Calibration

log = logging.getLogger(__name__)

# Bumped when the exporter changes the graph or the metadata it writes, so that stale
# cached exports are not reused (3: the INT8 calibration travels with the export).
ONNX_EXPORT_VERSION = 3
_META_PREFIX = "fewshot."


def onnx_metadata(fingerprint: str, preprocessing: Preprocessing, dim: int,
                  int8: Int8Calibration | None = None, runtime: str = "onnx",
                  openset: ShotCalibration | None = None) -> dict[str, str]:
    """What an exported graph carries about itself (ONNX ``metadata_props``), the
    checkpoint's calibrations included, so that serving it needs no checkpoint."""
    return {
        f"{_META_PREFIX}fingerprint": fingerprint,
        f"{_META_PREFIX}preprocessing": json.dumps(preprocessing.to_dict()),
        f"{_META_PREFIX}embedding_dim": str(dim),
        f"{_META_PREFIX}export_version": str(ONNX_EXPORT_VERSION),
        f"{_META_PREFIX}runtime": runtime,
        **({f"{_META_PREFIX}int8": json.dumps(int8.to_dict())} if int8 else {}),
        **({f"{_META_PREFIX}openset": json.dumps(openset.to_dict())} if openset else {}),
    }


def onnx_cache_path(cache_dir: str | os.PathLike, fingerprint: str) -> Path:
    """Where the export of the weights ``fingerprint`` is cached in ``cache_dir``."""
    safe = fingerprint.replace(":", "-")
    return Path(cache_dir) / f"encoder-{safe}.v{ONNX_EXPORT_VERSION}.onnx"


class OnnxEmbedder:
    """An exported graph in ONNX Runtime: fp32 (``name`` "onnx") or quantised ("int8")."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None,
                 spin_in_calls: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Pool threads never spin between calls: they would take the cores that HTTP
        # parsing and image decoding need. With spin_in_calls they spin between a call's
        # operators and stop when it ends, instead of sleeping and being woken for each.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spin_in_calls else "0")
        if spin_in_calls:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        self.threads, self.spins_in_calls = threads, spin_in_calls
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
        self.name = meta.get(f"{_META_PREFIX}runtime", "onnx")
        self.int8 = (Int8Calibration.from_dict(json.loads(meta[f"{_META_PREFIX}int8"]))
                     if f"{_META_PREFIX}int8" in meta else None)
        self.openset = (ShotCalibration.from_dict(json.loads(meta[f"{_META_PREFIX}openset"]))
                        if f"{_META_PREFIX}openset" in meta else None)
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(onnx_path)

    def single_threaded(self) -> OnnxEmbedder:
        """Another session of the same export on one thread, which several threads may run
        at once: parallel batches instead of threads working in lock-step on one."""
        return OnnxEmbedder(self.path, threads=1)

    def spinning_in_calls(self) -> OnnxEmbedder:
        """Another session of the same export whose pool threads spin during a call: a
        lone call ~15% faster, for when nothing else needs the cores meanwhile."""
        return OnnxEmbedder(self.path, threads=self.threads, spin_in_calls=True)

    def embed_batch(self, batch: Any) -> np.ndarray:
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        (out,) = self.session.run(None, {self.input_name: inputs})
        return out.astype(np.float32, copy=False)


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
