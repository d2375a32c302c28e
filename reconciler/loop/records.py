"""What a pass reads and writes: an engine's record from what was observed, and the state directory.

One engine instance is one `InstanceRecord` (reconciler.core.instance) from observation to the
state file; the planner reads the same record. The engines report what exists as a `Handle` (a
process or a container, alive or exited): `record_from_handle` carries the fields it names into
the record, and HANDLE_ONLY says why each other field of a Handle stays behind (a test holds the
two lists to Handle's fields, so a field added there is placed on purpose or not at all).

`Records` is the pass's door to the state directory: the state file (cached in memory while it is
the one this process wrote), the last valid desired state, operators' restart requests and the
event log; all writes go through reconciler.state.directory.atomic_write, write_state and
reconciler.state.eventlog.append_event. A muted `Records` (dry runs) writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Unpack

from reconciler.core.cluster import ClusterSpec, HostSpec
from reconciler.core.desired import DesiredState, Problem
from reconciler.core.events import Event, EventExtras, EventKind
from reconciler.core.instance import InstanceRecord, Status, planner_view, transition
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Handle
from reconciler.state.directory import (
    EVENTS_FILE,
    LAST_VALID_FILE,
    RESTART_REQUESTS,
    STATE_FILE,
    atomic_write,
)
from reconciler.state.eventlog import append_event
from reconciler.state.reading import CorruptState, read_state, read_state_or_recover
from reconciler.state.statefile import State, write_state

log = logging.getLogger("reconciler.loop.records")


# -- from what the engines report --------------------------------------------------------------

HANDLE_TO_RECORD = ("pid", "container_id", "port", "gpus", "memory_mb", "spec_hash", "started_at")
"""where and from what an engine runs: the fields record_from_handle copies"""
HANDLE_ONLY = {
    "model_id": "the record's id: the caller pairs them",
    "framework": "which engine runs it, known from the spec",
    "create_time": "tells a live process from a reused pid, while it lives",
    "alive": "decides whether the record is placed at all, or failed",
    "exit_code": "told once, in the crash event's message",
    "log_path": "where the engine writes, known to its engine",
}
"""the fields of a Handle that the record does not keep, and why"""


def record_from_handle(record: InstanceRecord, handle: Handle, now: float) -> InstanceRecord:
    """The record of a model whose engine `handle` exists: where it runs, from what spec. An
    engine that was not known to run is `starting` until its health check answers."""
    placed = replace(
        record,
        pid=handle.pid,
        container_id=handle.container_id,
        port=handle.port,
        gpus=handle.gpus,
        memory_mb=handle.memory_mb,
        spec_hash=handle.spec_hash,
        started_at=handle.started_at,
    )
    if placed.status in (Status.running, Status.starting):
        return placed
    return transition(placed, Status.starting, now)


def observed_of(record: InstanceRecord, engine_alive: bool) -> InstanceRecord | None:
    """What the planner reads of a model: a live engine where it runs; a preempted model waiting
    for room (nothing but that: the reasons say so); a model in error, without the placement it
    lost; None for a stopped one."""
    if record.status in (Status.starting, Status.running) and engine_alive:
        return planner_view(record)
    if record.status == Status.preempted:
        return InstanceRecord(record.id, Status.preempted)
    if record.status == Status.error:
        return replace(planner_view(record), gpus=(), memory_mb=0, port=None)
    return None


# -- the state directory ---------------------------------------------------------------------


class Records:
    def __init__(self, state_dir: Path, clock: Callable[[], float]) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.muted = False
        """a dry run: nothing is written, no event logged"""
        self.listeners: list[Callable[[Mapping[str, Any]], object]] = []
        """called with every event's JSON object, after it is written (metrics, notifications)"""
        self.last_state: State | None = None
        """the state file as this process last wrote it"""
        self._written: tuple[int, int, int] | None = None

    def event(
        self, kind: EventKind, model: str | None, message: str, **extra: Unpack[EventExtras]
    ) -> None:
        """Append to the event log and tell the listeners (with its JSON object, as written)."""
        event = Event(self.clock(), EventKind(kind), model, message, **extra)
        if self.muted:
            return
        append_event(self.state_dir / EVENTS_FILE, event)
        for listener in self.listeners:
            try:
                listener(event.to_json())
            except Exception:  # a listener must never break a pass
                log.exception("event listener failed")

    # the state file

    def read_previous(self) -> tuple[State | None, str | None]:
        """The state file as the last pass left it: from memory while the file is still the one
        this process wrote (parsing the YAML costs more than the rest of an idle pass), from
        disk when anything else replaced it (`stop-all`, an `apply` beside the daemon)."""
        path = self.state_dir / STATE_FILE
        if self.last_state is not None and _file_signature(path) == self._written:
            return self.last_state, None
        if self.muted:  # moving a corrupt file aside is the loop's job, not a preview's
            try:
                return read_state(path), None
            except CorruptState:
                return None, None
        return read_state_or_recover(path)

    def write(
        self,
        states: Mapping[str, InstanceRecord],
        revision: str | None,
        problems: list[Problem],
        now: float,
        dirty: bool = False,
    ) -> None:
        if self.muted:
            return
        # models that are neither desired nor running leave the state file
        keep = {k: v for k, v in states.items() if v.status != Status.stopped or v.restarts_total}
        state = State(
            revision=revision,
            revision_dirty=dirty,
            applied_at=now,
            models=keep,
            problems=[p.to_dict() for p in problems if p.is_error],
        )
        path = self.state_dir / STATE_FILE
        write_state(path, state)
        self.last_state, self._written = state, _file_signature(path)

    # the last valid desired state

    def last_valid(self) -> DesiredState | None:
        try:
            doc = json.loads((self.state_dir / LAST_VALID_FILE).read_text(encoding="utf-8"))
            models = {m["id"]: ModelSpec.model_validate(m) for m in doc["models"]}
            cluster = ClusterSpec.model_validate(doc["cluster"])
            # a fleet host's view (core.fleet.host_view): the other hosts, and what they run
            hosts = {n: HostSpec.model_validate(h) for n, h in doc.get("hosts", {}).items()}
            elsewhere = {m["id"]: ModelSpec.model_validate(m) for m in doc.get("elsewhere", [])}
            host = doc.get("host")
            if host is not None and not isinstance(host, str):
                return None
            return DesiredState(
                models, cluster, doc["revision"], hosts=hosts, host=host, elsewhere=elsewhere
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def remember_valid(self, desired: DesiredState) -> None:
        if self.muted:
            return
        doc = {
            "revision": desired.revision,
            "cluster": desired.cluster.model_dump(mode="json"),
            "models": [m.model_dump(mode="json") for m in desired.models.values()],
        }
        if desired.hosts:
            doc["hosts"] = {n: h.model_dump(mode="json") for n, h in desired.hosts.items()}
            doc["host"] = desired.host
            doc["elsewhere"] = [m.model_dump(mode="json") for m in desired.elsewhere.values()]
        atomic_write(self.state_dir / LAST_VALID_FILE, json.dumps(doc, indent=1, sort_keys=True))

    # operators' restart requests

    def request_restart(self, model_id: str) -> None:
        if Path(model_id).name != model_id or model_id.startswith("."):
            raise ValueError(f"not a model id: {model_id!r}")
        atomic_write(self.state_dir / RESTART_REQUESTS / model_id, str(self.clock()))

    def restart_requests(self) -> list[str]:
        directory = self.state_dir / RESTART_REQUESTS
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))

    def restart_done(self, model_id: str) -> None:
        (self.state_dir / RESTART_REQUESTS / model_id).unlink(missing_ok=True)


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced or rewritten (inode, mtime, size)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
