"""Request and response bodies, named for what they carry."""

from __future__ import annotations

from pydantic import BaseModel, Field, computed_field


class WithImage(BaseModel):
    """A gallery item's id, and where its stored photo is served."""

    id: int

    @computed_field(description="GET this path for the stored photo")
    @property
    def image_url(self) -> str:
        return f"/items/{self.id}/image"


class GalleryItem(WithImage):
    label: str
    source: str = Field(description="'gallery' (from the gallery folder) or 'enrolled'")
    width: int
    height: int
    created_at: float = Field(description="Unix time")


class SearchHit(WithImage):
    label: str
    score: float = Field(description="cosine similarity, -1..1, higher is more similar")


class SearchResults(BaseModel):
    results: list[SearchHit]
    k: int
    took_ms: float

    model_config = {"json_schema_extra": {"examples": [{
        "results": [{"id": 812, "label": "Banana", "score": 0.93,
                     "image_url": "/items/812/image"}], "k": 5, "took_ms": 12.4}]}}


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="the decision rule's score (see Classification.score)")
    cosine: float = Field(description="cosine to the label's prototype")
    photos: int = Field(description="how many photos the label has")


class Classification(BaseModel):
    label: str = Field(description="the best label, or 'unknown' below the threshold")
    score: float = Field(description="the best label's score: with a calibrated checkpoint, "
                         "its cosine standardised by how the nearest other-kind photos score "
                         "against a label of that many photos (0 = a typical near "
                         "look-alike), plus the few-shot bonus of a label of under five "
                         "photos; otherwise the cosine")
    confidence: float | None = Field(
        description="calibrated probability that closest_label is right, from the score and "
        "the margin; the answer itself is 'unknown' whenever the score is below the threshold, "
        "whatever the confidence (None: the checkpoint carries no calibration)")
    rule: str = Field(description="'shot-calibrated' or 'cosine'")
    threshold: float
    margin: float = Field(description="the best label's score minus the runner-up's (with "
                                      "one label, its score)")
    closest_label: str | None = Field(
        description="the best label, also when the answer is 'unknown' (None: empty gallery)")
    matches: list[SearchHit] = Field(
        description="the closest label's photos most similar to the upload, best first")
    candidates: list[LabelScore]
    took_ms: float

    model_config = {"json_schema_extra": {"examples": [{
        "label": "Banana", "score": 2.4, "confidence": 0.88, "rule": "shot-calibrated",
        "threshold": 1.84, "margin": 1.3, "closest_label": "Banana",
        "matches": [{"id": 812, "label": "Banana", "score": 0.91,
                     "image_url": "/items/812/image"}],
        "candidates": [{"label": "Banana", "score": 2.4, "cosine": 0.94, "photos": 33},
                       {"label": "Lemon", "score": 1.1, "cosine": 0.71, "photos": 1}],
        "took_ms": 12.9}]}}


class EnrolledItem(WithImage):
    label: str
    created: bool = Field(description="false when these bytes were already enrolled")
    warnings: list[str] = Field(
        default_factory=list, description="the photo was enrolled, but: a near-duplicate of "
        "a stored photo, or closer to another label's photos than to its own label's")


class EnrollResult(BaseModel):
    items: list[EnrolledItem]

    model_config = {"json_schema_extra": {"examples": [{
        "items": [{"id": 2009, "label": "Stroopwafel", "created": True,
                   "image_url": "/items/2009/image"}]}]}}


class LabelCount(BaseModel):
    label: str
    count: int


class LabelList(BaseModel):
    labels: list[LabelCount]
    total_items: int


class ItemPage(BaseModel):
    items: list[GalleryItem]
    total: int
    offset: int
    limit: int


class Deleted(BaseModel):
    deleted: list[int]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    detail: str = ""
    checkpoint: str | None = None
    runtime: str | None = None
    device: str | None = None
    model_lanes: int | None = Field(
        None, description="single-threaded model calls side by side under load (0: one "
                          "call on all threads)")
    gallery_items: int | None = None
    startup: dict[str, int] | None = Field(
        None, description="what start-up did: photos scanned, added, removed and embedded; "
                          "items not indexed; items whose photo is missing")


class ConsistencyReport(BaseModel):
    """The service's check of itself: the index and the per-label prototypes it searches
    against the store it keeps. Lists hold item ids."""

    consistent: bool = Field(description="the index and the labels match the store")
    items: int = Field(description="items in the store")
    indexed: int = Field(description="items in the search index")
    not_indexed: list[int] = Field(description="stored with an embedding, not searchable")
    indexed_not_stored: list[int]
    served_not_indexed: list[int] = Field(description="known to the API but not the index, "
                                                      "or the other way round")
    label_mismatches: list[str] = Field(description="labels whose count or prototype differs")
    without_embedding: list[int] = Field(description="no embedding of this checkpoint (their "
                                                     "photo could not be read): not searchable")
    missing_photos: list[int] = Field(description="the stored photo file is gone")
