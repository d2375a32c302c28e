"""The scheduler's input and output values: a snapshot of each GPU (memory in MiB), demands,
running engines, placements, its limits, and the GPU capacity rule. Pure data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

MIB = 1024 * 1024


@dataclass(frozen=True)
class GPUInfo:
    """One GPU now (the seed's GPUInfo). Memory in MiB."""

    device_id: int
    name: str
    memory_total: int
    memory_used: int = 0
    memory_free: int = 0
    utilization: float | None = None
    """percent, 0..100"""
    temperature: float | None = None
    """degrees Celsius"""
    power: float | None = None
    """watts"""
    unmanaged_mb: int = 0
    """memory used by processes the reconciler does not manage"""


Policy = Literal["spread", "pack"]

MAX_PRIORITY = 10
EXACT_VICTIM_SUBSETS = 4096
"""Victim sets are searched exhaustively up to this many combinations, greedily beyond."""
LOOKAHEAD_GPUS = 16
"""Placement looks ahead on hosts with at most this many GPUs (a server); beyond, it does not."""
LOOKAHEAD_MODELS = 16
"""How many of the models to come a look-ahead tries to fit."""
LOOKAHEAD_OPTIONS = 64
"""How many GPU choices a look-ahead compares, best fit first."""
LOOKAHEAD_STEPS = 50_000
"""Trial placements a pass may spend looking ahead; then it places without (bounded time)."""

MEMORY_UNKNOWN = "GPU memory requirement unknown: set resource_requirements.gpu_memory_mb"
AFTER_PREEMPTING = " after preempting every lower priority"


@dataclass(frozen=True, slots=True)
class Demand:
    """A model the desired state asks for (enabled) or may need as a fallback (disabled)."""

    id: str
    priority: int
    gpu_count: int = 1
    memory_mb: int | None = None
    """MiB per GPU; None = unknown, which makes a GPU model unschedulable."""
    pinned: tuple[int, ...] = ()
    port: int | None = None
    """A fixed port; None = one from the port range."""
    fallback: str | None = None
    enabled: bool = True
    blocked: str | None = None
    """Why the model must not be placed now (e.g. retries exhausted); its fallback runs instead."""

    @property
    def gpus_needed(self) -> int:
        return len(self.pinned) if self.pinned else self.gpu_count


@dataclass(frozen=True, slots=True)
class Running:
    """An engine that holds GPUs and a port now."""

    id: str
    gpus: tuple[int, ...]
    memory_mb: int
    """Reservation per GPU, in MiB."""
    port: int | None
    reusable: bool = True
    """The engine matches the current spec, pin and gpu_count: it may stay where it is."""


@dataclass(frozen=True, slots=True)
class GpuCapacity:
    index: int
    capacity_mb: int
    """Memory our engines may use: total - reserved - used by processes we do not manage."""


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    gpus: tuple[int, ...]
    memory_mb: int
    port: int | None
    priority: int
    """Effective priority: a fallback runs at max(primary priority, its own)."""
    fallback_for: str | None = None


@dataclass(frozen=True, slots=True)
class Schedule:
    placements: dict[str, Placement]
    preempted: dict[str, str]
    """victim id -> id of the model it was preempted for (a victim may be placed again)."""
    unschedulable: dict[str, str]
    """model id -> why it cannot be placed (victims are listed in `preempted` instead)."""


def capacities(gpus: Sequence[GPUInfo], reserved_mb: int = 0) -> list[GpuCapacity]:
    """Per-GPU memory our engines may use, sorted by index."""
    return [
        GpuCapacity(g.device_id, max(0, g.memory_total - reserved_mb - g.unmanaged_mb))
        for g in sorted(gpus, key=lambda g: g.device_id)
    ]


def by_id(item: Demand | Running) -> str:
    return item.id


def turn_order(d: Demand) -> tuple[int, str]:
    """Highest priority first, ties by id."""
    return (-d.priority, d.id)


def names(indexes: Iterable[int]) -> str:
    return ", ".join(map(str, indexes))


@dataclass(slots=True, eq=False)
class Entry:
    """A model holding GPUs during a pass: reserved (pending until its turn) or confirmed."""

    id: str
    gpus: tuple[int, ...]
    memory_mb: int
    port: int | None
    priority: int
    standby: bool = False
    confirmed: bool = False
    fallback_for: str | None = None
