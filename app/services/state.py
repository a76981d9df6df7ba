"""What the service holds once it has started: the model, the gallery, and readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from app.core.config import Settings
from app.services.embedding import EmbeddingService
from app.services.gallery import Gallery
from app.stores import open_store
from models import resample
from models.runtimes.factory import lone_call_embedder, model_lanes, open_embedder

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: Settings
    # HTTP requests being answered: with none but its own, a query gets the lone-call session
    requests_in_flight: Callable[[], int] | None = None
    ready: bool = False
    detail: str = "starting: loading the model"
    gallery: Gallery | None = None
    embedding: EmbeddingService | None = None
    checkpoint: str | None = None
    runtime: str | None = None
    device: str | None = None
    started_at: float = field(default_factory=time.time)
    startup_seconds: float | None = None
    startup_stats: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        """Load everything; on failure stay alive, not ready, with the reason in /readyz."""
        try:
            await asyncio.to_thread(self._load_model)
            assert self.embedding is not None
            await self.embedding.start()
            self.detail = "starting: embedding the gallery"
            stats = self.startup_stats = await asyncio.to_thread(self._load_gallery)
            # The compiled resize loads now, off the start-up's path (~1 s); requests
            # meanwhile resize with Pillow, to the same pixels.
            resample.load_in_background()
            self.startup_seconds = time.time() - self.started_at
            self.ready, self.detail = True, "ready"
            assert self.gallery is not None
            log.info("ready in %.1f s: %d items in the gallery (%s)", self.startup_seconds,
                     len(self.gallery), stats)
        except Exception as exc:  # reported through /readyz and the log, never swallowed
            log.exception("start-up failed")
            self.detail = f"start-up failed: {type(exc).__name__}: {exc}"

    def _load_model(self) -> None:
        s = self.settings
        opened = open_embedder(s.checkpoint, s.runtime, s.device, cache_dir=s.data_dir / "onnx",
                               threads=s.threads)
        embedder = opened.embedder
        lane_embedder, lanes = model_lanes(embedder, s.model_lanes, s.threads)
        self.embedding = EmbeddingService.from_settings(
            embedder, s, lane_embedder, lanes, lone_call_embedder(embedder),
            self.requests_in_flight)
        self.checkpoint, self.runtime, self.device = s.checkpoint, embedder.name, opened.device
        calibration = opened.openset
        if calibration is not None and s.classify_few_shot_bonus is not None:
            calibration = replace(calibration, few_shot_bonus=s.classify_few_shot_bonus)
        self.gallery = Gallery(open_store(s, embedder.dim, opened.fingerprint), self.embedding,
                               calibration)
        log.info("loaded %s (fingerprint %s) on %s with runtime %s, %d model lanes under load"
                 "%s", s.checkpoint, opened.fingerprint, opened.device, embedder.name,
                 self.embedding.lanes, ", a spinning session for a lone query"
                 if self.embedding.lone_embedder else "")

    def _load_gallery(self) -> dict[str, int]:
        assert self.gallery is not None
        if self.settings.gallery_dir is None:
            log.info("no GALLERY_DIR set: serving the stored items only (%s); enrol photos "
                     "to add classes", self.settings.data_dir)
        return self.gallery.load(self.settings.gallery_dir, self.settings.embed_batch_size)

    async def stop(self) -> None:
        if self.embedding is not None:
            await self.embedding.stop()
        if self.gallery is not None:
            self.gallery.store.close()
