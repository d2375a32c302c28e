"""What an engine really uses: its process tree's GPU memory (NVML) or, on declared GPUs, its
resident memory standing in for it (a CPU engine's weights and KV cache live there)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from reconciler.core.gpu import MIB
from reconciler.gpus import InventoryError, process_memory_mb


@dataclass(frozen=True)
class Usage:
    mb: int
    """MiB per GPU: the largest of the engine's GPUs (reservations are per GPU)"""
    measured_by: str
    """"nvml" or "rss" """


def tree_pids(pid: int) -> list[int]:
    """The engine's process and all its descendants (vLLM's workers are children)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def measure(pid: int, *, declared_gpus: bool) -> Usage | None:
    """The engine's memory now, or None when it is gone or NVML shows none of its processes."""
    pids = tree_pids(pid)
    if not pids:
        return None
    if declared_gpus:
        return _resident(pids)
    try:
        per_gpu = process_memory_mb(pids)
    except InventoryError:
        return None
    return Usage(max(per_gpu.values()), "nvml") if per_gpu else None


def _resident(pids: list[int]) -> Usage | None:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return Usage(round(total / MIB), "rss") if total else None
