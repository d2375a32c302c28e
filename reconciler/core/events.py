"""Events: their kinds (the one list of what the event log, metrics, notifications and the CLI
speak of) and the typed record of one event, written to and read from the log as today's JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict, TypeGuard


class EventKind(StrEnum):
    start = "start"
    stop = "stop"
    preempt = "preempt"
    restart = "restart"
    ready = "ready"
    crashed = "crashed"
    gave_up = "gave-up"
    error = "error"
    desired_invalid = "desired-invalid"
    applied = "applied"
    state_rebuilt = "state-rebuilt"
    duplicate = "duplicate"
    restart_requested = "restart-requested"
    unschedulable = "unschedulable"
    recovered = "recovered"
    memory_exceeded = "memory-exceeded"
    """an engine uses more memory than the planner reserved for it: the host is overbooked"""
    remote_refused = "remote-refused"
    remote_forced = "remote-forced"
    webhook = "webhook"


EXTRA_KEYS: dict[EventKind, tuple[str, ...]] = {
    EventKind.ready: ("seconds",),
    EventKind.applied: ("revision", "dirty"),
    EventKind.remote_refused: ("revision",),
    EventKind.remote_forced: ("revision",),
    EventKind.memory_exceeded: ("measured_mb", "reserved_mb"),
}
"""The fields an event of each kind carries beyond time, kind, model and message: the keys its
JSON line has (and no other kind's). A reader finds them by key, never in the message."""


class EventExtras(TypedDict, total=False):
    """What a writer may add to an event, by name (see EXTRA_KEYS for which kind has which)."""

    revision: str | None
    dirty: bool
    seconds: float
    measured_mb: int
    reserved_mb: int


@dataclass(frozen=True)
class Event:
    """One line of the event log, as written and as read back."""

    time: float
    kind: EventKind
    model: str | None
    message: str
    revision: str | None = None
    """applied, remote-refused, remote-forced: the commit (None: a working tree, or unknown)"""
    dirty: bool | None = None
    """applied: with uncommitted edits"""
    seconds: float | None = None
    """ready: seconds from the engine's start to its first answer"""
    measured_mb: int | None = None
    """memory-exceeded: what the engine was measured to use"""
    reserved_mb: int | None = None
    """memory-exceeded: what the planner reserved for it"""

    def __post_init__(self) -> None:
        allowed = EXTRA_KEYS.get(self.kind, ())
        stray = [k for k in _EXTRAS if k not in allowed and getattr(self, k) is not None]
        if stray:  # it would not be written: a writer's mistake, not the log's
            raise ValueError(f"a {self.kind} event has no {', '.join(stray)}")

    def to_json(self) -> dict[str, object]:
        """The JSON object of its line: time, kind, model, message, then its kind's extras."""
        record: dict[str, object] = {
            "time": self.time,
            "kind": str(self.kind),
            "model": self.model,
            "message": self.message,
        }
        for key in EXTRA_KEYS.get(self.kind, ()):
            record[key] = getattr(self, key)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, object]) -> Event | None:
        """The event a parsed line holds; None for anything this reconciler does not write (a
        hand edit, a foreign line). Keys it does not know are ignored; an extra of the wrong
        type, or of another kind, reads as absent."""
        when, kind, model = record.get("time"), record.get("kind"), record.get("model")
        message = record.get("message", "")
        if not (_number(when) and math.isfinite(when) and isinstance(message, str)):
            return None
        if not (isinstance(model, str | None) and isinstance(kind, str) and kind in _KINDS):
            return None
        has = EXTRA_KEYS.get(EventKind(kind), ())

        def given(key: str) -> object:
            return record.get(key) if key in has else None

        revision, dirty, seconds = given("revision"), given("dirty"), given("seconds")
        measured, reserved = given("measured_mb"), given("reserved_mb")
        return cls(
            float(when),
            EventKind(kind),
            model,
            message,
            revision=revision if isinstance(revision, str) else None,
            dirty=dirty if isinstance(dirty, bool) else None,
            seconds=float(seconds) if _number(seconds) else None,
            measured_mb=measured if _integer(measured) else None,
            reserved_mb=reserved if _integer(reserved) else None,
        )


_EXTRAS = tuple(EventExtras.__annotations__)
_KINDS = frozenset(k.value for k in EventKind)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
