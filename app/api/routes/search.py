from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query

from app.api.deps import PHOTO_BODY, GalleryDep, PhotoDep, ReadAccess, SettingsDep
from app.api.errors import error_responses
from app.schemas import Classification, LabelScore, SearchHit, SearchResults
from app.services.gallery import Gallery
from models.decision import rule_name, unknown_threshold

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
             openapi_extra=PHOTO_BODY,
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
             openapi_extra=PHOTO_BODY, summary="The label of an uploaded photo, or 'unknown'")
async def classify(photo: PhotoDep, gallery: GalleryDep,
                   settings: SettingsDep) -> Classification:
    """Compares the photo with each label's prototype (the normalised mean of its
    embeddings), each score standardised by the label's number of photos where the
    checkpoint is calibrated. Below the threshold the answer is ``unknown``."""
    ranked = await ask(gallery, lambda: gallery.classify(photo.vector))
    calibration = gallery.calibration
    threshold = settings.classify_threshold
    if threshold is None:
        threshold = unknown_threshold(calibration)
    if not ranked.labels:
        return Classification(label="unknown", score=-1.0, confidence=None,
                              rule=rule_name(calibration), threshold=threshold, margin=0.0,
                              closest_label=None, matches=[], candidates=[],
                              took_ms=photo.took_ms)
    best_label, best_score = ranked.labels[0], float(ranked.scores[0])
    margin = ranked.margin
    matches = await ask(gallery, lambda: gallery.best_of_label(photo.vector, best_label, 3))
    return Classification(
        label=best_label if best_score >= threshold else "unknown",
        score=best_score,
        confidence=float(calibration.confidence(best_score, margin)) if calibration else None,
        rule=rule_name(calibration),
        threshold=threshold,
        margin=margin,
        closest_label=best_label,
        matches=[SearchHit(id=h.item.id, label=h.item.label, score=h.score) for h in matches],
        candidates=[LabelScore(label=label, score=float(score), cosine=float(cosine),
                               photos=int(count)) for label, score, cosine, count in
                    zip(ranked.labels, ranked.scores, ranked.cosines, ranked.counts,
                        strict=True)],
        took_ms=photo.took_ms,
    )
