"""Reading events.jsonl by byte cursor: the recent events, and those written after a cursor.

Used by the API (list and stream) and by `reconciler events` (print and follow); free of the web
stack so that the command starts fast. A torn or foreign line is skipped, never fatal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EVENTS_READ_BYTES = 1024 * 1024
"""The most of events.jsonl a stream reads at once (it catches up in steps)."""


def _parse_lines(data: bytes, start: int) -> Iterable[tuple[int, dict[str, Any]]]:
    """(offset just after the line, event) for each complete, well-formed line of `data`, which
    begins at byte `start` of the file. A torn line (a writer killed mid-write) is skipped."""
    offset = start
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        offset += len(line) + 1
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if _is_event(event):
            yield offset, event


def _is_event(event: Any) -> bool:
    """The shape the reconciler writes; anything else in the file (a hand edit) is skipped."""
    return (
        isinstance(event, dict)
        and isinstance(event.get("kind"), str)
        and isinstance(event.get("time"), int | float)
        and math.isfinite(event["time"])
        and isinstance(event.get("model"), str | None)
        and isinstance(event.get("message", ""), str)
    )


def read_recent_events(
    path: Path,
    limit: int,
    since: float | None = None,
    model: str | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """The last `limit` events (newer than `since`, of `model`, of `kind`), oldest first, each
    with its cursor `id`. Reads backwards from the end: a long event log costs what is returned."""

    def wanted(event: Mapping[str, Any]) -> bool:
        return (
            (since is None or event["time"] > since)
            and (model is None or event.get("model") == model)
            and (kind is None or event["kind"] == kind)
        )

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the size is read from the handle
    except OSError:
        return []
    with f:
        end = f.seek(0, 2)
        window = 64 * 1024
        while True:
            start = max(0, end - window)
            f.seek(start)
            data = f.read(end - start)
            if start > 0:  # begin after the first newline: the line before it is cut
                cut = data.find(b"\n") + 1
                data, start = data[cut:], start + cut
            events = list(_parse_lines(data, start))
            matching = [{**e, "id": i} for i, e in events if wanted(e)]
            reached_since = since is not None and events and events[0][1]["time"] <= since
            if len(matching) >= limit or start == 0 or reached_since:
                return matching[-limit:]
            window *= 4


def read_events_after(
    path: Path, offset: int, max_bytes: int = EVENTS_READ_BYTES
) -> tuple[list[dict[str, Any]], int]:
    """Events written after byte `offset`, and the offset to continue from. A file now shorter
    than `offset` was replaced: it is read from its start."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if offset > size:
                offset = 0
            f.seek(offset)
            data = f.read(min(size - offset, max_bytes))
    except OSError:
        return [], offset
    complete = data.rfind(b"\n") + 1
    if complete == 0 and len(data) >= max_bytes:  # one absurd line: skip it rather than stall
        return [], offset + len(data)
    events = [{**e, "id": i} for i, e in _parse_lines(data[:complete], offset)]
    return events, offset + complete


def events_end(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
