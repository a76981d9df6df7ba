from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query

from app.api.deps import GalleryDep, PhotoDep, ReadAccess, SettingsDep
from app.api.errors import error_responses
from app.schemas import Classification, LabelScore, SearchHit, SearchResults
from app.services.gallery import Gallery

T = TypeVar("T")

router = APIRouter(tags=["search"], dependencies=[ReadAccess])


UPLOAD_ERRORS = error_responses(400, 408, 413, 415, 422, 503)


async def ask(gallery: Gallery, question: Callable[[], T]) -> T:
    """In-memory stores answer on the event loop (microseconds, no thread hop); a database
    round trip goes to a worker thread."""
    if gallery.store.reads_in_memory:
        return question()
    return await asyncio.to_thread(question)


@router.post("/search", response_model=SearchResults, responses=UPLOAD_ERRORS,
             summary="The k gallery photos most similar to an uploaded photo")
async def search(
    photo: PhotoDep,
    gallery: GalleryDep,
    k: Annotated[int, Query(ge=1, le=100, description="how many results")] = 5,
) -> SearchResults:
    hits = await ask(gallery, lambda: gallery.search(photo.vector, k))
    return SearchResults(
        results=[SearchHit(id=h.item.id, label=h.item.label, score=h.score) for h in hits],
        k=k,
        took_ms=photo.took_ms,
    )


@router.post("/classify", response_model=Classification, responses=UPLOAD_ERRORS,
             summary="The label of an uploaded photo, or 'unknown'")
async def classify(photo: PhotoDep, gallery: GalleryDep,
                   settings: SettingsDep) -> Classification:
    """Compares the photo with each label's prototype (the normalised mean of its
    embeddings). Below ``CLASSIFY_THRESHOLD`` the answer is ``unknown``."""
    ranked = await ask(gallery, lambda: gallery.classify(photo.vector))
    best_label, best_score = ranked[0] if ranked else ("unknown", -1.0)
    threshold = settings.classify_threshold
    matches = await ask(gallery, lambda: gallery.best_of_label(photo.vector, best_label, 3)
                        ) if ranked else []
    return Classification(
        label=best_label if best_score >= threshold else "unknown",
        score=best_score,
        threshold=threshold,
        margin=best_score - ranked[1][1] if len(ranked) > 1 else best_score,
        closest_label=best_label if ranked else None,
        matches=[SearchHit(id=h.item.id, label=h.item.label, score=h.score) for h in matches],
        candidates=[LabelScore(label=label, score=score) for label, score in ranked],
        took_ms=photo.took_ms,
    )
