"""Service settings, from environment variables or a ``.env`` file (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.base import DEFAULT_CHECKPOINT


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    checkpoint: str = str(DEFAULT_CHECKPOINT)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx", "int8"] = "auto"
    data_dir: Path = Path("data")
    # Unset: the embedded store (SQLite + FAISS in DATA_DIR). postgresql://...: the shared
    # store, for several replicas (PostgreSQL with pgvector).
    database_url: str | None = Field(None, pattern=r"^postgres(ql)?://")
    database_pool_size: int = Field(8, ge=1)
    # PostgreSQL: searches are exact below this many items, HNSW above (faster from 1,000
    # items on with recall@5 1.0 to 100,000: python -m bench.postgres_search).
    exact_search_below: int = Field(1000, ge=0)
    gallery_dir: Path | None = None
    api_key: str | None = None
    search_requires_key: bool = False
    max_upload_mb: float = Field(10.0, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    max_files_per_enroll: int = Field(32, ge=1)
    # Score below which /classify answers "unknown". Unset: the checkpoint's calibrated
    # threshold (on its shot-calibrated score; the model card says how it was chosen), or
    # 0.89 on plain cosines for a checkpoint without a calibration.
    classify_threshold: float | None = Field(None, ge=-100.0, le=100.0)
    # Added to the score of a label of under five photos at one photo, tapering to 0 at five
    # (models/decision.py). Unset: the checkpoint's calibrated bonus; 0 turns it off.
    classify_few_shot_bonus: float | None = Field(None, ge=0.0, le=10.0)
    # Micro-batching where there are no model lanes (e.g. a GPU): under load, concurrent
    # searches wait at most this long to share one model call (a lone request never waits).
    batch_wait_ms: float = Field(4.0, ge=0)
    max_batch: int = Field(32, ge=1)
    embed_batch_size: int = Field(32, ge=1)
    # Under load, decoding uploads yields the cores to the model (nice value added to the
    # decoding threads, Linux; 0 = same priority as the model).
    decode_nice: int = Field(10, ge=0, le=19)
    # ONNX Runtime on the CPU: under load, this many single-threaded model calls of one
    # image each, side by side (default: one per inference thread; 0 or 1 = batches in one
    # call on all threads).
    model_lanes: int | None = Field(None, ge=0)
    threads: int | None = Field(None, ge=1, description="inference threads (default: all)")
    # Slow and idle clients (app/core/server.py): a request head must arrive within
    # HEADER_TIMEOUT_S, a body within BODY_TIMEOUT_S (408 after); idle kept-alive
    # connections close after KEEP_ALIVE_S; past MAX_CONNECTIONS, new ones get a 503.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(120.0, gt=0)
    keep_alive_s: int = Field(5, ge=1)
    max_connections: int = Field(1000, ge=1)
    log_level: str = "INFO"

    @field_validator("gallery_dir", "api_key", "database_url", "classify_threshold",
                     "classify_few_shot_bonus", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@lru_cache
def get_settings() -> Settings:
    return Settings()
