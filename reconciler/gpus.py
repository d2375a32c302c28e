"""GPU inventory: one snapshot type, two sources (declared in cluster.yaml, or NVML).

The dataclass and the declared source are pure; the NVML source imports pynvml lazily, so that
hosts without an NVIDIA driver (CI, laptops, PR review) never touch the library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any, Protocol

import psutil

from reconciler.core.cluster import ClusterSpec
from reconciler.core.schedule.values import MIB, GPUInfo


class InventoryError(Exception):
    """The GPU inventory cannot be read; the message says how to fix it."""


DECLARE_HINT = """\
To run without NVML, declare the GPUs in desired-state/cluster.yaml, for example:

  gpus:
    - {index: 0, name: NVIDIA A100 80GB, memory_mb: 81920}
    - {index: 1, name: NVIDIA A100 80GB, memory_mb: 81920}

(a declared inventory is simulated: nothing checks that these GPUs exist)."""


def inventory(cluster: ClusterSpec, managed_pids: Collection[int] = ()) -> list[GPUInfo]:
    """The GPUs of this host: declared in cluster.yaml, or read through NVML for `gpus: auto`."""
    if cluster.gpus != "auto":
        return declared(cluster)
    try:
        return read_nvml(managed_pids)
    except InventoryError as exc:
        message = f"cluster.yaml says `gpus: auto`, but {exc}\n\n{DECLARE_HINT}"
        raise InventoryError(message) from exc


def declared(cluster: ClusterSpec) -> list[GPUInfo]:
    """The simulated inventory of cluster.yaml's `gpus:` list."""
    if cluster.gpus == "auto":
        raise InventoryError("cluster.yaml says `gpus: auto`: read the inventory through NVML")
    return [
        GPUInfo(g.index, g.name, g.memory_mb, 0, g.memory_mb)
        for g in sorted(cluster.gpus, key=lambda g: g.index)
    ]


def read_nvml(managed_pids: Collection[int] = ()) -> list[GPUInfo]:
    """Every GPU NVML sees, with the memory used by processes outside `managed_pids`.

    `managed_pids` are the pids we started; their descendants are ours too, since the process
    holding a CUDA context is not always the one we started (vLLM runs its GPU work in worker
    processes, a wrapper script execs or forks the server). Docker engines have their own pids.
    NVML reports host pids, so a reconciler inside a container without the host pid namespace
    sees none of its engines as managed (conservative: more is counted as used by others).
    """
    ours = with_descendants(managed_pids)
    pynvml = _nvml_session_start()
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [_read_device(pynvml, index, ours) for index in range(count)]
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML failed while reading the GPUs: {exc}") from exc
    finally:
        _nvml_shutdown(pynvml)


def with_descendants(pids: Collection[int]) -> frozenset[int]:
    """`pids` and every live process below them."""
    found = set(pids)
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:  # exited since it was observed, or not ours to look at
            continue
    return frozenset(found)


def _nvml_session_start() -> ModuleType:
    """Import pynvml and initialise NVML, turning a missing driver into an InventoryError."""
    try:
        import pynvml
    except ImportError as exc:  # a broken install, not a GPU-less host: nvidia-ml-py is a dep
        raise InventoryError(
            f"the NVML bindings are not installed ({exc}): pip install nvidia-ml-py"
        ) from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise InventoryError(_init_failure_message(pynvml, exc)) from exc
    return pynvml


def _init_failure_message(pynvml: ModuleType, exc: Exception) -> str:
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return (
            "NVML is not available on this host (libnvidia-ml.so.1 not found: "
            "no NVIDIA driver installed, or not visible in this container)"
        )
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "the NVIDIA driver is installed but not loaded (is the kernel module loaded?)"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "NVML refused access to the GPUs (insufficient permissions on /dev/nvidia*)"
    return f"NVML could not be initialised: {exc}"


def _nvml_shutdown(pynvml: ModuleType) -> None:
    # A failing shutdown must not hide the inventory (or the error) we already have.
    with contextlib.suppress(pynvml.NVMLError):
        pynvml.nvmlShutdown()


def _read_device(pynvml: ModuleType, index: int, managed_pids: frozenset[int]) -> GPUInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    used_mb = memory.used // MIB
    return GPUInfo(
        device_id=index,
        name=pynvml.nvmlDeviceGetName(handle),
        memory_total=memory.total // MIB,
        memory_used=used_mb,
        memory_free=memory.free // MIB,
        utilization=_optional(pynvml, lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        temperature=_optional(
            pynvml,
            # The unversioned call works with every driver; nvmlDeviceGetTemperatureV needs R530+.
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        ),
        power=_optional(pynvml, lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000),  # mW
        unmanaged_mb=_unmanaged_mb(pynvml, handle, used_mb, managed_pids),
    )


def _optional(pynvml: ModuleType, read: Callable[[], float]) -> float | None:
    """A telemetry value, or None when the GPU does not report it.

    Telemetry is display-only, so any NVML error (typically NotSupported on some boards and in
    vGPU guests) gives None rather than failing the inventory that scheduling needs.
    """
    try:
        return float(read())
    except pynvml.NVMLError:
        return None


def _unmanaged_mb(
    pynvml: ModuleType, handle: DeviceHandle, used_mb: int, managed_pids: frozenset[int]
) -> int:
    """Used memory that is not our engines': used minus what NVML attributes to managed pids.

    Subtracting from `used` rather than summing the other processes also counts memory no
    process list shows (driver reservations, processes in other pid namespaces), which is no
    more available to us than another process's. Without per-process information, all used
    memory is taken as unmanaged: conservative, never overcommits.
    """
    managed_bytes = 0
    try:
        for process in _gpu_processes(pynvml, handle):
            if process.pid in managed_pids and process.usedGpuMemory is not None:
                managed_bytes += process.usedGpuMemory
    except pynvml.NVMLError:
        return used_mb
    return max(0, used_mb - managed_bytes // MIB)


class _ProcessInfo(Protocol):
    """What NVML's process list gives per process (its c_nvmlProcessInfo_t structures)."""

    pid: int
    usedGpuMemory: int | None  # bytes; None where NVML reports it not available


DeviceHandle = Any
"""NVML's opaque device pointer: pynvml ships no type for it."""


def _gpu_processes(pynvml: ModuleType, handle: DeviceHandle) -> list[_ProcessInfo]:
    """Compute and graphics processes, one entry per pid (a process can have both contexts).

    usedGpuMemory is the whole process's memory on this GPU, so the larger of the two readings
    is kept, never their sum.
    """
    by_pid: dict[int, _ProcessInfo] = {}
    compute = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    graphics = pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)
    for process in [*compute, *graphics]:
        seen = by_pid.get(process.pid)
        if seen is None or (process.usedGpuMemory or 0) > (seen.usedGpuMemory or 0):
            by_pid[process.pid] = process
    return list(by_pid.values())


def process_memory_mb(pids: Collection[int]) -> dict[int, int]:
    """GPU index -> MiB that NVML attributes to `pids` (an engine's process tree) on that GPU.

    vLLM-like engines run their model in worker processes, so the caller passes the whole tree.
    GPUs where none of the pids holds memory are left out; InventoryError without NVML.
    """
    wanted = frozenset(pids)
    pynvml = _nvml_session_start()
    try:
        usage: dict[int, int] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            used = sum(
                p.usedGpuMemory or 0 for p in _gpu_processes(pynvml, handle) if p.pid in wanted
            )
            if used:
                usage[index] = used // MIB
        return usage
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML failed while reading process memory: {exc}") from exc
    finally:
        _nvml_shutdown(pynvml)
