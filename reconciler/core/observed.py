"""What runs: the observed state of each engine, as the planner reads it. Pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
class ObservedModel:
    id: str
    status: Status
    gpus: tuple[int, ...] = ()
    memory_mb: int = 0
    """Reservation per GPU, in MiB."""
    port: int | None = None
    spec_hash: str | None = None
    """Hash of the spec the engine was started from; None = taken as matching the current spec."""
    given_up: bool = False
    """Retries exhausted: stays in error (not restarted) until its spec changes or an operator
    asks for a restart."""
    last_error: str | None = None

    @property
    def occupies(self) -> bool:
        return self.status in OCCUPYING


ObservedState = Mapping[str, ObservedModel]
