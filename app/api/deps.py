"""Dependencies shared by the routes, as ``Annotated`` aliases.

They are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in
its thread pool, and six thread hops per request cost more than the work they do. Each reads
what it needs from the request itself rather than from other dependencies: FastAPI solves
every node of the tree anew on each request (~15 us each), and a tree of 14 nodes under
``/search`` was a tenth of the event loop's time per request."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, Request, Security, status
from fastapi.security import APIKeyHeader

from app.api.errors import ServiceError
from app.api.uploads import check_upload, file_from_form
from app.core.config import Settings
from app.services.embedding import EmbeddingService
from app.services.gallery import Gallery
from app.services.state import ServiceState

# One header, two scheme names, so that app/api/openapi.py can keep in this instance's
# document only the requirements its configuration enforces.
WRITE_SCHEME, READ_SCHEME = "WriteKey", "ReadKey"
WriteKeyHeader = Annotated[str | None, Security(APIKeyHeader(
    name="X-API-Key", scheme_name=WRITE_SCHEME, auto_error=False))]
ReadKeyHeader = Annotated[str | None, Security(APIKeyHeader(
    name="X-API-Key", scheme_name=READ_SCHEME, auto_error=False))]


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def ready_gallery(state: ServiceState) -> Gallery:
    if not state.ready or state.gallery is None:
        raise ServiceError(status.HTTP_503_SERVICE_UNAVAILABLE,
                           f"the service is not ready yet ({state.detail})", "not_ready",
                           headers={"Retry-After": "5"})
    return state.gallery


def ready_embedding(state: ServiceState) -> EmbeddingService:
    ready_gallery(state)
    assert state.embedding is not None
    return state.embedding


async def get_state(request: Request) -> ServiceState:
    return service_state(request)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(request: Request) -> Settings:
    return service_state(request).settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_gallery(request: Request) -> Gallery:
    return ready_gallery(service_state(request))


GalleryDep = Annotated[Gallery, Depends(get_gallery)]


async def get_embedding(request: Request) -> EmbeddingService:
    return ready_embedding(service_state(request))


EmbeddingDep = Annotated[EmbeddingService, Depends(get_embedding)]


@dataclass(frozen=True)
class EmbeddedPhoto:
    """An uploaded query photo, read, decoded and embedded."""

    vector: np.ndarray
    started: float  # time.perf_counter() when the upload had arrived

    @property
    def took_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


# The photo of /search and /classify: a multipart field ``file`` (browsers, most clients) or
# the request body itself with an image content type (``curl --data-binary``).
PHOTO_FIELD = "file"
RAW_PHOTO_TYPES = ("image/", "application/octet-stream")
PHOTO_BODY: dict[str, object] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": [PHOTO_FIELD],
        "properties": {PHOTO_FIELD: {"type": "string", "format": "binary",
                                     "description": "a photo (JPEG, PNG, WebP, ...)"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary",
                           "description": "the photo itself as the request body"}},
}}}


async def read_photo(request: Request, settings: Settings) -> bytes:
    """The uploaded photo's bytes, from either form of :data:`PHOTO_BODY`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        name, data = file_from_form(await request.body(), request.headers["content-type"],
                                    PHOTO_FIELD, max_fields=8)
        return check_upload(data, name, settings)
    if content_type.startswith(RAW_PHOTO_TYPES):
        return check_upload(await request.body(), "the request body", settings)
    raise ServiceError(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                       f"send the photo as multipart/form-data (field {PHOTO_FIELD!r}) or as "
                       f"the request body with an image/* content type, not "
                       f"{content_type or 'no content type'!r}", "unsupported_media_type")


async def embed_uploaded_photo(request: Request) -> EmbeddedPhoto:
    state = service_state(request)
    embedding = ready_embedding(state)
    data = await read_photo(request, state.settings)
    started = time.perf_counter()
    return EmbeddedPhoto(await embedding.embed_upload(data), started)


PhotoDep = Annotated[EmbeddedPhoto, Depends(embed_uploaded_photo)]


def _check_key(settings: Settings, given: str | None) -> None:
    if settings.api_key is None:
        return
    if given is None or not secrets.compare_digest(given.encode(), settings.api_key.encode()):
        raise ServiceError(status.HTTP_401_UNAUTHORIZED,
                           "a valid X-API-Key header is required for this request",
                           "unauthorized", headers={"WWW-Authenticate": "X-API-Key"})


async def require_key(request: Request, key: WriteKeyHeader) -> None:
    """Enrolment and deletion: the API key, when one is set."""
    _check_key(service_state(request).settings, key)


async def require_key_for_reads(request: Request, key: ReadKeyHeader) -> None:
    """Search and browsing: open unless SEARCH_REQUIRES_KEY is set."""
    settings = service_state(request).settings
    if settings.search_requires_key:
        _check_key(settings, key)


WriteAccess = Depends(require_key)
ReadAccess = Depends(require_key_for_reads)
