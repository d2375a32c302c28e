"""GET /healthz, /readyz and /metrics: what a supervisor and Prometheus ask."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from reconciler.metrics import CONTENT_TYPE

from .cache import Background
from .link import LinkError
from .responses import HealthOut, ReadyOut
from .views import Views

METRICS_FRESH_S, METRICS_STALE_S = 1.0, 5.0
"""/metrics: a rendering younger than FRESH is served as it is; one younger than STALE is served
while a new one is made; an older one (the next scrape of a Prometheus) is made anew at once."""


def _daemon_metrics(views: Views) -> bytes | None:
    if views.link is None:
        return None
    try:
        return views.link.call("metrics")["body"].encode()
    except LinkError:
        return None


def router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["probes"])

    @routes.get("/healthz", response_model=HealthOut)
    def healthz() -> HealthOut:
        """The process is up and serving."""
        return HealthOut()

    @routes.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
    def readyz() -> ReadyOut | JSONResponse:
        """Ready once the first reconcile pass has finished."""
        passes = views.passes()
        body = ReadyOut(ready=passes > 0, passes=passes)
        return body if body.ready else JSONResponse(body.model_dump(), status_code=503)

    # the registry is the daemon's: scrapes close together share one rendering, so that
    # however many scrapers there are, the loop renders at most once a second
    rendered = Background(
        lambda: _daemon_metrics(views), fresh_s=METRICS_FRESH_S, stale_s=METRICS_STALE_S
    )

    @routes.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format), at most a few seconds old."""
        # answered on the event loop when a rendering is at hand (no thread hand-off, which
        # costs most under a busy loop); rendered in a worker thread when it is not
        body = rendered.get() if rendered.ready() else await run_in_threadpool(rendered.get)
        if body is None:
            raise HTTPException(503, "the reconcile loop does not answer")
        return Response(body, media_type=CONTENT_TYPE)

    return routes
