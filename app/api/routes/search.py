from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from app.api.deps import EmbeddingDep, GalleryDep, ReadAccess, SettingsDep
from app.api.uploads import decode_upload, read_upload
from app.schemas import Classification, LabelScore, SearchHit, SearchResults

router = APIRouter(tags=["search"], dependencies=[ReadAccess])


@router.post("/search", response_model=SearchResults,
             summary="The k gallery photos most similar to an uploaded photo")
async def search(
    file: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, ...)")],
    gallery: GalleryDep,
    embedding: EmbeddingDep,
    settings: SettingsDep,
    k: Annotated[int, Query(ge=1, le=100, description="how many results")] = 5,
) -> SearchResults:
    started = time.perf_counter()
    image = await decode_upload(await read_upload(file, settings), embedding)
    vector = await embedding.embed(image.model_input)
    hits = gallery.search(vector, k)
    return SearchResults(
        results=[SearchHit(id=h.item.id, label=h.item.label, score=h.score,
                           image_url=f"/items/{h.item.id}/image") for h in hits],
        k=k,
        took_ms=(time.perf_counter() - started) * 1000,
    )


@router.post("/classify", response_model=Classification,
             summary="The label of an uploaded photo, or 'unknown'")
async def classify(
    file: Annotated[UploadFile, File()],
    gallery: GalleryDep,
    embedding: EmbeddingDep,
    settings: SettingsDep,
) -> Classification:
    """Compares the photo with each label's prototype (the normalised mean of its
    embeddings). Below ``CLASSIFY_THRESHOLD`` the answer is ``unknown``."""
    started = time.perf_counter()
    image = await decode_upload(await read_upload(file, settings), embedding)
    vector = await embedding.embed(image.model_input)
    ranked = gallery.classify(vector)
    best_label, best_score = ranked[0] if ranked else ("unknown", -1.0)
    threshold = settings.classify_threshold
    return Classification(
        label=best_label if best_score >= threshold else "unknown",
        score=best_score,
        threshold=threshold,
        candidates=[LabelScore(label=label, score=score) for label, score in ranked],
        took_ms=(time.perf_counter() - started) * 1000,
    )
