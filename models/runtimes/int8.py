"""INT8 on the CPU: static quantisation (QDQ) of the fp32 ONNX export, with ONNX Runtime.

The activation ranges are measured once on real photos (``python -m training.export
--int8``), checked by an accuracy gate, and kept in the checkpoint's metadata; the fp32
export carries them on, so the service quantises its export at start-up without photos,
without PyTorch, and caches the result beside the fp32 export. Needs no torch.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.atomic import atomic_write

INT8_SUFFIX = "+int8"  # of the fingerprint: int8 and fp32 embeddings never mix


@dataclass(frozen=True)
class QuantOptions:
    """How to quantise. ``reduce_range`` (7-bit weights) keeps u8 x s8 products from
    saturating on CPUs without VNNI (AVX2), where full-range weights lose accuracy."""

    method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    reduce_range: bool = True
    keep_fp32: tuple[str, ...] = ("first_conv", "head")  # first_conv, head, depthwise


@dataclass
class Int8Calibration:
    """What the checkpoint carries: the options, the measured ranges (ONNX Runtime's
    calibration cache format) and the accuracy gate's numbers."""

    options: QuantOptions
    ranges: dict[str, Any]
    gate: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.gate.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        return {"options": {**asdict(self.options), "keep_fp32": list(self.options.keep_fp32)},
                "ranges": self.ranges, "gate": self.gate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Calibration:
        options = dict(data["options"])
        options["keep_fp32"] = tuple(options.get("keep_fp32", ()))
        return cls(QuantOptions(**options), dict(data["ranges"]), dict(data.get("gate", {})))

    def key(self) -> str:
        """Identifies the quantised graph these settings make (with ONNX Runtime's version,
        whose quantiser makes it)."""
        import onnxruntime

        text = json.dumps(self.to_dict()["options"], sort_keys=True) + json.dumps(
            self.ranges, sort_keys=True) + onnxruntime.__version__
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def int8_cache_path(fp32_path: Path, calibration: Int8Calibration) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}.int8-{calibration.key()}.onnx")


def _excluded_nodes(model: Any, keep_fp32: Sequence[str]) -> list[str]:
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    names: list[str] = []
    if "first_conv" in keep_fp32 and convs:
        names.append(convs[0].name)
    if "head" in keep_fp32:
        names += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    if "depthwise" in keep_fp32:
        names += [n.name for n in convs
                  if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return names


def _quantize(fp32_path: Path, out: Path, options: QuantOptions, ranges_file: Path,
              reader: Any = None) -> None:
    """ONNX Runtime's quantize_static, from ``ranges_file`` (or, with a ``reader``, measuring
    the ranges into it first)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                        per_channel=options.per_channel, reduce_range=options.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method,
                        nodes_to_exclude=_excluded_nodes(onnx.load(str(prepared)),
                                                         options.keep_fp32),
                        calibration_cache_path=str(ranges_file))


def measure_ranges(fp32_path: Path, inputs: np.ndarray, options: QuantOptions,
                   input_name: str = "images") -> dict[str, Any]:
    """Activation ranges of the fp32 export over ``inputs`` (preprocessed photos)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(inputs[i : i + 1]
                                                      for i in range(len(inputs)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        ranges_file = Path(tmp) / "ranges.json"
        _quantize(fp32_path, Path(tmp) / "model.onnx", options, ranges_file, Photos())
        return json.loads(ranges_file.read_text())


def quantize_export(fp32_path: Path, out: Path, calibration: Int8Calibration,
                    metadata: dict[str, str]) -> Path:
    """Quantise the fp32 export with the calibration's ranges (no photos needed) into
    ``out``, atomically, with ``metadata`` as the graph's properties."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        ranges_file = Path(tmp) / "ranges.json"
        ranges_file.write_text(json.dumps(calibration.ranges))
        with atomic_write(out, suffix=".onnx") as target:
            _quantize(fp32_path, target, calibration.options, ranges_file)
            graph = onnx.load(str(target))
            del graph.metadata_props[:]
            onnx.helper.set_model_props(graph, metadata)
            onnx.save(graph, str(target))
    return out

