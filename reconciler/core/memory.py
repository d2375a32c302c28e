"""GPU memory that learns: what the planner reserves for a model, and why. Pure arithmetic.

An estimate from the model's files is a guess made before the engine ever ran; once an engine of
the same spec (same spec hash) has run here, what it was measured to use is better evidence in
both directions: an over-estimate frees room, an under-estimate stops overbooking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

LEARNED_MARGIN = 0.10
"""Reserved on top of the measured peak, as a fraction of it. One run's peak is a sample, not a
bound: llama.cpp's compute buffers and vLLM's activations grow with batch size and prompt length,
and a later run can hit a larger batch than the one measured; allocator fragmentation adds a few
per cent on long-running engines. 10 % covers what we saw between idle and loaded runs."""

LEARNED_MARGIN_MIN_MB = 64
"""At least this much margin: small models' peaks move by tens of MiB between runs (thread-local
buffers, tokenizer caches), which a percentage of a few hundred MiB does not cover."""

Basis = Literal["declared", "measured", "estimated", "unknown"]


@dataclass(frozen=True)
class MemoryFigures:
    """What is known of one model's memory for one spec hash, in MiB per GPU."""

    estimated_mb: int | None = None
    measured_mb: int | None = None
    """the latest measurement of a running engine"""
    peak_mb: int | None = None
    """the largest measurement since this spec hash first ran"""
    measured_by: str | None = None
    """"nvml" (GPU memory of the engine's process tree) or "rss" (resident memory standing in on
    declared GPUs)"""


@dataclass(frozen=True)
class Reservation:
    """What the planner reserves per GPU, which figure that is, and why."""

    mb: int | None
    basis: Basis
    reason: str


def with_margin(peak_mb: int) -> int:
    return peak_mb + max(math.ceil(peak_mb * LEARNED_MARGIN), LEARNED_MARGIN_MIN_MB)


def reservation(declared_mb: int | None, figures: MemoryFigures | None) -> Reservation:
    """The operator's number wins; else the learned peak plus margin; else the estimate.

    A declared `gpu_memory_mb` is the operator's decision (they may know of load we never saw),
    so learning never overrides it; `grown_past` still reports when an engine outgrows it.
    """
    if declared_mb is not None:
        return Reservation(declared_mb, "declared", "resource_requirements.gpu_memory_mb")
    figures = figures or MemoryFigures()
    if figures.peak_mb is not None:
        reserved = with_margin(figures.peak_mb)
        how = "GPU memory" if figures.measured_by == "nvml" else "resident memory"
        estimate = (
            f"; the estimate was {figures.estimated_mb} MiB"
            if figures.estimated_mb is not None
            else ""
        )
        return Reservation(
            reserved,
            "measured",
            f"measured peak {figures.peak_mb} MiB ({how}) + margin{estimate}",
        )
    if figures.estimated_mb is not None:
        return Reservation(figures.estimated_mb, "estimated", "estimated from the model's files")
    return Reservation(None, "unknown", "no estimate and no measurement")


def record_measurement(
    figures: MemoryFigures | None, measured_mb: int, measured_by: str
) -> MemoryFigures:
    """A new measurement of a running engine: the latest figure, and the peak so far."""
    figures = figures or MemoryFigures()
    peak = measured_mb if figures.peak_mb is None else max(figures.peak_mb, measured_mb)
    return MemoryFigures(figures.estimated_mb, measured_mb, peak, measured_by)


def grown_past(reserved_mb: int | None, measured_mb: int | None) -> bool:
    """True when an engine uses more than the planner reserved for it: the host is overbooked."""
    return reserved_mb is not None and measured_mb is not None and measured_mb > reserved_mb
