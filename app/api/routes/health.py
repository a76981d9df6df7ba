from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import GalleryDep, ReadAccess, StateDep
from app.api.errors import error_responses
from app.schemas import ConsistencyReport, Health, Readiness
from app.stores.base import StoreUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Model and index are ready",
            responses={503: {"model": Readiness}})
def readyz(state: StateDep, response: Response) -> Readiness:
    ready, detail = state.ready, state.detail
    if ready and state.gallery is not None:
        try:  # a shared store may be down or restarting after start-up
            state.gallery.store.ping()
        except StoreUnavailable as exc:
            ready, detail = False, str(exc)
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="ready" if ready else "not ready",
        detail=detail,
        checkpoint=state.checkpoint,
        runtime=state.runtime,
        device=state.device,
        model_lanes=state.embedding.lanes if state.embedding else None,
        gallery_items=len(state.gallery) if ready and state.gallery else None,
        startup=state.startup_stats or None,
    )


@router.get("/consistency", response_model=ConsistencyReport, dependencies=[ReadAccess],
            responses=error_responses(503),
            summary="The service checks its index and labels against its store")
async def consistency(gallery: GalleryDep) -> ConsistencyReport:
    return ConsistencyReport(**await asyncio.to_thread(gallery.check))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {
                "schema": {"type": "string"}}}, "description": "Prometheus text format"}})
def metrics(request: Request, state: StateDep) -> Response:
    m = request.app.state.metrics
    if state.ready and state.gallery is not None:
        try:
            m.gallery_items.set(len(state.gallery))
            m.gallery_labels.set(len(state.gallery.labels()))
        except StoreUnavailable:
            pass  # the gauges keep their last values while the database is away
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
