"""Image decoding and tensor preprocessing: the one copy used by training, evaluation and serving.

Every image, whatever its source, goes through :func:`decode_image` (safe decoding, EXIF
orientation, RGB conversion; :func:`load_image` is the same as a ``PIL.Image``) and then
through the transforms built from a checkpoint's :class:`Preprocessing` settings, so the
service sees exactly what the encoder was trained on.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from models.resample import normalised_planes, resize_crop

if TYPE_CHECKING:  # torch stays out of the serving path: ONNX Runtime needs only numpy
    import torch
    from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Formats we accept on upload; anything else Pillow happens to parse (e.g. EPS, PDF) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 7,000 x 5,700 photo; larger is treated as a bomb
GALLERY_VIEWS = (1, 2)  # see Preprocessing.gallery_views

# A truncated file must be an error, not a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """The input is not a usable image; the message says why, in words for the user."""


class UnsupportedFormatError(ImageDecodeError):
    """A readable file in a format we don't accept (e.g. EPS, PDF, ICO)."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than allowed: a decompression bomb or an absurd photo."""


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the encoder's input tensor; stored in every checkpoint."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Resize the shorter side to image_size / crop_fraction, then centre-crop image_size.
    crop_fraction: float = 0.875
    extra: dict = field(default_factory=dict)
    # A gallery photo's embedding is the normalised mean of this many views of its input
    # (1: the input; 2: also its mirror image); a query is one view. Gallery-side
    # test-time augmentation: queries cost the same, enrolment costs this many model inputs.
    gallery_views: int = 1

    def __post_init__(self) -> None:
        if self.gallery_views not in GALLERY_VIEWS:
            raise ValueError(f"gallery_views must be one of {GALLERY_VIEWS}, "
                             f"not {self.gallery_views!r}")

    @property
    def resize_size(self) -> int:
        return round(self.image_size / self.crop_fraction)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            crop_fraction=float(data.get("crop_fraction", 0.875)),
            extra=dict(data.get("extra", {})),
            gallery_views=int(data.get("gallery_views", 1)),
        )


@dataclass(frozen=True)
class DecodedImage:
    """A photo decoded for the encoder: upright 8-bit RGB pixels and what the file was."""

    pixels: np.ndarray  # (height, width, 3) uint8, at the draft scale when one was asked for
    format: str  # the file's format ("JPEG", "PNG", ...): files are stored under it
    size: tuple[int, int]  # the file's upright (width, height), before any draft scaling


def decode_image(
    source: bytes | str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> DecodedImage:
    """Decode an image to upright 8-bit RGB pixels, or raise :class:`ImageDecodeError`.

    ``draft_size`` lets JPEG decoding work at a reduced scale (DCT scaling) as long as both
    sides stay at least that large, which makes big phone photos several times cheaper.

    Pillow reads every header and decides what is refused. A colour JPEG then decodes
    straight to an array with ``simplejpeg`` (libjpeg-turbo, the same pixels as Pillow at
    the same draft scale, tested); anything else, and any JPEG that ``simplejpeg`` finds
    less than perfect, is decoded by Pillow, so both paths accept and refuse the same files.
    """
    data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    if not data:
        raise ImageDecodeError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise UnsupportedFormatError(
                    f"unsupported image format {image.format!r}; "
                    f"use one of {', '.join(sorted(ALLOWED_FORMATS))}"
                )
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is too large: {width}x{height} pixels "
                    f"(limit {max_pixels:,} pixels)"
                )
            source_format = image.format
            if draft_size and image.format in {"JPEG", "MPO"}:
                image.draft("RGB", (draft_size, draft_size))  # Pillow's scale, for both paths
            if image.format == "JPEG" and image.mode == "RGB":
                pixels = _decode_jpeg(data, image.size)
                if pixels is not None:
                    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                    upright = (height, width) if orientation in _SIDEWAYS else (width, height)
                    return DecodedImage(_oriented(pixels, orientation), source_format, upright)
            image.load()
            drafted = image.size
            ImageOps.exif_transpose(image, in_place=True)  # upright, without a copy
            upright = (width, height) if image.size == drafted else (height, width)
            return DecodedImage(np.asarray(to_rgb(image)), source_format, upright)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image, or an image format that cannot be read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError("image is too large (decompression bomb protection)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data surfaces from the decoders as one of these.
        raise ImageDecodeError(f"the image data is corrupt or truncated ({exc})") from None


def load_image(
    source: bytes | str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """:func:`decode_image` as a ``PIL.Image`` whose ``format`` is the file's, for the
    Pillow and torchvision transforms of training and for drawing."""
    decoded = decode_image(source, max_pixels=max_pixels, draft_size=draft_size)
    image = Image.fromarray(decoded.pixels)
    image.format = decoded.format
    return image


def _decode_jpeg(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """A colour JPEG's pixels as Pillow decodes them at its draft ``size`` (libjpeg's
    largest reduction keeping both sides that large), or None where Pillow must."""
    try:
        return simplejpeg.decode_jpeg(data, "RGB", min_width=size[0], min_height=size[1],
                                      strict=True)
    except ValueError:  # truncated, corrupt, or merely odd: Pillow decides
        return None


_SIDEWAYS = frozenset({5, 6, 7, 8})


def _oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels turned upright for an EXIF orientation, as ``ImageOps.exif_transpose`` does."""
    if orientation in (2, 3):
        pixels = pixels[:, ::-1]
    if orientation in (3, 4):
        pixels = pixels[::-1]
    if orientation in _SIDEWAYS:
        pixels = pixels.transpose(1, 0, 2)
        if orientation in (6, 7):
            pixels = pixels[:, ::-1]
        if orientation in (7, 8):
            pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, RGBA, CMYK, 16-bit, float, greyscale) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        # Scale the real value range into 0..255 instead of clipping 16-bit data to white.
        image = image.convert("F")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda v: (v - low) * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in {"RGBA", "LA", "PA", "La"}:
        # Composite onto white: transparent product cut-outs usually mean a white page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image | np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Deterministic input of evaluation and serving: (3, size, size) float32, normalised.

    ``image`` is RGB: a ``PIL.Image`` or (height, width, 3) uint8 pixels
    (:attr:`DecodedImage.pixels`). Shorter side resized to ``pre.resize_size`` (Pillow's
    antialiased bicubic), centre crop, scale to 0..1, ImageNet mean/std: torchvision's
    Resize + CenterCrop + ToTensor + Normalize (the same numbers, tested), written with
    Pillow and numpy so that serving on CPU needs no torch. The resize runs in
    :mod:`models.resample`, which computes Pillow's numbers for the crop only (Pillow
    itself where it cannot, or until its compiled loops are loaded).
    """
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = pre.resize_size, int(pre.resize_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    crop = pre.image_size
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    box = (left, top, left + crop, top + crop)
    cropped = None
    if size != (width, height):
        cropped = resize_crop(pixels, size, box)
    elif 0 <= left <= width - crop and 0 <= top <= height - crop:
        cropped = pixels[top : top + crop, left : left + crop]
    if cropped is None:  # Pillow resizes, and pads a crop reaching outside
        resized = Image.fromarray(pixels)
        if size != (width, height):
            resized = resized.resize(size, Image.Resampling.BICUBIC)
        cropped = np.asarray(resized.crop(box))
    return normalised_planes(cropped, pre.mean, pre.std)


def gallery_views(batch: np.ndarray | torch.Tensor, views: int) -> np.ndarray | torch.Tensor:
    """(N, 3, H, W) model inputs -> (views * N, 3, H, W): the inputs, then (with 2 views)
    their mirror images. A tensor stays a tensor on its device (e.g. decoded on a GPU)."""
    if views == 1:
        return batch
    if isinstance(batch, np.ndarray):
        return np.concatenate([batch, batch[..., ::-1]])
    import torch

    return torch.cat([batch, batch.flip(-1)])


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """:func:`preprocess` as a tensor transform, for PyTorch data loaders (picklable)."""
    return functools.partial(_preprocess_tensor, pre=pre)


def _preprocess_tensor(image: Image.Image, pre: Preprocessing) -> torch.Tensor:
    import torch

    return torch.from_numpy(preprocess(image, pre))


def train_transform(pre: Preprocessing, strength: float = 1.0) -> transforms.Compose:
    """Random crops, flips and colour jitter for triplet training; ``strength`` 0 disables them."""
    from torchvision import transforms

    jitter = 0.3 * strength
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                pre.image_size,
                scale=(max(0.08, 1.0 - 0.7 * strength), 1.0),
                interpolation=transforms.InterpolationMode.BICUBIC,
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(jitter, jitter, jitter, 0.05 * strength),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS and not Path(path).name.startswith(".")


def class_folder_images(root: str | Path) -> dict[str, list[Path]]:
    """Image files of a ``<root>/<class>/...`` tree by class name (sorted; empty classes
    left out): the dataset layout of training and of the service's gallery folder."""
    by_class = {}
    for class_dir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        if files:
            by_class[class_dir.name] = files
    return by_class
