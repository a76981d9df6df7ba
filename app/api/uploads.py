"""Reading uploads and labels: sizes, emptiness and names checked before any work."""

from __future__ import annotations

import unicodedata

from fastapi import status
from starlette.datastructures import UploadFile

from app.api.errors import ServiceError
from app.core.config import Settings
from app.services.embedding import EmbeddingService
from app.services.gallery import NewImage

EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp",
              "GIF": ".gif", "TIFF": ".tiff"}
MAX_LABEL_LENGTH = 100
RESERVED_LABELS = {"unknown"}


async def read_upload(file: UploadFile, settings: Settings) -> bytes:
    data = await file.read(settings.max_upload_bytes + 1)
    return check_upload(data, file.filename or "upload", settings)


def check_upload(data: bytes, name: str, settings: Settings) -> bytes:
    """``data`` if it is neither over the upload limit nor empty."""
    if len(data) > settings.max_upload_bytes:
        raise ServiceError(status.HTTP_413_CONTENT_TOO_LARGE,
                           f"{name}: file is larger than the {settings.max_upload_mb:g} MB limit",
                           "upload_too_large")
    if not data:
        raise ServiceError(status.HTTP_400_BAD_REQUEST, f"{name}: the file is empty",
                           "empty_file")
    return data


async def decode_upload(data: bytes, embedding: EmbeddingService) -> NewImage:
    """Decode off the event loop; ImageDecodeError propagates to its handler (4xx)."""
    image, model_input = await embedding.decode_async(data)
    extension = EXTENSIONS.get(image.format or "", ".img")
    return NewImage(data, model_input, image.width, image.height, extension)


def invalid_label(message: str) -> ServiceError:
    return ServiceError(status.HTTP_422_UNPROCESSABLE_CONTENT, message, "invalid_label")


def clean_label(raw: str) -> str:
    label = unicodedata.normalize("NFC", raw).strip()
    if not label:
        raise invalid_label("label must not be empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise invalid_label(f"label is longer than {MAX_LABEL_LENGTH} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in label):
        raise invalid_label("label must not contain control or invisible characters")
    if not any(ch.isalnum() for ch in label):
        raise invalid_label("label must contain at least one letter or digit")
    if label.lower() in RESERVED_LABELS:
        raise invalid_label(f"{label!r} is reserved: /classify answers it for unknown photos")
    return label
