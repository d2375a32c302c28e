"""GET /healthz, /readyz and /metrics: what a supervisor and Prometheus ask; and the rule every
route follows until the daemon has published its first pass (503: the API does not know yet
what runs).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from reconciler.api.api_service import LinkError
from reconciler.api.responses import ErrorOut, HealthOut, ReadyOut
from reconciler.api.views import Background, Views
from reconciler.metrics import CONTENT_TYPE

RETRY_AFTER_S = 1
NOT_READY_DETAIL = "the reconciler has not finished its first pass yet: retry shortly"

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "seconds to wait before asking again",
        "schema": {"type": "integer"},
    }
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorOut,
        "description": "the first pass has not finished (or the GPU inventory is unavailable)",
        "headers": RETRY_AFTER_HEADER,
    }
}
"""the OpenAPI description of a route that waits for the first pass"""


def unavailable(detail: str) -> HTTPException:
    """A 503 that tells the client when to ask again."""
    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def require_first_pass(views: Views) -> None:
    """Raise the 503 when this run's daemon has not published a pass yet."""
    if not views.first_pass_done():
        raise unavailable(NOT_READY_DETAIL)


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
