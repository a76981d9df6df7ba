"""The FastAPI application: few-shot image search, one-shot enrolment, a persistent gallery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.api.errors import install_error_handlers
from app.api.openapi import install_openapi
from app.api.routes import enroll, health, items, search
from app.core.config import Settings, get_settings
from app.core.limits import BodyLimits
from app.core.metrics import Metrics, MetricsMiddleware
from app.services.state import ServiceState

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServiceState = app.state.service
        # Load in the background: /healthz answers at once and /readyz says when it's done.
        loading = asyncio.create_task(state.start(), name="start-up")
        yield
        loading.cancel()
        await state.stop()

    app = FastAPI(
        title="Few-shot image search",
        version="0.1.0",
        summary="Search a gallery of labelled photos by example and add new kinds from a "
                "single photo, with a triplet-loss Siamese encoder.",
        lifespan=lifespan,
    )
    app.state.metrics = Metrics()
    app.state.service = ServiceState(settings, app.state.metrics.requests_in_flight)
    app.add_middleware(BodyLimits, max_bytes=settings.max_upload_bytes,
                       max_files=settings.max_files_per_enroll,
                       timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for router in (search.router, enroll.router, items.router, health.router):
        app.include_router(router)

    install_error_handlers(app)
    install_openapi(app, settings)

    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, from the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
