"""One scenario per scheduling rule: tests/scenarios/*.yaml, each a small readable fixture.

A fixture has `rule` (what it shows), `cluster` (gpus with optional unmanaged_mb, placement,
reserved_memory_mb, port_range), `models` (spec fields; `memory_mb` and `gpu_count` are short for
resource_requirements), `observed` (what runs; `spec_hash` defaults to matching) and `expect`:
the exact `actions` and `unschedulable`, and optionally `status` per model and `gpus`.
Every scenario must also converge: planning again after the plan's actions are carried out
(planner_oracle.apply_plan, not the planner's own converged_observed) changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from planner_oracle import apply_plan
from ruamel.yaml import YAML

from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Plan, make_plan, render_json
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.spec import ModelSpec

SCENARIOS = Path(__file__).parent.parent / "scenarios"
FILES = sorted(SCENARIOS.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    return YAML(typ="safe").load(path.read_text())


def model(entry: dict[str, Any]) -> ModelSpec:
    fields = dict(entry)
    requirements = {
        "gpu_count": fields.pop("gpu_count", 1),
        "gpu_memory_mb": fields.pop("memory_mb", None),
    }
    fields.setdefault("framework", "llama_cpp")
    fields.setdefault("model_path", f"/models/{fields['id']}.gguf")
    return ModelSpec(resource_requirements=requirements, **fields)


def world(
    scenario: dict[str, Any],
) -> tuple[DesiredState, dict[str, InstanceRecord], list[GPUInfo], dict[str, int | None]]:
    cluster = dict(scenario["cluster"])
    gpus = cluster.pop("gpus")
    spec = ClusterSpec(
        gpus=[DeclaredGPU(index=g["index"], memory_mb=g["memory_mb"]) for g in gpus], **cluster
    )
    inventory = [
        GPUInfo(g["index"], "Simulated GPU", g["memory_mb"], unmanaged_mb=g.get("unmanaged_mb", 0))
        for g in gpus
    ]
    models = {m["id"]: model(m) for m in scenario["models"]}
    observed = {}
    for entry in scenario.get("observed", []):
        fields = dict(entry, status=Status(entry["status"]), gpus=tuple(entry.get("gpus", ())))
        observed[entry["id"]] = InstanceRecord(**fields)
    memory = {m: s.resource_requirements.gpu_memory_mb for m, s in models.items()}
    return DesiredState(models, spec, "scenario"), observed, inventory, memory


def plan_of(scenario: dict[str, Any]) -> Plan:
    desired, observed, inventory, memory = world(scenario)
    return make_plan(desired, observed, inventory, memory)


def test_there_is_a_scenario_for_each_rule() -> None:
    assert len(FILES) >= 25
    assert all(load(f).get("rule") for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_scenario(path: Path) -> None:
    scenario = load(path)
    expect = scenario["expect"]
    plan = plan_of(scenario)
    got = json.loads(render_json(plan))
    assert got["actions"] == expect["actions"], scenario["rule"]
    assert {u["model"]: u["reason"] for u in got["unschedulable"]} == expect["unschedulable"]
    for mid, status in expect.get("status", {}).items():
        assert plan.models[mid].status == status, mid
    if "gpus" in expect:
        assert got["gpus"] == expect["gpus"]


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_scenario_converges(path: Path) -> None:
    desired, observed, inventory, memory = world(load(path))
    first = make_plan(desired, observed, inventory, memory)
    after = apply_plan(first, observed, desired)
    assert make_plan(desired, after, inventory, memory).actions == ()
