"""Export a checkpoint to ONNX for the CPU fast path, and check it against PyTorch.

    python -m training.export --checkpoint models/checkpoints/default.pt --onnx encoder.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from models.base import DEFAULT_CHECKPOINT
from models.checkpoint import load_checkpoint
from models.runtimes.eager import TorchEmbedder
from models.runtimes.onnx import OnnxEmbedder
from models.runtimes.onnx_export import export_onnx


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--onnx", type=Path, required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    export_onnx(loaded, args.onnx, args.opset)
    # Verify: the exported graph must give the same embeddings as PyTorch.
    size = loaded.meta.preprocessing.image_size
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = TorchEmbedder(loaded.encoder, loaded.meta.preprocessing).embed_batch(batch)
    onnx = OnnxEmbedder(args.onnx)
    cosine = float(np.min(np.sum(reference * onnx.embed_batch(batch), axis=1)))
    print(f"wrote {args.onnx}; min cosine(onnx, torch) over 4 inputs = {cosine:.6f}")
    if cosine < 0.999:
        raise SystemExit("the ONNX export does not match PyTorch (cosine < 0.999)")
    return cosine


if __name__ == "__main__":
    main()
