"""Metrics as a dashboard shows them: read back from the text exposition a scrape returns.

The collectors run against a hand-built State and GPU list, so every expected value is what an
operator would read off a Grafana panel: one status at 1 per model, restarts from the state file,
reserved bytes = MiB * 1048576, the revision in force.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Outcome, Plan, invalid_plan
from reconciler.core.schedule.values import GPUInfo
from reconciler.metrics import (
    CONTENT_TYPE,
    DesiredSnapshot,
    ReconcilerMetrics,
    render,
    snapshot_from_plan,
)
from reconciler.state.statefile import State

MIB = 1048576
REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy/grafana/reconciler-dashboard.json"
ALERTS = REPO / "deploy/prometheus/alerts.yml"

Sample = tuple[str, frozenset[tuple[str, str]]]


def a_state() -> State:
    return State(
        revision="4f2a9c1",
        models={
            # restarts: 1 in a row now, 7 over the model's life: dashboards show the 7
            "qwen2-7b": InstanceRecord(
                "qwen2-7b", Status.running, gpus=(0, 1), memory_mb=20000, restarts=1,
                restarts_total=7,
            ),
            "gemma": InstanceRecord("gemma", Status.starting, gpus=(1,), memory_mb=917),
            # preempted: the GPU it had is remembered, but it holds no memory any more
            "small": InstanceRecord("small", Status.preempted, gpus=(0,), memory_mb=4000),
            "broken": InstanceRecord("broken", Status.error, restarts_total=5, given_up=True),
        },
    )  # fmt: skip


def nvml_gpus() -> list[GPUInfo]:
    return [
        GPUInfo(0, "NVIDIA A100 80GB", 81920, 30000, 51920, 42.0, 61.0, 250.5),
        GPUInfo(1, "NVIDIA A100 80GB", 81920, 21000, 60920, None, None, None),
    ]


def desired(
    valid: bool = True, revision: str | None = "4f2a9c1", unschedulable: int = 0
) -> DesiredSnapshot:
    priorities = {"qwen2-7b": 8, "gemma": 5, "small": 2, "broken": 3, "never-ran": 1}
    return DesiredSnapshot(valid, revision, priorities, unschedulable)


def make(
    state: Callable[[], State | None] = a_state,
    gpus: Callable[[], list[GPUInfo]] = nvml_gpus,
    snapshot: Callable[[], Any] = desired,
    **kwargs: Any,
) -> tuple[CollectorRegistry, ReconcilerMetrics]:
    registry = CollectorRegistry()
    metrics = ReconcilerMetrics(registry, state=state, gpus=gpus, desired=snapshot, **kwargs)
    return registry, metrics


def scrape(registry: CollectorRegistry) -> dict[Sample, float]:
    """Every sample of the exposition, keyed by (name, labels)."""
    text = render(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Mapping[Sample, float], metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def series(samples: Mapping[Sample, float], name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


# ---- models -------------------------------------------------------------------------------


def test_status_is_one_hot_over_every_status_value() -> None:
    samples = scrape(make()[0])
    expected = {
        "qwen2-7b": "running",
        "gemma": "starting",
        "small": "preempted",
        "broken": "error",
        "never-ran": "stopped",  # desired but absent from the state file
    }
    for model, current in expected.items():
        row = {s.value: value(samples, "reconciler_model_status", model=model, status=s.value)
               for s in Status}  # fmt: skip
        assert row == {s.value: 1.0 if s.value == current else 0.0 for s in Status}, model


def test_priority_of_desired_models() -> None:
    samples = scrape(make()[0])
    assert value(samples, "reconciler_model_priority", model="qwen2-7b") == 8
    assert value(samples, "reconciler_model_priority", model="never-ran") == 1


def test_a_model_no_longer_desired_keeps_its_status_but_has_no_priority() -> None:
    registry, _ = make(snapshot=lambda: DesiredSnapshot(True, "x", {"gemma": 5}, 0))
    samples = scrape(registry)
    assert value(samples, "reconciler_model_status", model="qwen2-7b", status="running") == 1
    assert value(samples, "reconciler_model_priority", model="qwen2-7b") is None


def test_restarts_come_from_the_state_file_total() -> None:
    samples = scrape(make()[0])
    assert value(samples, "reconciler_model_restarts_total", model="qwen2-7b") == 7
    assert value(samples, "reconciler_model_restarts_total", model="broken") == 5
    assert value(samples, "reconciler_model_restarts_total", model="never-ran") == 0


def test_restarts_survive_a_daemon_restart() -> None:
    before = scrape(make()[0])
    after = scrape(make()[0])  # a new process: fresh registry, same state file
    name = "reconciler_model_restarts_total"
    assert series(after, name) == series(before, name)


def test_reserved_bytes_per_model_and_gpu_for_engines_that_hold_memory() -> None:
    samples = scrape(make()[0])
    assert series(samples, "reconciler_model_gpu_memory_reserved_bytes") == {
        frozenset({("model", "qwen2-7b"), ("gpu", "0")}): 20000 * MIB,
        frozenset({("model", "qwen2-7b"), ("gpu", "1")}): 20000 * MIB,
        frozenset({("model", "gemma"), ("gpu", "1")}): 917 * MIB,
    }  # not the preempted model, whose GPU is only remembered


def test_preemptions_are_counted_from_events_with_zero_for_the_others() -> None:
    registry, metrics = make()
    for _ in range(2):
        metrics.record_event({"time": 1.0, "kind": "preempt", "model": "small", "message": "x"})
    samples = scrape(registry)
    assert value(samples, "reconciler_model_preemptions_total", model="small") == 2
    assert value(samples, "reconciler_model_preemptions_total", model="gemma") == 0


def test_ready_seconds_histogram_from_the_event_field_not_its_message() -> None:
    registry, metrics = make()
    metrics.record_event({"kind": "ready", "model": "gemma", "message": "ok", "seconds": 4.0})
    metrics.record_event({"kind": "ready", "model": "gemma", "message": "", "seconds": 40.5})
    metrics.record_event({"kind": "ready", "model": "gemma", "message": "ready after 9.0s"})
    samples = scrape(registry)
    assert value(samples, "reconciler_model_ready_seconds_count", model="gemma") == 2
    assert value(samples, "reconciler_model_ready_seconds_sum", model="gemma") == 44.5
    assert value(samples, "reconciler_model_ready_seconds_bucket", model="gemma", le="5.0") == 1
    assert value(samples, "reconciler_model_ready_seconds_bucket", model="gemma", le="60.0") == 2


def test_events_are_counted_by_kind_and_malformed_ones_are_ignored() -> None:
    registry, metrics = make()
    metrics.record_event({"kind": "crashed", "model": "gemma", "message": "exit 1"})
    metrics.record_event({"kind": "desired-invalid", "model": None, "message": "2 problems"})
    for junk in ({}, {"kind": 5}, "not a dict", {"kind": "ready", "model": "gemma"}):
        metrics.record_event(junk)  # type: ignore[arg-type]
    samples = scrape(registry)
    assert value(samples, "reconciler_events_total", kind="crashed") == 1
    assert value(samples, "reconciler_events_total", kind="desired-invalid") == 1
    assert value(samples, "reconciler_events_total", kind="gave-up") == 0  # exported from start
    assert value(samples, "reconciler_model_ready_seconds_count", model="gemma") is None


# ---- GPUs ---------------------------------------------------------------------------------


def test_nvml_gpus_export_memory_and_the_telemetry_they_have() -> None:
    samples = scrape(make()[0])
    name = "NVIDIA A100 80GB"
    assert value(samples, "reconciler_gpu_memory_total_bytes", gpu="0", name=name) == 81920 * MIB
    assert value(samples, "reconciler_gpu_memory_used_bytes", gpu="0") == 30000 * MIB
    assert value(samples, "reconciler_gpu_memory_used_bytes", gpu="1") == 21000 * MIB
    assert value(samples, "reconciler_gpu_utilization_ratio", gpu="0") == 0.42
    assert value(samples, "reconciler_gpu_temperature_celsius", gpu="0") == 61
    assert value(samples, "reconciler_gpu_power_watts", gpu="0") == 250.5
    for metric in ("utilization_ratio", "temperature_celsius", "power_watts"):
        assert value(samples, f"reconciler_gpu_{metric}", gpu="1") is None  # not reported


def test_declared_gpus_count_our_reservations_as_used() -> None:
    declared = [GPUInfo(0, "Simulated L4", 23034, 0, 23034), GPUInfo(1, "Simulated L4", 23034)]
    registry, _ = make(gpus=lambda: declared, gpus_declared=lambda: True)
    samples = scrape(registry)
    assert value(samples, "reconciler_gpu_memory_used_bytes", gpu="0") == 20000 * MIB
    assert value(samples, "reconciler_gpu_memory_used_bytes", gpu="1") == (20000 + 917) * MIB
    assert series(samples, "reconciler_gpu_temperature_celsius") == {}


# ---- desired state and the loop -----------------------------------------------------------


def test_valid_desired_state_revision_and_unschedulable() -> None:
    registry, _ = make(snapshot=lambda: desired(unschedulable=2))
    samples = scrape(registry)
    assert value(samples, "reconciler_desired_state_valid") == 1
    assert series(samples, "reconciler_desired_revision_info") == {
        frozenset({("revision", "4f2a9c1")}): 1.0
    }
    assert value(samples, "reconciler_unschedulable_models") == 2


def test_invalid_desired_state_keeps_the_revision_in_force() -> None:
    registry, _ = make(snapshot=lambda: desired(valid=False))
    samples = scrape(registry)
    assert value(samples, "reconciler_desired_state_valid") == 0
    assert value(samples, "reconciler_desired_revision_info", revision="4f2a9c1") == 1


def test_a_plain_tuple_is_a_desired_snapshot_too() -> None:
    registry, _ = make(snapshot=lambda: (False, None, {}, 0))
    samples = scrape(registry)
    assert value(samples, "reconciler_desired_state_valid") == 0
    assert series(samples, "reconciler_desired_revision_info") == {}


def test_nothing_is_said_about_a_desired_state_not_loaded_yet() -> None:
    registry, _ = make(state=lambda: None, snapshot=lambda: None)
    samples = scrape(registry)
    assert series(samples, "reconciler_desired_state_valid") == {}
    assert series(samples, "reconciler_model_status") == {}


def test_the_snapshot_of_a_plan() -> None:
    plan = Plan(
        "4f2a9c1",
        True,
        unschedulable=(("big", "needs 90000 MiB on one GPU"),),
        models={
            "big": Outcome("big", Status.stopped, priority=9),
            "gemma": Outcome("gemma", Status.running, (0,), 917, 8100, 5),
            "gone": Outcome("gone", Status.stopped, reason="removed from desired state"),
        },
    )
    expected = DesiredSnapshot(True, "4f2a9c1", {"big": 9, "gemma": 5}, 1)
    assert snapshot_from_plan(plan) == expected
    assert snapshot_from_plan(invalid_plan(None, [])) == DesiredSnapshot(False, None, {}, 0)
    assert snapshot_from_plan(None) is None


def test_passes_are_counted_by_result_and_only_ok_moves_the_last_success() -> None:
    now = [1000.0]
    registry, metrics = make(clock=lambda: now[0])
    samples = scrape(registry)
    assert value(samples, "reconciler_reconcile_total", result="error") == 0
    assert series(samples, "reconciler_last_successful_reconcile_timestamp_seconds") == {}
    metrics.record_pass(0.2, "ok")
    now[0] = 1060.0
    metrics.record_pass(0.1, "invalid")
    metrics.record_pass(3.0, "error")
    samples = scrape(registry)
    assert value(samples, "reconciler_reconcile_total", result="ok") == 1
    assert value(samples, "reconciler_reconcile_total", result="invalid") == 1
    assert value(samples, "reconciler_reconcile_total", result="error") == 1
    assert value(samples, "reconciler_reconcile_duration_seconds_count") == 3
    assert value(samples, "reconciler_reconcile_duration_seconds_bucket", le="0.25") == 2
    assert value(samples, "reconciler_last_successful_reconcile_timestamp_seconds") == 1000.0


def test_an_unknown_pass_result_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown pass result"):
        make()[1].record_pass(1.0, "fine")


def test_notification_counts_are_exported() -> None:
    counts = {("slack-0", "sent"): 3, ("slack-0", "dropped"): 1}
    registry, _ = make(notifications=lambda: counts)
    samples = scrape(registry)
    assert value(samples, "reconciler_notifications_total", target="slack-0", outcome="sent") == 3
    assert (
        value(samples, "reconciler_notifications_total", target="slack-0", outcome="dropped") == 1
    )


# ---- robustness ---------------------------------------------------------------------------


def test_a_failing_source_costs_its_metrics_not_the_scrape() -> None:
    def broken_nvml() -> list[GPUInfo]:
        raise RuntimeError("NVML failed while reading the GPUs")

    registry, _ = make(gpus=broken_nvml)
    samples = scrape(registry)
    assert series(samples, "reconciler_gpu_memory_total_bytes") == {}
    assert value(samples, "reconciler_model_status", model="qwen2-7b", status="running") == 1
    assert value(samples, "reconciler_metrics_source_errors_total", source="gpus") == 1
    assert value(samples, "reconciler_metrics_source_errors_total", source="state") == 0


def test_registering_does_not_call_the_sources() -> None:
    def not_yet() -> Any:
        raise AssertionError("called at registration")

    registry = CollectorRegistry()
    ReconcilerMetrics(registry, state=not_yet, gpus=not_yet, desired=not_yet)
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # names are known, though
        ReconcilerMetrics(registry, state=not_yet, gpus=not_yet, desired=not_yet)


def test_render_is_the_text_exposition() -> None:
    text = render(make()[0])
    assert isinstance(text, bytes)
    assert b"# TYPE reconciler_model_status gauge" in text
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


# ---- deploy/ uses only metrics that exist -------------------------------------------------


def full_exposition() -> set[str]:
    """Names of every sample a busy reconciler exports: each family has at least one series."""
    registry, metrics = make(notifications=lambda: {("webhook-0", "sent"): 1})
    metrics.record_event({"kind": "ready", "model": "gemma", "message": "", "seconds": 3.0})
    metrics.record_event({"kind": "preempt", "model": "small", "message": ""})
    metrics.record_pass(0.1, "ok")
    return {name for name, _ in scrape(registry)}


METRIC_NAME = re.compile(r"\breconciler_[a-zA-Z0-9_]*[a-zA-Z0-9]")


def dashboard_queries(node: Any) -> list[str]:
    """Every PromQL string of a Grafana dashboard: panel targets and template variables."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("expr", "query") and isinstance(v, str)]
        return found + [q for v in node.values() for q in dashboard_queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in dashboard_queries(v)]
    return []


def test_every_dashboard_query_uses_only_exported_metrics() -> None:
    queries = dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    assert len(queries) >= 15
    exported = full_exposition()
    used = {name for q in queries for name in METRIC_NAME.findall(q)}
    assert used - exported == set()
    # and the dashboard shows every model and GPU family, not a subset
    families = {n for n in exported if n.startswith(("reconciler_model_", "reconciler_gpu_"))}
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in families} - shown == set()


def test_every_alert_uses_only_exported_metrics() -> None:
    rules = YAML(typ="safe").load(ALERTS.read_text(encoding="utf-8"))
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    assert used
    assert used - full_exposition() == set()
