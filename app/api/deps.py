"""Dependencies shared by the routes, as ``Annotated`` aliases.

They are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in
its thread pool, and six thread hops per request cost more than the work they do."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, File, Request, Security, UploadFile, status
from fastapi.security import APIKeyHeader

from app.api.errors import ServiceError
from app.api.uploads import decode_upload, read_upload
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


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_gallery(state: StateDep) -> Gallery:
    if not state.ready or state.gallery is None:
        raise ServiceError(status.HTTP_503_SERVICE_UNAVAILABLE,
                           f"the service is not ready yet ({state.detail})", "not_ready",
                           headers={"Retry-After": "5"})
    return state.gallery


GalleryDep = Annotated[Gallery, Depends(get_gallery)]


async def get_embedding(state: StateDep, _: GalleryDep) -> EmbeddingService:
    assert state.embedding is not None
    return state.embedding


EmbeddingDep = Annotated[EmbeddingService, Depends(get_embedding)]


@dataclass(frozen=True)
class EmbeddedPhoto:
    """An uploaded query photo, read, decoded and embedded."""

    vector: np.ndarray
    started: float  # time.perf_counter() when the upload had arrived

    @property
    def took_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


async def embed_uploaded_photo(
    file: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, ...)")],
    embedding: EmbeddingDep,
    settings: SettingsDep,
) -> EmbeddedPhoto:
    started = time.perf_counter()
    image = await decode_upload(await read_upload(file, settings), embedding)
    return EmbeddedPhoto(await embedding.embed(image.model_input), started)


PhotoDep = Annotated[EmbeddedPhoto, Depends(embed_uploaded_photo)]


def _check_key(settings: Settings, given: str | None) -> None:
    if settings.api_key is None:
        return
    if given is None or not secrets.compare_digest(given.encode(), settings.api_key.encode()):
        raise ServiceError(status.HTTP_401_UNAUTHORIZED,
                           "a valid X-API-Key header is required for this request",
                           "unauthorized", headers={"WWW-Authenticate": "X-API-Key"})


async def require_key(settings: SettingsDep, key: WriteKeyHeader) -> None:
    """Enrolment and deletion: the API key, when one is set."""
    _check_key(settings, key)


async def require_key_for_reads(settings: SettingsDep, key: ReadKeyHeader) -> None:
    """Search and browsing: open unless SEARCH_REQUIRES_KEY is set."""
    if settings.search_requires_key:
        _check_key(settings, key)


WriteAccess = Depends(require_key)
ReadAccess = Depends(require_key_for_reads)
