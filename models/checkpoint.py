"""Checkpoint I/O: one file, state dict plus the metadata needed to rebuild the encoder.

Files are written atomically (:mod:`models.atomic`) and read with
``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from models.atomic import atomic_write_with
from models.backbones import DEFAULT_BACKBONE
from models.base import IMAGENET, file_fingerprint
from models.encoder import Encoder, EncoderConfig, build_encoder
from models.preprocessing import Preprocessing

FORMAT = "fewshot-siamese-encoder"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or incompatible; the message says which and why."""


@dataclass
class CheckpointMeta:
    encoder: EncoderConfig
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=list)
    train_args: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "encoder": self.encoder.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "class_names": list(self.class_names),
            "train_args": self.train_args,
            "metrics": self.metrics,
            "versions": self.versions or current_versions(),
            "created_at": self.created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        return cls(
            encoder=EncoderConfig.from_dict(data["encoder"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            class_names=list(data.get("class_names", [])),
            train_args=dict(data.get("train_args", {})),
            metrics=dict(data.get("metrics", {})),
            versions=dict(data.get("versions", {})),
            created_at=str(data.get("created_at", "")),
            extra=dict(data.get("extra", {})),
        )


@dataclass
class LoadedEncoder:
    encoder: Encoder
    meta: CheckpointMeta
    fingerprint: str  # identifies the weights: embeddings from different fingerprints never mix
    path: str


def at_image_size(loaded: LoadedEncoder, image_size: int) -> LoadedEncoder:
    """The same weights seen at another test-time input size (same crop fraction).

    Training on random-resized crops makes objects look larger than a centre crop does, so
    such encoders often do better tested at a somewhat larger size (Touvron et al. 2019,
    "FixRes"). The fingerprint changes with the size: embeddings and ONNX exports made at
    different sizes never mix.
    """
    if image_size < 32:
        raise CheckpointError(f"image size {image_size} is too small (at least 32)")
    if image_size == loaded.meta.preprocessing.image_size:
        return loaded
    return _with_preprocessing(loaded, f"@{image_size}px", image_size=image_size)


def with_gallery_views(loaded: LoadedEncoder, views: int) -> LoadedEncoder:
    """The same weights with gallery photos embedded as the mean of ``views`` views
    (``Preprocessing.gallery_views``). The fingerprint changes with them: gallery embeddings
    and ONNX exports (which carry the preprocessing) of different views never mix."""
    if views == loaded.meta.preprocessing.gallery_views:
        return loaded
    return _with_preprocessing(loaded, f"+{views}views", gallery_views=views)


def _with_preprocessing(loaded: LoadedEncoder, fingerprint_suffix: str,
                        **changes: Any) -> LoadedEncoder:
    meta = replace(loaded.meta, preprocessing=replace(loaded.meta.preprocessing, **changes))
    return replace(loaded, meta=meta, fingerprint=loaded.fingerprint + fingerprint_suffix)


def current_versions() -> dict[str, str]:
    import timm

    return {
        "torch": str(torch.__version__),
        "timm": str(timm.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(
    path: str | os.PathLike, encoder: Encoder, meta: CheckpointMeta, half: bool = False
) -> None:
    """Write the encoder and its metadata atomically; ``half`` stores floats as fp16."""
    state = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.cpu())
        for k, v in encoder.state_dict().items()
    }
    atomic_torch_save({"meta": meta.to_dict(), "state_dict": state}, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_with(path, lambda handle: torch.save(obj, handle))


def set_checkpoint_extra(path: str | os.PathLike, key: str, value: Any,
                         **preprocessing: Any) -> None:
    """Add or replace ``meta.extra[key]`` in a checkpoint file, and any ``preprocessing``
    fields given (e.g. ``gallery_views``), in one atomic write that leaves its weights exactly
    as stored (the file's fingerprint changes, so its gallery is embedded again)."""
    meta, state = read_checkpoint(path)
    checked = Preprocessing.from_dict({**meta["preprocessing"], **preprocessing})
    meta = {**meta, "extra": {**meta.get("extra", {}), key: value},
            "preprocessing": checked.to_dict()}
    atomic_torch_save({"meta": meta, "state_dict": state}, path)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate the raw file; every failure is one :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; all mean the same here
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint of this project "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict):
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this project")
    meta = payload["meta"]
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this project")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta['format_version']}; this version "
            f"of the software reads up to {FORMAT_VERSION}: upgrade it"
        )
    return meta, payload["state_dict"]


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", image_size: int | None = None
) -> LoadedEncoder:
    """Rebuild the encoder from the file's metadata alone and load its weights (eval mode).

    ``path`` may be :data:`IMAGENET` for the untrained backbone's ImageNet features;
    ``image_size`` views the weights at another test-time size (:func:`at_image_size`).
    """
    loaded = imagenet_encoder(device=device) if str(path) == IMAGENET else _rebuild(path, device)
    return at_image_size(loaded, image_size) if image_size else loaded


def _rebuild(path: str | os.PathLike, device: str | torch.device) -> LoadedEncoder:
    raw_meta, state = read_checkpoint(path)
    try:
        meta = CheckpointMeta.from_dict(raw_meta)
        encoder = build_encoder(meta.encoder, pretrained=False)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        encoder.load_state_dict(state)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit its own description ({exc})"
        ) from None
    encoder.to(device).eval()
    return LoadedEncoder(encoder, meta, file_fingerprint(path), str(path))


def imagenet_encoder(
    backbone: str | None = None, device: str | torch.device = "cpu"
) -> LoadedEncoder:
    """The baseline: pretrained backbone, no projection, default preprocessing."""
    config = EncoderConfig(backbone or DEFAULT_BACKBONE, embedding_dim=None)
    encoder = build_encoder(config, pretrained=True).to(device).eval()
    meta = CheckpointMeta(encoder=config, preprocessing=Preprocessing())
    return LoadedEncoder(encoder, meta, f"{IMAGENET}:{config.backbone}", IMAGENET)
