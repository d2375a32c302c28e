"""The event log (`events.jsonl`): one JSON object per line, appended, read back tolerantly.

The one writer and the one reader of the file; a torn last line (a crash mid-append) or a line
that is not an object is skipped, never fatal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from reconciler.state.private import open_append


def append_event(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one event; one write() of one line, so concurrent readers never see half of it."""
    line = json.dumps(dict(record), default=str) + "\n"
    fd = open_append(path)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read_events(path: str | os.PathLike[str], start: int = 0) -> Iterator[dict[str, Any]]:
    """Every whole event in the file from byte offset `start` on, oldest first."""
    try:
        f = open(Path(path), "rb")  # noqa: SIM115 (closed below; a missing log is no events)
    except FileNotFoundError:
        return
    with f:
        f.seek(start)
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # a line still being written
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event
