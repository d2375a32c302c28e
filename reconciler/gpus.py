"""GPU inventory: one snapshot type, two sources (declared in cluster.yaml, or NVML).

The dataclass and the declared source are pure; the NVML source imports pynvml lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.spec import ClusterSpec


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


class InventoryError(Exception):
    """The GPU inventory cannot be read; the message says how to fix it."""


def declared(cluster: ClusterSpec) -> list[GPUInfo]:
    """The simulated inventory of cluster.yaml's `gpus:` list."""
    if cluster.gpus == "auto":
        raise InventoryError("cluster.yaml says `gpus: auto`: read the inventory through NVML")
    return [
        GPUInfo(g.index, g.name, g.memory_mb, 0, g.memory_mb)
        for g in sorted(cluster.gpus, key=lambda g: g.index)
    ]
