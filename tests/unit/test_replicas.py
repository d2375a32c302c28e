"""Replicas and aliases: the expansion into instances, where instances are placed, how the
gateway and the API see them, alias clashes located as file:line, and what Kubernetes gets."""

from __future__ import annotations

from typing import Any

import yaml
from test_validate import check, error, model, path_of

from reconciler import kubernetes as k8s
from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.desired import DesiredState
from reconciler.core.diff import diff_desired, render_diff
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import make_plan
from reconciler.core.serving import expand, group, instance_ids, model_of, per_instance
from reconciler.core.spec import ModelSpec
from reconciler.gateway.routes import build_routes
from reconciler.gpus import declared


def spec(mid: str, replicas: int = 1, memory: int = 8000, **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": mid,
            "framework": "llama_cpp",
            "model_path": f"/models/{mid}.gguf",
            "replicas": replicas,
            "resource_requirements": {"gpu_memory_mb": memory},
            **fields,
        }
    )


def state(*specs: ModelSpec, gpus: tuple[int, ...] = (24000, 24000), **cluster: Any):
    declared_gpus = [DeclaredGPU(index=i, memory_mb=m) for i, m in enumerate(gpus)]
    return DesiredState({s.id: s for s in specs}, ClusterSpec(gpus=declared_gpus, **cluster))


def placements(desired: DesiredState, *observed: InstanceRecord) -> dict[str, tuple[int, ...]]:
    """model -> GPUs of its start, planned on the expanded desired state."""
    expanded = expand(desired)
    memory = {m: s.resource_requirements.gpu_memory_mb for m, s in expanded.models.items()}
    obs = {o.id: o for o in observed}
    plan = make_plan(expanded, obs, declared(expanded.cluster), memory)
    return {a.model: a.gpus for a in plan.actions if a.action == "start"}


# ---- expansion ------------------------------------------------------------------------------


def test_a_spec_with_three_replicas_becomes_three_instances_of_one_replica() -> None:
    desired = state(spec("q", replicas=3, aliases=["chat"]), spec("o"))
    expanded = expand(desired)
    assert sorted(expanded.models) == ["o", "q", "q.1", "q.2"]
    for iid in ("q", "q.1", "q.2"):
        copy = expanded.models[iid]
        assert copy.id == iid and copy.replicas == 1
        assert copy.spec_hash() == desired.models["q"].spec_hash()
        assert copy.aliases == ["chat"]
    assert expand(expanded) == expanded  # already expanded: nothing changes
    assert group(expanded.models) == {"o": ["o"], "q": ["q", "q.1", "q.2"]}
    assert model_of("q.2") == "q" and instance_ids(desired.models["q"]) == ["q", "q.1", "q.2"]


def test_going_from_one_to_two_replicas_starts_one_instance_and_restarts_nothing() -> None:
    running = InstanceRecord(
        "q", Status.running, gpus=(0,), memory_mb=8000, port=8100, spec_hash=spec("q").spec_hash()
    )
    desired = state(spec("q", replicas=2))
    expanded = expand(desired)
    memory = {m: 8000 for m in expanded.models}
    plan = make_plan(expanded, {"q": running}, declared(expanded.cluster), memory)
    assert [(a.action, a.model) for a in plan.actions] == [("start", "q.1")]


def test_fewer_replicas_stop_the_highest_instances_only() -> None:
    observed = {
        iid: InstanceRecord(
            iid,
            Status.running,
            gpus=(g,),
            memory_mb=8000,
            port=8100 + g,
            spec_hash=spec("q").spec_hash(),
        )
        for g, iid in enumerate(("q", "q.1"))
    }
    expanded = expand(state(spec("q", replicas=1)))
    plan = make_plan(expanded, observed, declared(expanded.cluster), {"q": 8000})
    assert [(a.action, a.model) for a in plan.actions] == [("stop", "q.1")]


def test_every_instance_of_a_set_aside_model_is_set_aside_with_it() -> None:
    desired = state(spec("q", replicas=3), spec("o"))
    usable = state(spec("o"))
    expanded, usable_expanded, broken = per_instance(desired, usable, {"q": "cannot be used"})
    assert broken == dict.fromkeys(["q", "q.1", "q.2"], "cannot be used")
    assert sorted(expanded.models) == ["o", "q", "q.1", "q.2"]
    assert sorted(usable_expanded.models) == ["o"]


# ---- placement -----------------------------------------------------------------------------


def test_instances_go_to_different_gpus_under_pack_and_spread_when_they_fit() -> None:
    for placement in ("pack", "spread"):
        placed = placements(state(spec("q", replicas=2), placement=placement))
        assert placed["q"] != placed["q.1"], placement


def test_instances_share_a_gpu_when_no_other_gpu_fits_them() -> None:
    placed = placements(state(spec("q", replicas=2, memory=10000), gpus=(24000, 8000)))
    assert placed == {"q": (0,), "q.1": (0,)}


def test_a_higher_priority_instance_preempts_by_the_usual_rules() -> None:
    low = InstanceRecord(
        "low",
        Status.running,
        gpus=(1,),
        memory_mb=20000,
        port=8101,
        spec_hash=spec("low").spec_hash(),
    )
    desired = state(spec("q", replicas=2, memory=20000, priority=9), spec("low", priority=2))
    expanded = expand(desired)
    memory = {m: 20000 for m in expanded.models}
    plan = make_plan(expanded, {"low": low}, declared(expanded.cluster), memory)
    kinds = sorted((a.action, a.model) for a in plan.actions)
    assert kinds == [("preempt", "low"), ("start", "q"), ("start", "q.1")]


# ---- the gateway's table groups the instances of a model -----------------------------------


def record(iid: str, status: Status, port: int | None = None) -> InstanceRecord:
    return InstanceRecord(id=iid, status=status, port=port)


def test_the_gateway_routes_a_model_over_its_ready_instances_under_its_id() -> None:
    desired = expand(state(spec("q", replicas=3, aliases=["chat"])))
    records = {
        "q": record("q", Status.running, 8100),
        "q.1": record("q.1", Status.starting),
        "q.2": record("q.2", Status.running, 8102),
    }
    routes = build_routes(desired, records)
    assert list(routes.models) == ["q"]
    route = routes.models["q"]
    assert route.status == "running" and route.aliases == ("chat",)
    assert [i.url for i in route.instances] == ["http://127.0.0.1:8100", "http://127.0.0.1:8102"]


def test_a_model_whose_instances_all_start_waits_and_one_preempted_instance_does_not_503() -> None:
    desired = expand(state(spec("q", replicas=2)))
    waiting = {"q": record("q", Status.preempted), "q.1": record("q.1", Status.starting)}
    assert build_routes(desired, waiting).models["q"].status == "starting"
    gone = {"q": record("q", Status.preempted), "q.1": record("q.1", Status.preempted)}
    assert build_routes(desired, gone).models["q"].status == "preempted"


# ---- aliases in validation -----------------------------------------------------------------


def test_an_alias_that_is_another_models_id_or_alias_is_an_error_at_its_line() -> None:
    result = check(
        {
            path_of("a"): model("a", "aliases: [chat, b]"),
            path_of("b"): model("b", "aliases:", "  - gpt-4o-mini", "  - chat"),
        }
    )
    assert result.errors == [
        error(
            path_of("a"),
            4,
            "aliases[1]",
            f"alias 'b' is the id of another model ({path_of('b')}:1)",
        ),
        error(
            path_of("b"),
            6,
            "aliases[1]",
            f"alias 'chat' is also an alias of a ({path_of('a')}:4)",
        ),
    ]


def test_an_alias_repeated_or_equal_to_its_own_id_is_an_error() -> None:
    result = check({path_of("a"): model("a", "aliases:", "  - x", "  - a", "  - x")})
    assert result.errors == [
        error(path_of("a"), 6, "aliases[1]", "alias 'a' is the model's own id"),
        error(path_of("a"), 7, "aliases[2]", "alias 'x' is listed twice"),
    ]


def test_client_style_alias_names_are_valid_and_odd_ones_are_not() -> None:
    good = check({path_of("a"): model("a", "aliases: [gpt-4o-mini, 'llama3.1:8b', Qwen/Qwen2-7B]")})
    assert good.valid, good.problems
    bad = check({path_of("a"): model("a", "aliases: ['has space']")})
    assert [(p.line, p.field) for p in bad.errors] == [(4, "aliases[0]")]


def test_replicas_bounds_and_a_fixed_port_with_replicas_are_errors() -> None:
    assert check({path_of("a"): model("a", "replicas: 64")}).valid
    for text in ("replicas: 0", "replicas: 65"):
        (problem,) = check({path_of("a"): model("a", text)}).errors
        assert (problem.line, problem.field) == (4, "replicas")
    (problem,) = check({path_of("a"): model("a", "replicas: 2", "port: 9000")}).errors
    assert (problem.line, problem.field) == (5, "port")
    assert "cannot serve 2 replicas" in problem.message


# ---- Kubernetes ----------------------------------------------------------------------------


def test_kubernetes_gets_replicas_and_names_aliases_as_not_applying() -> None:
    specs = [spec("q", replicas=3, aliases=["chat"]), spec("o")]
    desired = DesiredState({s.id: s for s in specs}, ClusterSpec())
    rendered = k8s.render(desired, memory={"q": 8000, "o": 8000})
    assert rendered.problems == []
    deployments = {
        d["metadata"]["name"]: d
        for text in rendered.files.values()
        for d in yaml.safe_load_all(text)
        if d and d.get("kind") == "Deployment"
    }
    assert deployments["q"]["spec"]["replicas"] == 3
    assert deployments["o"]["spec"]["replicas"] == 1
    assert deployments["q"]["metadata"]["annotations"][k8s.ANNOTATION_ALIASES] == "chat"
    assert k8s.ANNOTATION_ALIASES not in deployments["o"]["metadata"]["annotations"]
    (note,) = [n for n in rendered.notes if n.startswith("q:") and "aliases" in n]
    assert f"# Note: {note}" in rendered.files["models/q.yaml"]


# ---- the pull request's spec diff ----------------------------------------------------------


def test_the_spec_diff_of_a_pull_request_names_replicas_and_aliases() -> None:
    before, after = state(spec("q")), state(spec("q", replicas=2, aliases=["chat"]))
    assert render_diff(diff_desired(before, after)) == (
        "~ q (changed)\n    aliases: [] -> ['chat']\n    replicas: 1 -> 2"
    )
