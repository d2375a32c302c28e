"""The planner: diff, restarts, ordering, outcomes and the three renderings."""

from __future__ import annotations

import json

from planner_oracle import apply_plan

from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.desired import DesiredState, Problem
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import (
    Action,
    GpuUsage,
    Plan,
    converged_observed,
    invalid_plan,
    make_plan,
    render_json,
    render_markdown,
    render_text,
)
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.spec import ModelSpec
from reconciler.gpus import declared


def spec(mid: str, priority: int = 5, memory: int | None = 8000, **fields) -> ModelSpec:
    count = fields.pop("gpu_count", 1)
    return ModelSpec(
        id=mid,
        framework="llama_cpp",
        model_path=f"/models/{mid}.gguf",
        priority=priority,
        resource_requirements={"gpu_count": count, "gpu_memory_mb": memory},
        **fields,
    )


def state(*specs: ModelSpec, gpus: tuple[int, ...] = (24000,), **cluster) -> DesiredState:
    declared_gpus = [DeclaredGPU(index=i, memory_mb=m) for i, m in enumerate(gpus)]
    return DesiredState(
        {s.id: s for s in specs}, ClusterSpec(gpus=declared_gpus, **cluster), "abc123"
    )


def plan(
    desired: DesiredState, *observed: InstanceRecord, gpus: list[GPUInfo] | None = None
) -> Plan:
    memory = {m: s.resource_requirements.gpu_memory_mb for m, s in desired.models.items()}
    return make_plan(
        desired, {o.id: o for o in observed}, gpus or declared(desired.cluster), memory
    )


def running(
    mid: str, gpus: tuple[int, ...] = (0,), memory: int = 8000, port: int = 8100, **kw
) -> InstanceRecord:
    return InstanceRecord(mid, Status.running, gpus=gpus, memory_mb=memory, port=port, **kw)


def steps(p: Plan) -> list[tuple[str, str]]:
    return [(a.action, a.model) for a in p.actions]


# -- the diff ------------------------------------------------------------------------------


def test_new_models_start_highest_priority_first_then_by_id() -> None:
    desired = state(spec("b", 3), spec("c", 9), spec("a", 3), gpus=(40000,))
    p = plan(desired)
    assert p.actions == (
        Action("start", "c", (0,), 8000, 8100, "not running yet"),
        Action("start", "a", (0,), 8000, 8101, "not running yet"),
        Action("start", "b", (0,), 8000, 8102, "not running yet"),
    )


def test_a_converged_system_has_no_actions() -> None:
    desired = state(spec("a", 9, 20000), spec("b", 3, 20000), spec("c", 1, None))
    first = plan(desired)
    assert steps(first) == [("start", "a")]
    again = plan(desired, *apply_plan(first, {}, desired).values())
    assert again.actions == ()
    assert again.unschedulable == first.unschedulable
    assert [(u.model, u.reason) for u in again.unschedulable] == list(again.unschedulable)
    assert dict(again.unschedulable) == {
        "b": "needs 20000 MiB on 1 GPU; most free is 4000 MiB on GPU 0",
        "c": "GPU memory requirement unknown: set resource_requirements.gpu_memory_mb",
    }


def test_a_changed_parameter_restarts_that_model_only() -> None:
    old_a = spec("a", parameters={"ctx-size": 2048})
    observed = [
        running("a", spec_hash=old_a.spec_hash()),
        running("b", port=8101, spec_hash=spec("b").spec_hash()),
    ]
    new = state(spec("a", parameters={"ctx-size": 4096}), spec("b"))
    assert plan(new, *observed).actions == (
        Action("restart", "a", (0,), 8000, 8100, "spec changed"),
    )


def test_a_priority_change_alone_restarts_nothing() -> None:
    observed = running("a", spec_hash=spec("a", 5).spec_hash())
    assert plan(state(spec("a", 10)), observed).actions == ()


def test_an_unknown_spec_hash_counts_as_matching() -> None:
    assert plan(state(spec("a")), running("a", spec_hash=None)).actions == ()


def test_an_engine_that_violates_a_new_pin_moves() -> None:
    desired = state(spec("a", gpu_devices=[0]), gpus=(24000, 24000))
    p = plan(desired, running("a", gpus=(1,)))
    assert p.actions == (
        Action("stop", "a", (1,), 8000, 8100, "moving to GPU 0: pinned to GPU 0"),
        Action("start", "a", (0,), 8000, 8100, "moved from GPU 1: pinned to GPU 0"),
    )


def test_an_engine_on_too_few_gpus_moves() -> None:
    desired = state(spec("a", gpu_count=2), gpus=(24000, 24000))
    p = plan(desired, running("a", gpus=(1,)))
    why = "needs 2 GPU(s), runs on 1"
    assert p.actions == (
        Action("stop", "a", (1,), 8000, 8100, f"moving to GPUs 0, 1: {why}"),
        Action("start", "a", (0, 1), 8000, 8100, f"moved from GPU 1: {why}"),
    )


def test_removed_and_disabled_models_are_stopped() -> None:
    desired = state(spec("off", enabled=False))
    p = plan(desired, running("gone", port=8101), running("off"))
    assert p.actions == (
        Action("stop", "gone", (0,), 8000, 8101, "removed from desired state"),
        Action("stop", "off", (0,), 8000, 8100, "disabled (enabled: false)"),
    )
    assert p.models["gone"].status is Status.stopped
    assert p.models["off"].status is Status.stopped


def test_a_fallback_starts_for_an_unschedulable_primary_and_stops_when_room_returns() -> None:
    desired = state(
        spec("big", 8, 20000, fallback="small"),
        spec("small", 3, 4000, enabled=False),
        spec("hog", 9, 10000),
    )
    p = plan(desired)
    assert p.actions == (
        Action("start", "hog", (0,), 10000, 8100, "not running yet"),
        Action(
            "start",
            "small",
            (0,),
            4000,
            8101,
            "fallback for big (needs 20000 MiB on 1 GPU; most free is 14000 MiB on GPU 0)",
        ),
    )
    assert p.models["small"].priority == 8
    assert p.models["small"].fallback_for == "big"
    after = apply_plan(p, {}, desired)
    del desired.models["hog"]
    p = plan(desired, *after.values())
    assert p.actions == (
        Action("stop", "hog", (0,), 10000, 8100, "removed from desired state"),
        Action("stop", "small", (0,), 4000, 8101, "disabled and no longer needed as a fallback"),
        Action("start", "big", (0,), 20000, 8102, "not running yet"),
    )


def test_stops_then_preemptions_lowest_first_then_starts_highest_first() -> None:
    desired = state(
        spec("new-hi", 9, 22000),
        spec("new-lo", 6, 8000),
        spec("victim-b", 2, 8000),
        spec("victim-a", 1, 8000),
        spec("kept", 8, 4000),
        spec("off-2", 2, enabled=False),
        spec("off-1", 4, enabled=False),
        gpus=(24000, 24000),
    )
    observed = [
        running("victim-a", (0,), port=8100),
        running("victim-b", (0,), port=8101),
        running("off-2", (1,), 4000, port=8102),
        running("off-1", (1,), 4000, port=8103),
        running("kept", (1,), 4000, port=8104),
    ]
    assert steps(plan(desired, *observed)) == [
        ("stop", "off-2"),
        ("stop", "off-1"),
        ("preempt", "victim-a"),
        ("preempt", "victim-b"),
        ("start", "new-hi"),
        ("start", "new-lo"),
        ("start", "victim-b"),  # room on GPU 1 once new-lo is placed
    ]
    assert plan(desired, *observed).actions[-1].reason == "moved after preemption by new-hi"


def test_a_preempted_model_waits_and_comes_back_when_room_returns() -> None:
    desired = state(spec("vip", 9, 20000), spec("low", 2, 20000))
    p = plan(desired, running("low", memory=20000))
    assert p.actions == (
        Action("preempt", "low", (0,), 20000, 8100, "preempted by vip (priority 9)"),
        Action("start", "vip", (0,), 20000, 8101, "not running yet"),
    )
    assert p.models["low"].status is Status.preempted
    after = apply_plan(p, {"low": running("low", memory=20000)}, desired)
    assert after["low"] == InstanceRecord("low", Status.preempted)
    waiting = plan(desired, *after.values())
    assert waiting.actions == ()
    assert waiting.models["low"].status is Status.preempted
    del desired.models["vip"]
    back = plan(desired, *after.values())
    assert steps(back) == [("stop", "vip"), ("start", "low")]
    assert back.actions[1].reason == "room returned after preemption"


def test_a_model_that_gave_up_stays_in_error_and_its_fallback_runs() -> None:
    desired = state(spec("a", fallback="b"), spec("b", 2, 1000, enabled=False))
    gave_up = InstanceRecord("a", Status.error, given_up=True, last_error="CUDA OOM")
    p = plan(desired, gave_up)
    assert p.actions == (
        Action("start", "b", (0,), 1000, 8100, "fallback for a (in error, not retried: CUDA OOM)"),
    )
    assert p.models["a"].status is Status.error
    assert dict(p.unschedulable) == {"a": "in error, not retried: CUDA OOM"}
    assert converged_observed(p, {"a": gave_up})["a"] == gave_up


def test_a_model_that_gave_up_gets_a_new_chance_when_its_spec_changes() -> None:
    gave_up = InstanceRecord("a", Status.error, spec_hash="0ld", given_up=True, last_error="x")
    p = plan(state(spec("a")), gave_up)
    assert p.actions == (Action("start", "a", (0,), 8000, 8100, "spec changed after giving up"),)


def test_a_crashed_engine_is_started_again() -> None:
    crashed = InstanceRecord("a", Status.error, last_error="exit status 1")
    p = plan(state(spec("a")), crashed)
    assert p.actions == (
        Action("start", "a", (0,), 8000, 8100, "restart after error: exit status 1"),
    )


def test_a_stopping_engine_that_is_still_desired_restarts() -> None:
    stopping = InstanceRecord("a", Status.stopping, gpus=(0,), memory_mb=8000, port=8100)
    p = plan(state(spec("a")), stopping)
    assert p.actions == (Action("restart", "a", (0,), 8000, 8100, "it was stopping"),)


def test_a_port_now_fixed_for_another_model_restarts_the_engine_on_it() -> None:
    """The engine stops with the stops, so that its port is free before `b` starts on it, even
    when `b` starts first."""
    desired = state(spec("a", memory=None, gpu_count=0), spec("b", 9, gpu_count=0, port=8100))
    p = plan(desired, InstanceRecord("a", Status.running, port=8100))
    assert p.actions == (
        Action("stop", "a", (), 0, 8100, "frees port 8100 for b: port 8100 is fixed for b"),
        Action("start", "b", (), 0, 8100, "not running yet"),
        Action("start", "a", (), 0, 8101, "restarted on port 8101: port 8100 is fixed for b"),
    )


def test_a_port_an_engine_leaves_for_its_own_fixed_port_serves_others_in_the_same_plan() -> None:
    """Found by the planner properties: the port was held all pass long, so `b` was
    unschedulable in this plan and started in the next one."""
    desired = state(
        spec("a", memory=None, gpu_count=0, port=8143),
        spec("b", 9, memory=None, gpu_count=0),
        port_range=(8100, 8100),
    )
    p = plan(desired, InstanceRecord("a", Status.running, port=8100))
    assert p.actions == (
        Action("stop", "a", (), 0, 8100, "frees port 8100 for b: port 8100 -> 8143"),
        Action("start", "b", (), 0, 8100, "not running yet"),
        Action("start", "a", (), 0, 8143, "restarted on port 8143: port 8100 -> 8143"),
    )
    assert p.unschedulable == ()


def test_gpu_memory_before_and_after() -> None:
    desired = state(
        spec("a", 5, 6000), spec("b", 5, 3000), gpus=(24000, 16000), reserved_memory_mb=1000
    )
    gpus = [GPUInfo(0, "x", 24000, unmanaged_mb=500), GPUInfo(1, "y", 16000)]
    p = plan(desired, running("a", (1,), 6000), gpus=gpus)
    assert p.gpus == (GpuUsage(0, 22500, 0, 3000), GpuUsage(1, 15000, 6000, 6000))


def test_outcomes_cover_every_desired_and_observed_model() -> None:
    desired = state(spec("a", 9, 20000), spec("b", 3, 20000), spec("c", enabled=False))
    p = plan(desired, running("old", port=8150))
    assert {m: o.status for m, o in p.models.items()} == {
        "a": Status.running,
        "b": Status.stopped,
        "c": Status.stopped,
        "old": Status.stopped,
    }
    assert p.models["a"].spec_hash == desired.models["a"].spec_hash()
    assert p.models["b"].reason.startswith("needs 20000 MiB")


def test_converged_observed_is_what_runs_after_the_plan() -> None:
    desired = state(spec("a", 9, 20000), spec("b", 3, 20000))
    previous = {"b": running("b", memory=20000, spec_hash="x"), "gone": running("gone", port=9)}
    after = converged_observed(plan(desired, *previous.values()), previous)
    assert after == {
        "a": InstanceRecord(
            "a",
            Status.running,
            gpus=(0,),
            memory_mb=20000,
            port=8101,
            spec_hash=desired.models["a"].spec_hash(),
        ),
        "b": InstanceRecord("b", Status.preempted),
        "gone": InstanceRecord("gone", Status.stopped),
    }


# -- invalid desired state -----------------------------------------------------------------

PROBLEM = Problem("models/a.yaml", 3, "priority", "11 is greater than the maximum of 10")


def test_an_invalid_desired_state_changes_nothing() -> None:
    p = invalid_plan("bad1", [PROBLEM])
    assert not p.valid and p.actions == () and p.problems == (PROBLEM,)
    previous = {"a": running("a")}
    assert converged_observed(p, previous) == previous
    assert json.loads(render_json(p)) == {
        "revision": "bad1",
        "valid": False,
        "problems": [
            {
                "file": "models/a.yaml",
                "line": 3,
                "field": "priority",
                "message": "11 is greater than the maximum of 10",
                "severity": "error",
            }
        ],
        "actions": [],
        "unschedulable": [],
        "gpus": [],
    }
    assert "nothing changes" in render_text(p)
    assert "models/a.yaml:3" in render_text(p)
    assert "**Invalid desired state: nothing changes**" in render_markdown(p)


# -- renderings ----------------------------------------------------------------------------


def busy_plan() -> Plan:
    desired = state(
        spec("vip", 9, 16000),
        spec("new", 4, 4000),
        spec("low", 2, 12000),
        spec("big", 3, 50000),
        gpus=(24000,),
    )
    observed = [running("low", memory=12000), running("gone", memory=2000, port=8101)]
    warning = Problem(
        "models/new.yaml", 1, "id", "id 'new' does not match the file name", "warning"
    )
    memory = {m: s.resource_requirements.gpu_memory_mb for m, s in desired.models.items()}
    gpus = declared(desired.cluster)
    return make_plan(desired, {o.id: o for o in observed}, gpus, memory, [warning])


def test_json_has_exactly_the_documented_shape_and_is_stable() -> None:
    p = busy_plan()
    text = render_json(p)
    assert text == render_json(busy_plan())
    document = json.loads(text)
    assert list(document) == sorted(
        ["revision", "valid", "problems", "actions", "unschedulable", "gpus"]
    )
    assert document["actions"][0] == {
        "action": "stop",
        "model": "gone",
        "gpus": [0],
        "memory_mb": 2000,
        "port": 8101,
        "reason": "removed from desired state",
    }
    assert [a["action"] for a in document["actions"]] == ["stop", "preempt", "start", "start"]
    assert document["unschedulable"] == [
        {
            "model": "big",
            "reason": "needs 50000 MiB on 1 GPU; most free is 4000 MiB on GPU 0",
        }
    ]
    assert document["gpus"] == [{"index": 0, "memory_mb": 24000, "used_mb_after": 20000}]
    assert document["problems"][0]["severity"] == "warning"
    assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)


def test_summary_counts_each_kind() -> None:
    assert busy_plan().summary() == "2 to start, 1 to stop, 1 preempted, 1 unschedulable"
    assert plan(state()).summary() == "no changes"


def test_markdown_for_a_pull_request() -> None:
    diff = "--- a/models/new.yaml\n+++ b/models/new.yaml\n+priority: 4\n"
    md = render_markdown(busy_plan(), diff)
    assert md.startswith("### Reconciler plan for `abc123`\n\n")
    assert "**2 to start, 1 to stop, 1 preempted, 1 unschedulable**" in md
    assert "| 2 | preempt | `low` | 0 | 12000 MiB | 8100 | preempted by vip (priority 9) |" in md
    assert "| 0 | 24000 MiB | 14000 MiB | 20000 MiB |" in md
    assert "- `models/new.yaml:1` warning `id`: id 'new' does not match the file name" in md
    assert "<details><summary>Spec diff</summary>\n\n```diff\n--- a/models/new.yaml" in md
    assert md.endswith("+priority: 4\n```\n\n</details>\n")
    assert "<details>" not in render_markdown(busy_plan())


def test_markdown_keeps_table_cells_and_fences_intact() -> None:
    p = Plan("r", True, actions=(Action("stop", "a", (), 0, None, "x | y\nz"),))
    md = render_markdown(p, "```\nnested\n```")
    assert "| 1 | stop | `a` | CPU |  |  | x \\| y z |" in md
    assert "````diff\n```\nnested\n```\n````" in md


def test_text_for_a_terminal() -> None:
    text = render_text(busy_plan())
    lines = text.splitlines()
    assert lines[0] == "Plan for abc123: 2 to start, 1 to stop, 1 preempted, 1 unschedulable"
    assert (
        lines[1] == "  1. stop     gone  [GPU 0, 2000 MiB, port 8101]  removed from desired state"
    )
    assert "  GPU 0: 14000 -> 20000 of 24000" in lines
    assert "  big: needs 50000 MiB on 1 GPU; most free is 4000 MiB on GPU 0" in lines
    assert "warning" in lines[-1]
    assert "nothing to do" in render_text(plan(state()))
