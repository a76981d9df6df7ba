"""Export a checkpoint for the CPU runtimes, and check each against its reference.

    python -m training.export --checkpoint models/checkpoints/default.pt --onnx encoder.onnx
    python -m training.export --checkpoint models/checkpoints/default.pt --int8 \\
        --calibration ../shared/data/grocery/train --gate-queries ../shared/data/grocery/test \\
        --gate-gallery ../shared/data/grocery/train --write-checkpoint

``--onnx`` writes the fp32 graph and checks it against PyTorch. ``--int8`` measures the
activation ranges on real photos (``--per-class`` of each class of ``--calibration``),
quantises, and gates the result: seen recall@1 of ``--gate-queries`` against
``--gate-gallery`` may drop at most ``--max-recall-drop`` below fp32; top-5 overlap and
embedding cosine are reported beside it. A calibration that fails is refused with its
numbers; one that passes is written into the checkpoint's metadata with
``--write-checkpoint``, and the service then quantises its export from it by itself.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.base import DEFAULT_CHECKPOINT
from models.checkpoint import LoadedEncoder, load_checkpoint, set_checkpoint_extra
from models.preprocessing import class_folder_images, load_image, preprocess
from models.runtimes.eager import TorchEmbedder
from models.runtimes.factory import int8_metadata
from models.runtimes.int8 import Int8Calibration, QuantOptions, measure_ranges, quantize_export
from models.runtimes.onnx import OnnxEmbedder
from models.runtimes.onnx_export import export_onnx
from training.data import ImageFolder, scan_image_folder
from training.embedding import embed_folder
from training.metrics import retrieval_metrics


def check_fp32(loaded: LoadedEncoder, onnx_path: Path) -> float:
    """Min cosine between the exported graph and PyTorch over 4 random inputs."""
    size = loaded.meta.preprocessing.image_size
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = TorchEmbedder(loaded.encoder, loaded.meta.preprocessing).embed_batch(batch)
    return float(np.min(np.sum(reference * OnnxEmbedder(onnx_path).embed_batch(batch), axis=1)))


def calibration_photos(root: Path, per_class: int, preprocessing) -> np.ndarray:
    photos = [path for paths in class_folder_images(root).values() for path in paths[:per_class]]
    return np.stack([preprocess(load_image(p.read_bytes()), preprocessing) for p in photos])


def names(folder: ImageFolder) -> np.ndarray:
    return np.array([folder.classes[s.label] for s in folder.samples])


def gate(fp32: OnnxEmbedder, int8: OnnxEmbedder, queries: ImageFolder, gallery: ImageFolder,
         max_drop: float) -> dict:
    """Seen recall@1 of both runtimes (queries against the gallery), the share of each
    query's top 5 that the two share, and the cosine between their embeddings."""
    out: dict = {}
    top5, embedded = {}, {}
    for name, embedder in (("fp32", fp32), ("int8", int8)):
        q = embedded[name] = embed_folder(embedder, queries, desc=f"{name} queries")
        g = embed_folder(embedder, gallery, desc=f"{name} gallery")
        out[f"recall@1_{name}"] = retrieval_metrics(q, names(queries), g, names(gallery))[
            "recall@1"]
        top5[name] = np.argsort(-(q @ g.T), axis=1)[:, :5]
    cosine = np.sum(embedded["fp32"] * embedded["int8"], axis=1)
    out["top5_overlap"] = float(np.mean([len(set(a) & set(b)) / 5 for a, b in
                                         zip(top5["fp32"], top5["int8"], strict=True)]))
    out["cosine_median"], out["cosine_min"] = float(np.median(cosine)), float(cosine.min())
    out["recall_drop"] = out["recall@1_fp32"] - out["recall@1_int8"]
    out["max_recall_drop"] = max_drop
    out["passed"] = out["recall_drop"] <= max_drop
    out["queries"], out["gallery"] = len(queries), len(gallery)
    return out


def export_int8(loaded: LoadedEncoder, args: argparse.Namespace) -> dict:
    options = QuantOptions(method=args.method, per_channel=not args.per_tensor,
                           reduce_range=not args.full_range,
                           keep_fp32=tuple(k for k in args.keep_fp32.split(",") if k))
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        fp32_path = export_onnx(loaded, Path(tmp) / "fp32.onnx")
        fp32 = OnnxEmbedder(fp32_path)
        inputs = calibration_photos(args.calibration, args.per_class, fp32.preprocessing)
        calibration = Int8Calibration(options, measure_ranges(fp32_path, inputs, options))
        int8_path = Path(tmp) / "int8.onnx"
        quantize_export(fp32_path, int8_path, calibration, int8_metadata(fp32))
        result = gate(fp32, OnnxEmbedder(int8_path), scan_image_folder(args.gate_queries),
                      scan_image_folder(args.gate_gallery), args.max_recall_drop)
    result.update(calibration_photos=len(inputs), image_size=fp32.preprocessing.image_size,
                  options=calibration.to_dict()["options"])
    print(json.dumps(result, indent=1))
    if not result["passed"]:
        raise SystemExit(
            f"INT8 refused: seen recall@1 {result['recall@1_int8']:.4f} against fp32 "
            f"{result['recall@1_fp32']:.4f} (drop {result['recall_drop']:.4f} > "
            f"{args.max_recall_drop}); top-5 overlap {result['top5_overlap']:.3f}, cosine "
            f"median {result['cosine_median']:.4f} / min {result['cosine_min']:.4f}")
    if args.write_checkpoint:
        calibration.gate = {k: v for k, v in result.items() if k != "options"}
        set_checkpoint_extra(args.checkpoint, "int8", calibration.to_dict())
        print(f"wrote the INT8 calibration into {args.checkpoint}")
    return result


def main(argv: list[str] | None = None) -> float | dict:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--onnx", type=Path, help="write the fp32 graph here")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--int8", action="store_true", help="calibrate, quantise and gate INT8")
    p.add_argument("--calibration", type=Path, help="<class>/* photos to measure ranges on")
    p.add_argument("--per-class", type=int, default=2, help="calibration photos per class")
    p.add_argument("--gate-queries", type=Path, help="<class>/* photos searched by the gate")
    p.add_argument("--gate-gallery", type=Path, help="<class>/* photos they are searched in")
    p.add_argument("--max-recall-drop", type=float, default=0.005)
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor")
    p.add_argument("--full-range", action="store_true",
                   help="8-bit weights (saturates on CPUs without VNNI)")
    p.add_argument("--keep-fp32", default="first_conv,head",
                   help="comma-separated, of first_conv, head, depthwise")
    p.add_argument("--write-checkpoint", action="store_true",
                   help="store a calibration that passed in the checkpoint's metadata")
    args = p.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    if args.int8:
        if not (args.calibration and args.gate_queries and args.gate_gallery):
            p.error("--int8 needs --calibration, --gate-queries and --gate-gallery")
        return export_int8(loaded, args)
    if args.onnx is None:
        p.error("give --onnx OUT.onnx, or --int8")
    export_onnx(loaded, args.onnx, args.opset)
    cosine = check_fp32(loaded, args.onnx)
    print(f"wrote {args.onnx}; min cosine(onnx, torch) over 4 inputs = {cosine:.6f}")
    if cosine < 0.999:
        raise SystemExit("the ONNX export does not match PyTorch (cosine < 0.999)")
    return cosine


if __name__ == "__main__":
    main()
