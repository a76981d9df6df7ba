from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Response, UploadFile, status

from app.api.deps import EmbeddingDep, GalleryDep, SettingsDep, WriteAccess
from app.api.errors import ServiceError, error_responses
from app.api.uploads import clean_label, decode_upload, read_upload
from app.schemas import EnrolledItem, EnrollResult

router = APIRouter(tags=["gallery"])


@router.post(
    "/enroll",
    response_model=EnrollResult,
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAccess],
    summary="Add one or more example photos of a new or existing label",
    responses={200: {"model": EnrollResult, "description": "all files were already enrolled"},
               **error_responses(400, 408, 413, 415, 422, 503, 507)},
)
async def enroll(
    file: Annotated[list[UploadFile], File(description="one or several photos", min_length=1)],
    label: Annotated[str, Form(description="the class name", max_length=1000)],
    gallery: GalleryDep,
    embedding: EmbeddingDep,
    settings: SettingsDep,
    response: Response,
) -> EnrollResult:
    """The photos are searchable in the very next request. When this returns, they are
    stored durably. The same bytes under the same label return the existing item."""
    label = clean_label(label)
    if len(file) > settings.max_files_per_enroll:
        raise ServiceError(status.HTTP_413_CONTENT_TOO_LARGE,
                           f"at most {settings.max_files_per_enroll} files per request",
                           "too_many_files")
    images = [await decode_upload(await read_upload(f, settings), embedding) for f in file]
    vectors = np.stack(await asyncio.gather(*(embedding.embed_for_gallery(i.model_input)
                                               for i in images)))
    warnings = await asyncio.to_thread(gallery.enrol_warnings, label, vectors)
    results = await asyncio.to_thread(gallery.enroll, label, images, vectors)
    if not any(created for _, created in results):
        response.status_code = status.HTTP_200_OK
    return EnrollResult(items=[
        EnrolledItem(id=item.id, label=item.label, created=created,
                     warnings=found if created else [])
        for (item, created), found in zip(results, warnings, strict=True)
    ])
