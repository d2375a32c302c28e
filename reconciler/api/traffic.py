"""GET /api/v1/traffic: each model's requests/s and latency over the last minute, as the gateway
(a process of its own) measured them: read from its loopback-only GET /internal/traffic."""

from __future__ import annotations

import httpx
from fastapi import APIRouter
from pydantic import ValidationError

from .cache import Memo
from .responses import TrafficOut
from .views import Views

FETCH_TIMEOUT_S = 1.0
"""a gateway slower than this to say how it is doing is reported as not answering"""
FRESH_S = 1.0
"""dashboards poll: however many there are, the gateway is asked at most once a second"""


def fetch_traffic(gateway_url: str | None) -> TrafficOut:
    """The gateway's report, or an empty one saying why there is none."""
    if gateway_url is None:
        return TrafficOut(window_s=0, models={}, reason="no gateway (reconciler run --no-gateway)")
    try:
        response = httpx.get(f"{gateway_url}/internal/traffic", timeout=FETCH_TIMEOUT_S)
        response.raise_for_status()
        return TrafficOut.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError) as exc:
        reason = f"the gateway on {gateway_url} does not answer: {type(exc).__name__} {exc}"
        return TrafficOut(window_s=0, models={}, reason=reason.strip())


def router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])
    memo = Memo(FRESH_S)
    gateway_url = views.settings.gateway_url

    @routes.get("/traffic", response_model=TrafficOut)
    def traffic() -> TrafficOut:
        """Requests per second, p50/p95 latency and server errors per second of each model
        over the last minute, as measured by the gateway. Never an error: without a gateway,
        or while it does not answer, the figures are empty and `reason` says why."""
        return memo.get(None, lambda: fetch_traffic(gateway_url))

    return routes
