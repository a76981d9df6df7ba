"""Synthetic images and tiny models for fast tests (no network, no real photos)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from models.checkpoint import CheckpointMeta, save_checkpoint
from models.encoder import EncoderConfig, build_encoder
from models.preprocessing import Preprocessing

TINY_BACKBONE = "timm:test_efficientnet"  # ~100k parameters, random init, builds offline
TINY_SIZE = 64
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
    "purple": (150, 50, 180),
    "cyan": (40, 200, 210),
}


def synthetic_image(colour: tuple[int, int, int], seed: int, size: int = 80) -> Image.Image:
    """A noisy image dominated by one colour, with a random bright square: an easy class."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float32)[None, None, :]
    pixels = base + rng.normal(0, 25, (size, size, 3))
    x, y = rng.integers(0, size // 2, 2)
    pixels[y : y + size // 4, x : x + size // 4] += 60
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_image_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int,
                      seed: int = 0) -> Path:
    for c, (name, colour) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            synthetic_image(colour, seed * 10_000 + c * 1000 + i).save(folder / f"{i:03d}.jpg")
    return root


def make_tiny_checkpoint(path: Path, embedding_dim: int = 16, seed: int = 0,
                         class_names: list[str] | None = None) -> Path:
    import torch

    torch.manual_seed(seed)
    encoder = build_encoder(EncoderConfig(TINY_BACKBONE, embedding_dim), pretrained=False)
    meta = CheckpointMeta(encoder=EncoderConfig(TINY_BACKBONE, embedding_dim),
                          preprocessing=Preprocessing(image_size=TINY_SIZE),
                          class_names=class_names or [])
    save_checkpoint(path, encoder.eval(), meta)
    return path
