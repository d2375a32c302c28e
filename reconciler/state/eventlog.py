"""The event log (`events.jsonl`): one JSON object per line, appended; its one writer and its
one reader.

Every reading goes through one line parser: a torn line (a writer killed mid-append), a line
that is not JSON, or one that is not an event this reconciler writes (a hand edit) is skipped,
never fatal; keys it does not know are ignored. A line's cursor is the byte offset just after it:
the API's `after` and Last-Event-ID, and `reconciler events --follow`, continue from there.
Free of the web stack, so that `reconciler events` starts fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.events import Event
from reconciler.state.directory import open_append

EVENTS_READ_BYTES = 1024 * 1024
"""The most of events.jsonl one read takes (a stream catches up in steps)."""


@dataclass(frozen=True)
class Logged:
    """An event as read back, with its cursor."""

    cursor: int
    event: Event

    def to_json(self) -> dict[str, object]:
        """Its line's JSON with the cursor as `id` (what the API serves)."""
        return {**self.event.to_json(), "id": self.cursor}


def append_event(path: str | os.PathLike[str], event: Event) -> None:
    """Append one event; one write() of one line, so concurrent readers never see half of it."""
    line = json.dumps(event.to_json(), default=str) + "\n"
    fd = open_append(path)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def parse_line(line: bytes) -> Event | None:
    """The event one whole line (without its newline) holds, or None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return Event.from_json(record) if isinstance(record, dict) else None


def _parse_lines(data: bytes, start: int) -> Iterable[Logged]:
    """Each complete event line of `data`, which begins at byte `start` of the file; the part
    after the last newline is a line still being written."""
    offset = start
    for line in data.split(b"\n")[:-1]:
        offset += len(line) + 1
        event = parse_line(line)
        if event is not None:
            yield Logged(offset, event)


def read_events(path: str | os.PathLike[str], start: int = 0) -> Iterator[Event]:
    """Every event in the file from byte offset `start` on, oldest first."""
    offset = start
    while True:
        batch, offset, more = _read_after(Path(path), offset, EVENTS_READ_BYTES)
        yield from (logged.event for logged in batch)
        if not more:
            return


def read_events_after(
    path: Path, offset: int, max_bytes: int = EVENTS_READ_BYTES
) -> tuple[list[Logged], int]:
    """Events written after byte `offset`, and the offset to continue from. A file now shorter
    than `offset` was replaced: it is read from its start."""
    events, offset, _ = _read_after(path, offset, max_bytes)
    return events, offset


def _read_after(path: Path, offset: int, max_bytes: int) -> tuple[list[Logged], int, bool]:
    """As read_events_after, and whether whole lines remain beyond what was read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if offset > size:
                offset = 0
            f.seek(offset)
            data = f.read(min(size - offset, max_bytes))
    except OSError:
        return [], offset, False
    more = offset + len(data) < size
    complete = data.rfind(b"\n") + 1
    if complete == 0 and len(data) >= max_bytes:  # one absurd line: skip it rather than stall
        return [], offset + len(data), more
    return list(_parse_lines(data[:complete], offset)), offset + complete, more


def read_recent_events(
    path: Path,
    limit: int,
    since: float | None = None,
    model: str | None = None,
    kind: str | None = None,
) -> list[Logged]:
    """The last `limit` events (newer than `since`, of `model`, of `kind`), oldest first. Reads
    backwards from the end: a long event log costs what is returned."""
    wanted = _matching(since, model, kind)
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
            matching = [e for e in events if wanted(e.event)]
            reached_since = since is not None and events and events[0].event.time <= since
            if len(matching) >= limit or start == 0 or reached_since:
                return matching[-limit:]
            window *= 4


def _matching(since: float | None, model: str | None, kind: str | None) -> Callable[[Event], bool]:
    def wanted(event: Event) -> bool:
        return (
            (since is None or event.time > since)
            and (model is None or event.model == model)
            and (kind is None or event.kind == kind)
        )

    return wanted


def events_end(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
