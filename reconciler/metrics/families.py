"""The live metric families, built afresh on each scrape from the daemon's sources."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from reconciler.core.instance import OCCUPYING, InstanceRecord, Status
from reconciler.core.schedule.values import MIB, GPUInfo
from reconciler.state.statefile import State


class DesiredSnapshot(NamedTuple):
    """What `desired()` returns (a plain 4-tuple in this order works as well)."""

    valid: bool
    """the desired state as last loaded is valid"""
    revision: str | None
    """the revision in force (the last valid one while the current one is invalid)"""
    priorities: Mapping[str, int]
    """model id -> priority, for every model of the desired state in force"""
    unschedulable: int
    """models that the last plan could not place"""


class Families:
    """Fresh, empty metric families for one scrape (families are not reusable)."""

    def __init__(self) -> None:
        self.status = GaugeMetricFamily(
            "reconciler_model_status",
            "1 for the model's current status, 0 for the other statuses.",
            labels=["model", "status"],
        )
        self.priority = GaugeMetricFamily(
            "reconciler_model_priority",
            "Priority of each desired model (1..10, 10 = most important).",
            labels=["model"],
        )
        self.restarts = CounterMetricFamily(
            "reconciler_model_restarts",
            "Restarts of the model's engine after a crash or failed health checks (state file).",
            labels=["model"],
        )
        self.preemptions = CounterMetricFamily(
            "reconciler_model_preemptions",
            "Times the model was stopped to make room for a higher-priority one.",
            labels=["model"],
        )
        self.reserved = GaugeMetricFamily(
            "reconciler_model_gpu_memory_reserved_bytes",
            "GPU memory reserved for the model's engine, per GPU.",
            labels=["model", "gpu"],
        )
        self.memory_estimated = GaugeMetricFamily(
            "reconciler_model_gpu_memory_estimated_bytes",
            "GPU memory per GPU the model's files suggest (weights, KV cache, buffers, context).",
            labels=["model"],
        )
        self.memory_measured = GaugeMetricFamily(
            "reconciler_model_gpu_memory_measured_bytes",
            "Memory the model's engine used at the last measurement (NVML per process tree; "
            "resident memory on declared GPUs).",
            labels=["model"],
        )
        self.gpu_total = GaugeMetricFamily(
            "reconciler_gpu_memory_total_bytes",
            "Total memory of each GPU.",
            labels=["gpu", "name"],
        )
        self.gpu_used = GaugeMetricFamily(
            "reconciler_gpu_memory_used_bytes",
            "Used memory of each GPU (NVML; for declared GPUs, the engines' reservations).",
            labels=["gpu"],
        )
        self.gpu_utilization = GaugeMetricFamily(
            "reconciler_gpu_utilization_ratio",
            "GPU busy time over the last sample period, 0..1 (NVML only).",
            labels=["gpu"],
        )
        self.gpu_temperature = GaugeMetricFamily(
            "reconciler_gpu_temperature_celsius",
            "GPU core temperature (NVML only).",
            labels=["gpu"],
        )
        self.gpu_power = GaugeMetricFamily(
            "reconciler_gpu_power_watts", "GPU power draw (NVML only).", labels=["gpu"]
        )
        self.valid = GaugeMetricFamily(
            "reconciler_desired_state_valid",
            "1 when the desired state as last loaded is valid, 0 when it was rejected.",
        )
        self.revision = GaugeMetricFamily(
            "reconciler_desired_revision_info",
            "The desired-state revision in force (value is always 1).",
            labels=["revision"],
        )
        self.unschedulable = GaugeMetricFamily(
            "reconciler_unschedulable_models",
            "Enabled models the last plan could not place on any GPU.",
        )
        self.last_success = GaugeMetricFamily(
            "reconciler_last_successful_reconcile_timestamp_seconds",
            "Unix time at which the last pass that applied a valid desired state finished.",
        )
        self.notifications = CounterMetricFamily(
            "reconciler_notifications",
            "Notifications by target and outcome (sent, failed, dropped).",
            labels=["target", "outcome"],
        )
        self.source_errors = CounterMetricFamily(
            "reconciler_metrics_source_errors",
            "Scrapes in which a metrics source (state, gpus, desired...) could not be read.",
            labels=["source"],
        )

    def all(self) -> list[Metric]:
        return list(vars(self).values())


def add_memory(families: Families, memory: Mapping[str, tuple[int | None, int | None]]) -> None:
    """model id -> (estimated MiB, measured MiB); a figure not known is left out."""
    for model_id, (estimated, measured) in sorted(memory.items()):
        if estimated is not None:
            families.memory_estimated.add_metric([model_id], estimated * MIB)
        if measured is not None:
            families.memory_measured.add_metric([model_id], measured * MIB)


def desired_snapshot(
    value: tuple[bool, str | None, Mapping[str, int], int] | None,
) -> DesiredSnapshot | None:
    return None if value is None else DesiredSnapshot(*value)


def models_of(state: State | None) -> Mapping[str, InstanceRecord]:
    return state.models if state is not None else {}


def add_models(
    families: Families,
    models: Mapping[str, InstanceRecord],
    priorities: Mapping[str, int],
    preemptions: Mapping[str, int],
) -> None:
    # A desired model that has never run is absent from the state file: it is stopped. A model
    # neither desired nor in the state file is gone: its series end (its preemptions with them).
    for model_id in sorted(set(models) | set(priorities)):
        model = models.get(model_id)
        current = model.status if model is not None else Status.stopped
        for status in Status:
            families.status.add_metric([model_id, status.value], 1.0 if status == current else 0.0)
        if model_id in priorities:
            families.priority.add_metric([model_id], priorities[model_id])
        families.restarts.add_metric([model_id], model.restarts_total if model else 0)
        families.preemptions.add_metric([model_id], preemptions.get(model_id, 0))
        if model is not None and model.status in OCCUPYING:
            for gpu in model.gpus:
                families.reserved.add_metric([model_id, str(gpu)], model.memory_mb * MIB)


def reserved_bytes_by_gpu(models: Mapping[str, InstanceRecord]) -> dict[int, int]:
    reserved: Tally[int] = Tally()
    for model in models.values():
        if model.status in OCCUPYING:
            for gpu in model.gpus:
                reserved[gpu] += model.memory_mb * MIB
    return dict(reserved)


def add_gpus(
    families: Families, gpus: Sequence[GPUInfo], reserved: Mapping[int, int], declared: bool
) -> None:
    for gpu in sorted(gpus, key=lambda g: g.device_id):
        index = str(gpu.device_id)
        families.gpu_total.add_metric([index, gpu.name], gpu.memory_total * MIB)
        # A declared GPU is simulated: the only memory known to be in use is what we reserved.
        used = reserved.get(gpu.device_id, 0) if declared else gpu.memory_used * MIB
        families.gpu_used.add_metric([index], used)
        for family, value in telemetry(families, gpu):
            if value is not None:
                family.add_metric([index], value)


def telemetry(families: Families, gpu: GPUInfo) -> Iterator[tuple[GaugeMetricFamily, float | None]]:
    yield families.gpu_utilization, None if gpu.utilization is None else gpu.utilization / 100
    yield families.gpu_temperature, gpu.temperature
    yield families.gpu_power, gpu.power


def add_desired(families: Families, desired: DesiredSnapshot | None) -> None:
    if desired is None:  # not loaded yet: say nothing rather than "invalid"
        return
    families.valid.add_metric([], 1.0 if desired.valid else 0.0)
    if desired.revision:
        families.revision.add_metric([desired.revision], 1.0)
    families.unschedulable.add_metric([], desired.unschedulable)
