"""Events as typed records: each kind writes exactly the JSON keys it always wrote (a table
written here, not read from the code), reads back into the same record, and a reader of the log
skips what this reconciler does not write and ignores keys it does not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.events import Event, EventKind
from reconciler.state.eventlog import (
    append_event,
    parse_line,
    read_events,
    read_events_after,
    read_recent_events,
)

BASE = ["time", "kind", "model", "message"]
KEYS = {
    "start": BASE,
    "stop": BASE,
    "preempt": BASE,
    "restart": BASE,
    "ready": [*BASE, "seconds"],
    "crashed": BASE,
    "gave-up": BASE,
    "error": BASE,
    "desired-invalid": BASE,
    "applied": [*BASE, "revision", "dirty"],
    "state-rebuilt": BASE,
    "duplicate": BASE,
    "restart-requested": BASE,
    "unschedulable": BASE,
    "recovered": BASE,
    "memory-exceeded": [*BASE, "measured_mb", "reserved_mb"],
    "remote-refused": [*BASE, "revision"],
    "remote-forced": [*BASE, "revision"],
    "webhook": BASE,
}
"""Each kind's JSON keys, in order, as the event log has always had them (API clients, the
dashboard, `reconciler events --json`, history and notifications read them)."""

EXTRA_VALUES = {
    "seconds": st.floats(0, 1e6),
    "revision": st.none() | st.text("0123456789abcdef", min_size=40, max_size=40),
    "dirty": st.booleans(),
    "measured_mb": st.integers(0, 10**7),
    "reserved_mb": st.integers(0, 10**7),
}


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from(sorted(KEYS)))
    extras = {key: draw(EXTRA_VALUES[key]) for key in KEYS[kind][len(BASE) :]}
    return Event(
        draw(st.floats(0, 4e9)),
        EventKind(kind),
        draw(st.none() | st.text(min_size=1, max_size=20)),
        draw(st.text(max_size=80)),
        **extras,
    )


def test_every_kind_has_its_row() -> None:
    assert set(KEYS) == {k.value for k in EventKind}


@given(events())
def test_an_event_writes_its_kinds_keys_and_reads_back_equal(event: Event) -> None:
    line = json.dumps(event.to_json())
    assert list(json.loads(line)) == KEYS[event.kind]
    assert parse_line(line.encode()) == event


@given(
    events(), st.dictionaries(st.text(min_size=1).filter(lambda k: k not in BASE), st.integers())
)
def test_keys_a_reader_does_not_know_are_ignored(event: Event, unknown: dict[str, int]) -> None:
    record = {**unknown, **event.to_json()}
    assert Event.from_json(record) == event


def test_what_a_writer_passes_is_written() -> None:
    ready = Event(5.0, EventKind.ready, "m", "ready after 3.5s", seconds=3.5)
    assert ready.to_json() == {
        "time": 5.0,
        "kind": "ready",
        "model": "m",
        "message": "ready after 3.5s",
        "seconds": 3.5,
    }
    applied = Event(1.0, EventKind.applied, None, "applied working tree", revision=None, dirty=True)
    assert applied.to_json()["revision"] is None  # a working tree outside git: the key stays


def test_an_extra_of_another_kind_is_a_writers_mistake() -> None:
    with pytest.raises(ValueError, match="no seconds"):
        Event(1.0, EventKind.start, "m", "started", seconds=2.0)


@pytest.mark.parametrize(
    "line",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"time": NaN, "kind": "start", "model": "a", "message": ""}',
        b'{"time": 1, "kind": 5}',
        b'{"time": 1, "kind": "start", "model": 7, "message": ""}',
        b'{"time": 1, "kind": "no-such-kind", "model": "a", "message": ""}',
        b'{"time": true, "kind": "start", "model": "a", "message": ""}',
        b'{"kind": "applied", "revision": "x"}',
    ],
)
def test_a_line_this_reconciler_does_not_write_is_skipped(line: bytes) -> None:
    assert parse_line(line) is None


def test_an_extra_of_the_wrong_type_reads_as_absent() -> None:
    line = b'{"time": 1, "kind": "ready", "model": "a", "message": "", "seconds": "3"}'
    assert parse_line(line) == Event(1.0, EventKind.ready, "a", "")


def write_log(path: Path, count: int) -> list[Event]:
    written = [Event(float(i), EventKind.start, f"m{i % 3}", f"start {i}") for i in range(count)]
    for event in written:
        append_event(path, event)
    return written


def test_every_reader_skips_a_torn_line_and_the_cursors_continue(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    written = write_log(path, 5)
    with open(path, "ab") as f:
        f.write(b'{"time": 9, "kind": "sta\n')  # a writer killed mid-line, then more events
    more = write_log(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"time": 10, "kind"')  # still being written: no newline yet
    everything = [*written, *more]
    assert list(read_events(path)) == everything
    recent = read_recent_events(path, 100)
    assert [r.event for r in recent] == everything
    assert recent[-1].cursor == path.stat().st_size - len(b'{"time": 10, "kind"')
    after, offset = read_events_after(path, recent[2].cursor)
    assert [a.event for a in after] == everything[3:]
    assert offset == recent[-1].cursor
    assert read_events_after(path, offset) == ([], offset)


def test_recent_events_filter_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    written = write_log(path, 30)
    got = read_recent_events(path, 4, model="m1")
    assert [g.event for g in got] == [e for e in written if e.model == "m1"][-4:]
    newer = read_recent_events(path, 100, since=25.0)
    assert [g.event.time for g in newer] == [26.0, 27.0, 28.0, 29.0]
    assert read_recent_events(path, 5, kind="stop") == []
    assert read_recent_events(tmp_path / "missing.jsonl", 5) == []


def test_small_reads_see_the_same_events_as_one(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    written = write_log(path, 50)
    seen, offset = [], 0
    while True:
        batch, offset = read_events_after(path, offset, max_bytes=300)
        if not batch:
            break
        seen += [b.event for b in batch]
    assert seen == written


def test_the_api_shape_is_the_line_plus_its_cursor(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_log(path, 1)
    (logged,) = read_recent_events(path, 1)
    assert logged.to_json() == {**json.loads(path.read_text()), "id": path.stat().st_size}
