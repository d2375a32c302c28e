"""What a pass reads and writes: the views of one engine, and the state directory.

One engine instance is seen three ways: `Handle` (the engines' observation: a process or a
container that exists now), `ModelState` (the state file's record: what cannot be observed, such as
restart counts and the last error), and `ObservedModel` (what the planner reads). The named
conversions below carry the fields the types share by name, so no list of fields is copied.

`Records` is the pass's door to the state directory: the state file (cached in memory while it is
the one this process wrote), the last valid desired state, operators' restart requests and the
event log; all writes go through reconciler.state.files.atomic_write, write_state and
reconciler.state.events.append_event. A muted `Records` (dry runs) writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from reconciler.core.desired import DesiredState
from reconciler.core.events import EventKind
from reconciler.core.observed import ObservedModel, Status
from reconciler.core.problems import Problem
from reconciler.core.retry import RetryState
from reconciler.core.spec import ClusterSpec, ModelSpec
from reconciler.engines.base import Handle
from reconciler.state.events import append_event
from reconciler.state.files import atomic_write
from reconciler.state.paths import EVENTS_FILE, LAST_VALID_FILE, RESTART_REQUESTS, STATE_FILE
from reconciler.state.statefile import (
    CorruptState,
    ModelState,
    State,
    read_state,
    read_state_or_recover,
    write_state,
)

log = logging.getLogger("reconciler.loop.records")


def _shared(a: type, b: type) -> tuple[str, ...]:
    return tuple(sorted({f.name for f in fields(a)} & {f.name for f in fields(b)}))


_FROM_HANDLE = _shared(Handle, ModelState)
"""where and from what an engine runs: pid, container, port, GPUs, memory, spec hash, start"""
_RETRY = _shared(RetryState, ModelState)
_OBSERVED = _shared(ObservedModel, ModelState)


# -- named conversions -----------------------------------------------------------------------


def state_from_handle(state: ModelState, handle: Handle) -> ModelState:
    """The record of a model whose engine `handle` exists: where it runs, from what spec. An
    engine that was not known to run is `starting` until its health check answers."""
    values: dict[str, Any] = {name: getattr(handle, name) for name in _FROM_HANDLE}
    values["gpus"] = list(handle.gpus)
    running = state.status in (Status.running, Status.starting)
    return replace(state, **values, status=state.status if running else Status.starting)


def retry_of(state: ModelState) -> RetryState:
    values: dict[str, Any] = {name: getattr(state, name) for name in _RETRY}
    values["last_log_lines"] = tuple(state.last_log_lines or ())
    return RetryState(**values)


def with_retry(state: ModelState, retry: RetryState) -> ModelState:
    values: dict[str, Any] = {name: getattr(retry, name) for name in _RETRY}
    values["last_log_lines"] = list(retry.last_log_lines)
    return replace(state, **values)


def observed_of(state: ModelState, engine_alive: bool) -> ObservedModel | None:
    """What the planner reads of a model: a live engine where it runs; a preempted model waiting
    for room; a model in error (its placement is gone); None for a stopped one."""
    full = ObservedModel(**{name: getattr(state, name) for name in _OBSERVED})
    full = replace(full, gpus=tuple(state.gpus))
    if state.status in (Status.starting, Status.running) and engine_alive:
        return full
    if state.status == Status.preempted:  # waits for room; the reasons say so
        return ObservedModel(state.id, Status.preempted)
    if state.status == Status.error:
        return replace(full, gpus=(), memory_mb=0, port=None)
    return None


# -- the state directory ---------------------------------------------------------------------


class Records:
    def __init__(self, state_dir: Path, clock: Callable[[], float]) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.muted = False
        """a dry run: nothing is written, no event logged"""
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """called with every event, after it is written (metrics, notifications, SSE)"""
        self.last_state: State | None = None
        """the state file as this process last wrote it"""
        self._written: tuple[int, int, int] | None = None

    def event(self, kind: EventKind | str, model: str | None, message: str, **extra: Any) -> None:
        """Append to the event log and tell the listeners. `kind` must be an EventKind."""
        kind = EventKind(kind)
        if self.muted:
            return
        record = {"time": self.clock(), "kind": str(kind), "model": model, "message": message}
        record.update(extra)
        append_event(self.state_dir / EVENTS_FILE, record)
        for listener in self.listeners:
            try:
                listener(record)
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
        states: Mapping[str, ModelState],
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
            return DesiredState(models, ClusterSpec.model_validate(doc["cluster"]), doc["revision"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember_valid(self, desired: DesiredState) -> None:
        if self.muted:
            return
        doc = {
            "revision": desired.revision,
            "cluster": desired.cluster.model_dump(mode="json"),
            "models": [m.model_dump(mode="json") for m in desired.models.values()],
        }
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
