"""GET what the loop decided and did: /api/v1/plan (the plan its last pass made, the gateway's
traffic included: the API never plans on its own) and /api/v1/events (recent, filtered) and
/api/v1/events/stream (server-sent events).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from reconciler.api.probes import UNAVAILABLE, require_first_pass, unavailable
from reconciler.api.responses import (
    ActionOut,
    EventOut,
    GpuPlanOut,
    PlanOut,
    ProblemOut,
    RemoteModelOut,
    UnschedulableOut,
)
from reconciler.api.views import Views
from reconciler.core.plan import Plan
from reconciler.state.eventlog import events_end, read_events_after, read_recent_events


def plan_out(plan: Plan) -> PlanOut:
    return PlanOut(
        revision=plan.revision,
        valid=plan.valid,
        summary=plan.summary() if plan.valid else "invalid desired state: nothing changes",
        problems=[
            ProblemOut(
                file=p.file, line=p.line, field=p.field, message=p.message, severity=p.severity
            )
            for p in plan.problems
        ],
        actions=[
            ActionOut(
                action=a.action,
                model=a.model,
                gpus=list(a.gpus),
                memory_mb=a.memory_mb,
                port=a.port,
                reason=a.reason,
            )
            for a in plan.actions
        ],
        unschedulable=[UnschedulableOut(model=m, reason=r) for m, r in plan.unschedulable],
        gpus=[
            GpuPlanOut(
                index=g.index,
                memory_mb=g.memory_mb,
                used_mb_before=g.used_mb_before,
                used_mb_after=g.used_mb_after,
            )
            for g in plan.gpus
        ],
        remote=[
            RemoteModelOut(
                model=r.id, host=r.host, enabled=r.enabled, serves_for=list(r.serves_for)
            )
            for r in plan.remote
        ],
    )


def plan_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])

    @routes.get("/plan", response_model=PlanOut, responses=UNAVAILABLE)
    def plan() -> PlanOut:
        """The plan the loop's last pass made and carried out."""
        require_first_pass(views)
        loop = views.bulletin()
        if loop is None or loop.plan is None:  # every pass of this run has failed so far
            raise unavailable("the loop has made no plan yet: see the daemon's log")
        return plan_out(loop.plan)

    return routes


EVENTS_DEFAULT, EVENTS_MAX = 100, 1000
STREAM_POLL_S = 0.25
"""How often an event stream looks at events.jsonl (the daemon's record, written by another
process: a look costs an open and a seek when nothing was added)."""
STREAM_KEEPALIVE_S = 15.0


async def event_stream(views: Views, offset: int) -> AsyncIterator[bytes]:
    """Server-sent events: one `data:` line of JSON per event, `id:` its cursor, so that a
    reconnecting EventSource continues where it stopped (Last-Event-ID)."""
    yield b"retry: 2000\n\n"
    last_sent = time.monotonic()
    while not views.stopping():
        events, offset = read_events_after(views.events_path, offset)
        for logged in events:
            data = json.dumps(logged.to_json(), ensure_ascii=False, default=str)
            yield f"id: {logged.cursor}\ndata: {data}\n\n".encode()
            last_sent = time.monotonic()
        if time.monotonic() - last_sent > STREAM_KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(STREAM_POLL_S)


def _start_cursor(views: Views, after: int | None, last_event_id: str | None) -> int:
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id.strip())  # a reconnect continues where it stopped
    if after is not None:
        return after
    return events_end(views.events_path)  # a new stream: only what happens from now on


def events_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])

    @routes.get("/events", response_model=list[EventOut])
    def events(
        limit: int = Query(EVENTS_DEFAULT, ge=1, le=EVENTS_MAX),
        since: float | None = Query(None, description="only events after this unix time"),
        model: str | None = Query(None, max_length=253, description="only this model's"),
        kind: str | None = Query(None, max_length=64, description="only this kind"),
    ) -> list[dict[str, object]]:
        """Recent events from events.jsonl, oldest first."""
        recent = read_recent_events(views.events_path, limit, since, model, kind)
        return [logged.to_json() for logged in recent]

    @routes.get(
        "/events/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def event_stream_route(
        after: int | None = Query(None, ge=0, description="continue after this event id"),
        last_event_id: str | None = Header(None, max_length=32),
    ) -> StreamingResponse:
        """Server-sent events: each new event as one JSON `data:` line, `id:` its cursor."""
        start = _start_cursor(views, after, last_event_id)
        return StreamingResponse(
            event_stream(views, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return routes
