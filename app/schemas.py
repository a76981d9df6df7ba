"""Request and response bodies, named for what they carry."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GalleryItem(BaseModel):
    id: int
    label: str
    source: str = Field(description="'gallery' (from the gallery folder) or 'enrolled'")
    width: int
    height: int
    created_at: float = Field(description="Unix time")
    image_url: str


class SearchHit(BaseModel):
    id: int
    label: str
    score: float = Field(description="cosine similarity, -1..1, higher is more similar")
    image_url: str


class SearchResults(BaseModel):
    results: list[SearchHit]
    k: int
    took_ms: float


class LabelScore(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    label: str = Field(description="the best label, or 'unknown' below the threshold")
    score: float
    threshold: float
    candidates: list[LabelScore]
    took_ms: float


class EnrolledItem(BaseModel):
    id: int
    label: str
    created: bool = Field(description="false when these bytes were already enrolled")
    image_url: str


class EnrollResult(BaseModel):
    items: list[EnrolledItem]


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


class ErrorMessage(BaseModel):
    detail: str
