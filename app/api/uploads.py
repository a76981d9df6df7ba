"""Reading uploads and labels: sizes, emptiness and names checked before any work."""

from __future__ import annotations

import unicodedata

from fastapi import status
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
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


def file_from_form(body: bytes, content_type: str, field: str,
                   max_fields: int) -> tuple[str, bytes]:
    """The file name and bytes of the one file part named ``field`` of a
    ``multipart/form-data`` body held in memory (the body limit caps it), parsed in one pass
    by python-multipart: several times cheaper than Starlette's form (an UploadFile spooled
    a chunk at a time) on the path of every /search. Its refusals are Starlette's: more than
    one file, more than ``max_fields`` other fields, a malformed body (400); no such file
    part (422)."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise ServiceError(status.HTTP_400_BAD_REQUEST, "Missing boundary in multipart.",
                           "bad_request")
    found: list[tuple[str, bytes]] = []
    files = fields = 0
    header_name, header_value, chunks = bytearray(), bytearray(), list[bytes]()
    disposition: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        nonlocal disposition
        if header_name.lower() == b"content-disposition":
            disposition = parse_options_header(bytes(header_value))[1]
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal files, fields
        if b"filename" in disposition:
            files += 1
            if files > 1:
                raise _FormRefused("Too many files. Maximum number of files is 1.")
        else:
            fields += 1
            if fields > max_fields:
                raise _FormRefused(f"Too many fields. Maximum number of fields is "
                                   f"{max_fields}.")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        nonlocal disposition
        if b"filename" in disposition and disposition.get(b"name") == field.encode():
            name = disposition[b"filename"].decode("utf-8", "replace") or "upload"
            found.append((name, b"".join(chunks)))
        chunks.clear()
        disposition = {}

    parser = MultipartParser(boundary, {
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except _FormRefused as refused:
        raise ServiceError(status.HTTP_400_BAD_REQUEST, str(refused), "bad_request") from None
    except MultipartParseError:
        raise ServiceError(status.HTTP_400_BAD_REQUEST, "Invalid multipart data.",
                           "bad_request") from None
    if not found:
        raise ServiceError(status.HTTP_422_UNPROCESSABLE_CONTENT,
                           f"{field}: the multipart form has no file field {field!r}",
                           "invalid_request")
    return found[0]


class _FormRefused(Exception):
    """A multipart body over the form's limits, raised from the parser's callbacks."""


async def decode_upload(data: bytes, embedding: EmbeddingService) -> NewImage:
    """Decode off the event loop; ImageDecodeError propagates to its handler (4xx)."""
    image, model_input = await embedding.decode_async(data)
    extension = EXTENSIONS.get(image.format, ".img")
    return NewImage(data, model_input, *image.size, extension)


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
