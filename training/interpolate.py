"""Weight-space interpolation toward the starting point (WiSE-FT, Wortsman et al. 2022).

    python -m training.interpolate --checkpoint runs/encoder.pt --alpha 0.6 --out enc-wise.pt
    python -m training.interpolate --checkpoint runs/a.pt --soup runs/b.pt --alpha 0.7 --out s.pt

Writes theta = theta_0 + alpha * (theta_fine_tuned - theta_0), where theta_0 is the
pretrained backbone with the PCA-initialised head the run started from (stored in the
checkpoint). alpha = 1 is the fine-tuned encoder, alpha = 0 the ImageNet features. In
between, the encoder keeps most of what triplet training gained on the training domain and
much of ImageNet's generality elsewhere, at no inference cost.

``--image-size`` records a test-time input size other than the training size (see
:func:`models.checkpoint.at_image_size`; pick it with ``training.evaluate --image-size``).

``--soup`` first averages several fine-tuned runs from the same starting point (a "model
soup", Wortsman et al. 2022), e.g. runs with different frozen stages; theta_fine_tuned is
then their mean.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.encoder import Encoder, EncoderConfig, build_encoder


def starting_point(fine_tuned: Encoder, initial_head: dict[str, torch.Tensor],
                   backbone: str) -> Encoder:
    start = build_encoder(EncoderConfig(backbone, fine_tuned.embedding_dim), pretrained=True)
    start.head.load_state_dict({k: v.float() for k, v in initial_head.items()})
    return start


def interpolate(fine_tuned: Encoder, start: Encoder, alpha: float) -> Encoder:
    """In place on ``fine_tuned``: ``start + alpha * (fine_tuned - start)``."""
    return combine([fine_tuned, start], lambda tuned, base: base + alpha * (tuned - base))


def average(encoders: list[Encoder]) -> Encoder:
    """In place on the first: the mean of all (a model soup)."""
    return combine(encoders, lambda *tensors: sum(tensors) / len(tensors))


def combine(encoders: list[Encoder], mix: Callable[..., torch.Tensor]) -> Encoder:
    """In place on the first: each floating tensor (weights, BatchNorm statistics) becomes
    ``mix`` of the encoders' tensors; integer buffers (batch counters) stay the first one's."""
    states = [e.state_dict() for e in encoders]
    mixed = {key: mix(*(s[key].to(value) for s in states)) if value.is_floating_point()
             else value for key, value in states[0].items()}
    encoders[0].load_state_dict(mixed)
    return encoders[0]


def same_start(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m training.interpolate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--alpha", type=float, required=True, help="0 = start, 1 = fine-tuned")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--half", action="store_true", help="store weights as fp16")
    p.add_argument("--image-size", type=int,
                   help="test-time input size to record (default: the checkpoint's); see "
                        "models.checkpoint.at_image_size")
    p.add_argument("--soup", nargs="+", default=[], metavar="CHECKPOINT",
                   help="more fine-tuned runs from the same starting point, averaged first")
    args = p.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise SystemExit("--alpha must be between 0 and 1")
    loaded = load_checkpoint(args.checkpoint, image_size=args.image_size)
    initial_head = loaded.meta.extra.get("initial_head")
    if initial_head is None or not loaded.meta.extra.get("pretrained_backbone", True):
        raise CheckpointError(f"{args.checkpoint} does not record its starting point "
                              "(initial_head); it can't be interpolated")
    others = [load_checkpoint(path) for path in args.soup]
    for path, other in zip(args.soup, others, strict=True):
        if other.meta.encoder != loaded.meta.encoder or not same_start(
                initial_head, other.meta.extra.get("initial_head") or {}):
            raise CheckpointError(f"{path} did not start from where {args.checkpoint} did; "
                                  "only runs from one starting point can be averaged")
    fine_tuned = average([loaded.encoder, *(o.encoder for o in others)])
    start = starting_point(fine_tuned, initial_head, loaded.meta.encoder.backbone)
    encoder = interpolate(fine_tuned, start, args.alpha)
    meta = loaded.meta
    meta.extra = {**meta.extra, "wise_alpha": args.alpha,
                  "fine_tuned_from": [str(args.checkpoint), *args.soup]}
    meta.versions = {}
    meta.created_at = ""
    save_checkpoint(args.out, encoder, meta, half=args.half)
    print(f"wrote {args.out} (alpha {args.alpha})")
    return args.out


if __name__ == "__main__":
    main()
