"""GET /api/v1/events (recent, filtered) and /api/v1/events/stream (server-sent events)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from reconciler.loop.reconcile import Reconciler

from .eventlog import events_end, read_events_after, read_recent_events
from .responses import EventOut
from .views import Views

EVENTS_DEFAULT, EVENTS_MAX = 100, 1000
STREAM_POLL_S = 0.5
"""How often an event stream looks at events.jsonl when no listener woke it."""
STREAM_KEEPALIVE_S = 15.0


class EventFeed:
    """Wakes the event streams when the reconciler writes an event. Streams read events.jsonl
    themselves (the file is the record; a stream resumes at any cursor); the reconciler's
    listeners only say "look now" instead of waiting for the next poll."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        reconciler.listeners.append(self._on_event)

    def bind(self) -> asyncio.Event:
        """The event that the next write sets (call from the server's event loop)."""
        self._loop = asyncio.get_running_loop()
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _on_event(self, _event: Mapping[str, Any]) -> None:
        # called in the loop's thread: must be cheap and must never raise into the reconciler
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the server's loop is closed: nobody listens
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()


async def event_stream(views: Views, feed: EventFeed, offset: int) -> AsyncIterator[bytes]:
    """Server-sent events: one `data:` line of JSON per event, `id:` its cursor, so that a
    reconnecting EventSource continues where it stopped (Last-Event-ID)."""
    yield b"retry: 2000\n\n"
    last_sent = time.monotonic()
    while not views.stopping():
        changed = feed.bind()
        events, offset = read_events_after(views.events_path, offset)
        for event in events:
            data = json.dumps(event, ensure_ascii=False, default=str)
            yield f"id: {event['id']}\ndata: {data}\n\n".encode()
            last_sent = time.monotonic()
        if time.monotonic() - last_sent > STREAM_KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), STREAM_POLL_S)


def _start_cursor(views: Views, after: int | None, last_event_id: str | None) -> int:
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id.strip())  # a reconnect continues where it stopped
    if after is not None:
        return after
    return events_end(views.events_path)  # a new stream: only what happens from now on


def router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])
    feed = EventFeed(views.reconciler)

    @routes.get("/events", response_model=list[EventOut])
    def events(
        limit: int = Query(EVENTS_DEFAULT, ge=1, le=EVENTS_MAX),
        since: float | None = Query(None, description="only events after this unix time"),
        model: str | None = Query(None, max_length=253, description="only this model's"),
        kind: str | None = Query(None, max_length=64, description="only this kind"),
    ) -> list[dict[str, Any]]:
        """Recent events from events.jsonl, oldest first."""
        return read_recent_events(views.events_path, limit, since, model, kind)

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
            event_stream(views, feed, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return routes
