"""One engine instance, as every part of a pass sees it: its record and its status transitions.

The same record is what supervision updates, what the planner reads (a subset of its fields:
status, GPUs, memory, port, spec hash, given up, last error), what execution writes and what the
state file holds. Other shapes exist only at boundaries (an engine's `Handle`, its record on
disk), each with a converter that names its fields.

A record's status changes only through `transition`, which allows the moves that TRANSITIONS
lists and raises on any other: a status is a claim about an engine (it holds GPUs, it answered
its probe), and a move the table does not know means a bug in the loop, not a new state of
the world. Pure: the caller gives the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum


class Status(StrEnum):
    """The seed's status values."""

    stopped = "stopped"
    starting = "starting"
    running = "running"
    error = "error"
    stopping = "stopping"
    preempted = "preempted"


# An engine in these states holds its GPUs and port: the planner counts its reservation.
OCCUPYING = frozenset({Status.starting, Status.running, Status.stopping})


@dataclass(frozen=True)
class InstanceRecord:
    """One engine instance (a model, or one replica of it) as the reconciler last left it."""

    id: str
    status: Status = Status.stopped
    pid: int | None = None
    container_id: str | None = None
    port: int | None = None
    gpus: tuple[int, ...] = ()
    memory_mb: int = 0
    """reservation per GPU, MiB"""
    spec_hash: str | None = None
    """hash of the spec the engine was started from; None = taken as matching the current spec"""
    restarts: int = 0
    """failures in a row (reset once the engine is ready again)"""
    restarts_total: int = 0
    last_error: str | None = None
    last_log_lines: tuple[str, ...] = ()
    last_transition: float = 0.0
    """unix time of the last status change"""
    next_retry_at: float | None = None
    given_up: bool = False
    """retries exhausted: stays in error (not restarted) until its spec changes or an operator
    asks for a restart"""
    started_at: float | None = None
    probe_failures: int = 0
    """failed liveness probes in a row of a ready engine: counted across one-shot `apply`
    runs, so that a hung engine reaches its failure_threshold without a daemon"""

    @property
    def occupies(self) -> bool:
        return self.status in OCCUPYING


def planner_view(record: InstanceRecord) -> InstanceRecord:
    """The record with only the fields the planner reads (what runs where, from what spec, and
    whether it gave up); the crash bookkeeping and the engine's process stay behind, so that
    two instances the planner cannot tell apart compare equal."""
    return InstanceRecord(
        id=record.id,
        status=record.status,
        port=record.port,
        gpus=record.gpus,
        memory_mb=record.memory_mb,
        spec_hash=record.spec_hash,
        last_error=record.last_error,
        given_up=record.given_up,
    )


_S = Status
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    # started by the plan, or its engine found alive (adopted); a start that failed for good;
    # its engine stopped by `stop-all` (a pass died before it wrote that it started one)
    _S.stopped: frozenset({_S.stopped, _S.starting, _S.error, _S.stopping}),
    # answered its first probe; failed; stopped, preempted or restarted by the plan, an operator
    # or a removed spec
    _S.starting: frozenset(
        {_S.starting, _S.running, _S.error, _S.stopping, _S.preempted, _S.stopped}
    ),
    # `running` is reached only through `starting`: a ready engine is not started again
    _S.running: frozenset({_S.running, _S.error, _S.stopping, _S.preempted, _S.stopped}),
    # retried, cleared by an operator, or an engine it could not stop is stopped by `stop-all`;
    # never preempted: it holds nothing
    _S.error: frozenset({_S.error, _S.starting, _S.stopped, _S.stopping}),
    # stopped, or its stop failed; an engine that outlived a pass that died mid-stop is adopted
    _S.stopping: frozenset({_S.stopping, _S.stopped, _S.error, _S.starting}),
    # restarted when room returns; its start failed; cleared by an operator; an engine that
    # outlived a pass that died mid-preemption is adopted, or stopped by `stop-all`
    _S.preempted: frozenset({_S.preempted, _S.starting, _S.error, _S.stopped, _S.stopping}),
}
"""From a status, the statuses a record may move to (staying put included)."""


class ForbiddenTransition(ValueError):
    """A status change that TRANSITIONS does not allow: a bug in whoever asked for it."""


def allowed(before: Status, after: Status) -> bool:
    return after in TRANSITIONS[before]


def transition(
    record: InstanceRecord,
    to: Status,
    now: float,
    **changes: object,
) -> InstanceRecord:
    """`record` in status `to`, with the fields in `changes` set too; last_transition becomes
    `now` when the status changes (staying put keeps the time it was entered). Raises
    ForbiddenTransition for a move TRANSITIONS does not list."""
    if not allowed(record.status, to):
        raise ForbiddenTransition(f"{record.id}: {record.status} -> {to} is not a transition")
    if "status" in changes or "last_transition" in changes:
        raise TypeError("transition sets status and last_transition itself")
    since = now if to != record.status else record.last_transition
    # the changes are field values of several types: replace() checks their names at run time
    return replace(record, status=to, last_transition=since, **changes)  # type: ignore[arg-type]
