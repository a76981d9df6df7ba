"""Writes the ONNX graph that :mod:`models.runtimes.onnx` serves (needs torch)."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import onnx
import torch

from models.atomic import atomic_write
from models.backbones import with_static_padding
from models.checkpoint import LoadedEncoder
from models.decision import shot_calibration
from models.runtimes.int8 import Int8Calibration
from models.runtimes.onnx import onnx_metadata


def int8_calibration(loaded: LoadedEncoder) -> Int8Calibration | None:
    """The checkpoint's INT8 calibration, if it has one for its test-time size (activation
    ranges measured at one input size do not carry over to another)."""
    raw = loaded.meta.extra.get("int8")
    if not raw:
        return None
    calibration = Int8Calibration.from_dict(raw)
    size = calibration.gate.get("image_size")
    return calibration if size == loaded.meta.preprocessing.image_size else None


def export_onnx(loaded: LoadedEncoder, out: str | os.PathLike, opset: int = 17) -> Path:
    """Export the encoder (normalised embeddings, dynamic batch) to ONNX, atomically, with
    the checkpoint's fingerprint and preprocessing in the file's metadata."""
    out = Path(out)
    size = loaded.meta.preprocessing.image_size
    encoder = copy.deepcopy(loaded.encoder).to("cpu").float().eval()
    # The input size is fixed, so TF-style 'same' padding becomes constants that ONNX
    # Runtime folds into the convolutions instead of computing them on every call.
    encoder = with_static_padding(encoder, (size, size))
    example = torch.zeros(2, 3, size, size)
    with atomic_write(out, suffix=".onnx") as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but exports this CNN exactly with no
            # extra packages; move to the torch.export-based one when it is removed.
            warnings.simplefilter("ignore", DeprecationWarning)
            # The constant pads are folded by ONNX Runtime when it loads the graph.
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1")
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
        graph = onnx.load(str(tmp))
        metadata = onnx_metadata(loaded.fingerprint, loaded.meta.preprocessing,
                                 loaded.encoder.embedding_dim, int8_calibration(loaded),
                                 openset=shot_calibration(loaded.meta.extra))
        onnx.helper.set_model_props(graph, metadata)
        onnx.save(graph, str(tmp))
    return out
