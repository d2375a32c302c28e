"""GPU inventory: declared GPUs, the no-NVML error, and NVML read through a fake C library.

The fake replaces only libnvidia-ml.so itself (pynvml.nvmlLib): every pynvml wrapper, struct
and error class above it is the real one, so the tests check how we call the real bindings. The
processes it reports as holding GPU memory are real ones (a parent and its descendants), since
which of them count as ours is decided from the live process tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pynvml
import pytest

from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.schedule.values import GPUInfo
from reconciler.gpus import InventoryError, declared, inventory, read_nvml

MIB = 1024 * 1024


def nvml_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


# ---- declared inventory -------------------------------------------------------------------


def test_declared_gpus_are_sorted_by_index_and_fully_free():
    cluster = ClusterSpec(
        gpus=[
            DeclaredGPU(index=1, name="B", memory_mb=24576),
            DeclaredGPU(index=0, name="A", memory_mb=81920),
        ]
    )
    gpus = inventory(cluster)
    assert gpus == [
        GPUInfo(0, "A", 81920, 0, 81920),
        GPUInfo(1, "B", 24576, 0, 24576),
    ]
    assert declared(cluster) == gpus


def test_declared_refuses_auto():
    with pytest.raises(InventoryError, match="NVML"):
        declared(ClusterSpec(gpus="auto"))


# ---- no NVML on this host -----------------------------------------------------------------


@pytest.mark.skipif(nvml_present(), reason="this host has an NVIDIA driver")
def test_auto_without_nvml_says_how_to_declare_gpus():
    with pytest.raises(InventoryError) as caught:
        inventory(ClusterSpec(gpus="auto"))
    message = str(caught.value)
    assert "libnvidia-ml.so.1 not found" in message
    assert "desired-state/cluster.yaml" in message
    assert "gpus:\n    - {index: 0" in message
    assert "memory_mb:" in message
    # The snippet must be a valid cluster.yaml: an operator copies it as is.
    from ruamel.yaml import YAML

    snippet = message[message.index("  gpus:") :].split("\n\n")[0]
    ClusterSpec.model_validate(YAML(typ="safe").load(snippet))


@pytest.mark.skipif(nvml_present(), reason="this host has an NVIDIA driver")
def test_read_nvml_without_driver_is_an_inventory_error_not_a_traceback():
    with pytest.raises(InventoryError, match="NVML is not available"):
        read_nvml()


# ---- a fake libnvidia-ml.so ---------------------------------------------------------------

SUCCESS = pynvml.NVML_SUCCESS
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
INSUFFICIENT_SIZE = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
NOT_AVAILABLE = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value


@dataclass
class FakeDevice:
    name: str
    total: int
    used: int
    compute: list[tuple[int, int]] = field(default_factory=list)
    """(pid, bytes) of compute processes; bytes may be NOT_AVAILABLE"""
    graphics: list[tuple[int, int]] = field(default_factory=list)
    utilization: int | None = 40
    temperature: int | None = 55
    power_mw: int | None = 250_000
    processes_error: int | None = None
    """an NVML return code for the process queries (e.g. NO_PERMISSION)"""


class FakeNvmlLibrary:
    """The C functions pynvml calls, with the C calling convention (out-parameters by ref)."""

    def __init__(self, devices: list[FakeDevice], init_error: int | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.initialised = 0

    # pynvml passes byref(x) for out-parameters; byref(x)._obj is x.
    def _index(self, handle) -> int:
        return ctypes.cast(handle, ctypes.c_void_p).value - 1

    def nvmlInitWithFlags(self, flags):
        if self.init_error is not None:
            return self.init_error
        self.initialised += 1
        return SUCCESS

    def nvmlShutdown(self):
        self.initialised -= 1
        return SUCCESS

    def nvmlDeviceGetCount_v2(self, count_ref):
        count_ref._obj.value = len(self.devices)
        return SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle_ref):
        # A handle is an opaque pointer: store index + 1 so that it is never NULL.
        pointer = handle_ref._obj
        ctypes.c_void_p.from_address(ctypes.addressof(pointer)).value = index.value + 1
        return SUCCESS

    def nvmlDeviceGetName(self, handle, buffer, size):
        buffer.value = self.devices[self._index(handle)].name.encode()
        return SUCCESS

    def nvmlDeviceGetMemoryInfo(self, handle, memory_ref):
        device = self.devices[self._index(handle)]
        memory = memory_ref._obj
        memory.total, memory.used = device.total, device.used
        memory.free = device.total - device.used
        return SUCCESS

    def nvmlDeviceGetUtilizationRates(self, handle, util_ref):
        device = self.devices[self._index(handle)]
        if device.utilization is None:
            return NOT_SUPPORTED
        util_ref._obj.gpu, util_ref._obj.memory = device.utilization, 10
        return SUCCESS

    def nvmlDeviceGetTemperature(self, handle, sensor, temp_ref):
        device = self.devices[self._index(handle)]
        assert sensor.value == pynvml.NVML_TEMPERATURE_GPU
        if device.temperature is None:
            return NOT_SUPPORTED
        temp_ref._obj.value = device.temperature
        return SUCCESS

    def nvmlDeviceGetPowerUsage(self, handle, power_ref):
        device = self.devices[self._index(handle)]
        if device.power_mw is None:
            return NOT_SUPPORTED
        power_ref._obj.value = device.power_mw
        return SUCCESS

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle, count_ref, infos):
        device = self.devices[self._index(handle)]
        return self._processes(device, device.compute, count_ref, infos)

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle, count_ref, infos):
        device = self.devices[self._index(handle)]
        return self._processes(device, device.graphics, count_ref, infos)

    @staticmethod
    def _processes(device, processes, count_ref, infos):
        # NVML's two-call protocol: ask for the count with no buffer, then fill the buffer.
        if device.processes_error is not None:
            return device.processes_error
        if infos is None:
            count_ref._obj.value = len(processes)
            return INSUFFICIENT_SIZE if processes else SUCCESS
        for i, (pid, used) in enumerate(processes):
            infos[i].pid, infos[i].usedGpuMemory = pid, used
        count_ref._obj.value = len(processes)
        return SUCCESS


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install a fake libnvidia-ml.so under the real pynvml; returns a function to set devices."""

    def install(devices: list[FakeDevice], init_error: int | None = None) -> FakeNvmlLibrary:
        library = FakeNvmlLibrary(devices, init_error)
        monkeypatch.setattr(pynvml, "nvmlLib", library)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
        return library

    return install


def test_nvml_reports_memory_in_mib_and_telemetry(fake_nvml):
    library = fake_nvml(
        [
            FakeDevice("NVIDIA H100 80GB HBM3", total=81559 * MIB, used=1000 * MIB),
            FakeDevice(
                "NVIDIA A10", 23028 * MIB, 0, utilization=None, temperature=None, power_mw=None
            ),
        ]
    )
    gpus = read_nvml()
    assert gpus[0] == GPUInfo(
        device_id=0,
        name="NVIDIA H100 80GB HBM3",
        memory_total=81559,
        memory_used=1000,
        memory_free=80559,
        utilization=40.0,
        temperature=55.0,
        power=250.0,
        unmanaged_mb=1000,
    )
    # Telemetry a board does not support is None, and the GPU is still listed.
    assert (gpus[1].utilization, gpus[1].temperature, gpus[1].power) == (None, None, None)
    assert gpus[1].memory_total == 23028
    assert library.initialised == 0, "NVML is shut down after reading"


def test_unmanaged_memory_excludes_only_our_engines(fake_nvml):
    fake_nvml(
        [
            FakeDevice(
                "GPU",
                total=80000 * MIB,
                # 300 MiB the driver keeps and no process list shows
                used=(6000 + 2000 + 500 + 300) * MIB,
                compute=[(101, 6000 * MIB), (202, 2000 * MIB)],
                graphics=[(303, 500 * MIB), (101, 6000 * MIB)],  # 101 has both contexts
            )
        ]
    )
    (gpu,) = read_nvml(managed_pids={101})
    assert gpu.unmanaged_mb == 2000 + 500 + 300
    (gpu,) = read_nvml(managed_pids={101, 202, 303})
    assert gpu.unmanaged_mb == 300
    (gpu,) = read_nvml()
    assert gpu.unmanaged_mb == gpu.memory_used


def test_without_per_process_information_all_used_memory_is_unmanaged(fake_nvml):
    fake_nvml(
        [
            FakeDevice(
                "GPU",
                total=80000 * MIB,
                used=9000 * MIB,
                compute=[(101, 9000 * MIB)],
                processes_error=pynvml.NVML_ERROR_NO_PERMISSION,
            )
        ]
    )
    (gpu,) = read_nvml(managed_pids={101})
    assert gpu.unmanaged_mb == 9000


def test_process_memory_not_available_counts_as_unmanaged(fake_nvml):
    # Windows WDDM reports NVML_VALUE_NOT_AVAILABLE; pynvml turns it into None.
    fake_nvml(
        [FakeDevice("GPU", 80000 * MIB, 4000 * MIB, compute=[(101, NOT_AVAILABLE)])],
    )
    (gpu,) = read_nvml(managed_pids={101})
    assert gpu.unmanaged_mb == 4000


def test_driver_not_loaded_is_a_clear_inventory_error(fake_nvml):
    fake_nvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(InventoryError, match="driver is installed but not loaded"):
        read_nvml()
    with pytest.raises(InventoryError, match=r"gpus:\n    - \{index: 0"):
        inventory(ClusterSpec(gpus="auto"))


def test_auto_reads_nvml(fake_nvml):
    fake_nvml([FakeDevice("GPU", 16000 * MIB, 0)])
    assert [g.memory_total for g in inventory(ClusterSpec(gpus="auto"))] == [16000]


# ---- which processes are ours: an engine's descendants hold the CUDA contexts --------------

# A process that starts a child, which starts its own child, each printing its pid; all sleep
# until killed (vLLM's engine core and workers are such descendants of the pid we start).
ENGINE_TREE = """
import subprocess, sys, time
depth = int(sys.argv[1])
print(__import__("os").getpid(), flush=True)
if depth:
    subprocess.Popen([sys.executable, "-c", sys.argv[2], str(depth - 1), sys.argv[2]])
time.sleep(120)
"""


@pytest.fixture
def engine_tree() -> Iterator[list[int]]:
    """[engine, its child, its grandchild]: real processes, killed afterwards."""
    read, write = os.pipe()
    engine = subprocess.Popen([sys.executable, "-c", ENGINE_TREE, "2", ENGINE_TREE], stdout=write)
    os.close(write)
    pids: list[int] = []
    with os.fdopen(read) as lines:
        for _ in range(3):
            pids.append(int(lines.readline()))
    yield pids
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    engine.wait(10)


def test_an_engines_child_processes_count_as_managed(fake_nvml, engine_tree):
    engine, child, grandchild = engine_tree
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        fake_nvml(
            [
                FakeDevice(
                    "GPU",
                    total=80000 * MIB,
                    used=(6000 + 1500 + 700 + 300) * MIB,
                    # the engine itself holds no context: its descendants do
                    compute=[
                        (child, 6000 * MIB),
                        (grandchild, 1500 * MIB),
                        (stranger.pid, 700 * MIB),
                    ],
                )
            ]
        )
        (gpu,) = read_nvml(managed_pids={engine})
        assert gpu.unmanaged_mb == 700 + 300, "only the stranger and the driver are not ours"
        (gpu,) = read_nvml(managed_pids={grandchild})
        assert gpu.unmanaged_mb == 6000 + 700 + 300, "a process above a managed pid is not ours"
        (gpu,) = read_nvml(managed_pids={stranger.pid})
        assert gpu.unmanaged_mb == 6000 + 1500 + 300
    finally:
        stranger.kill()
        stranger.wait(10)


def test_a_managed_pid_that_exited_is_ignored(fake_nvml):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    fake_nvml([FakeDevice("GPU", 80000 * MIB, 4000 * MIB, compute=[(424242, 4000 * MIB)])])
    (gpu,) = read_nvml(managed_pids={gone.pid})
    assert gpu.unmanaged_mb == 4000
