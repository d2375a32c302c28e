"""A snapshot of one GPU, as the planner reads it. Memory in MiB."""

from __future__ import annotations

from dataclasses import dataclass

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
