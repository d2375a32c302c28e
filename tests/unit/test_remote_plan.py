"""Remote models in the plan: never scheduled, placed or preempted; listed with their host; a
local model that cannot be placed sends its requests to its remote fallback."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.activation import plan_pass
from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Plan, RemoteModel, render_json, render_markdown, render_text
from reconciler.core.spec import ModelSpec
from reconciler.gpus import declared


def local(mid: str, priority: int = 5, memory: int = 8000, **fields: object) -> ModelSpec:
    count = fields.pop("gpu_count", 1)
    return ModelSpec.model_validate(
        {
            "id": mid,
            "framework": "llama_cpp",
            "model_path": f"/models/{mid}.gguf",
            "priority": priority,
            "resource_requirements": {"gpu_count": count, "gpu_memory_mb": memory},
            **fields,
        }
    )


def remote(mid: str, host: str = "api.example.com", **fields: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": mid, "framework": "remote", "endpoint": f"https://{host}/v1", **fields}
    )


def state(*specs: ModelSpec, gpus: tuple[int, ...] = (24000,)) -> DesiredState:
    cluster = ClusterSpec(gpus=[DeclaredGPU(index=i, memory_mb=m) for i, m in enumerate(gpus)])
    return DesiredState({s.id: s for s in specs}, cluster, "abc123")


def plan(desired: DesiredState, *observed: InstanceRecord) -> Plan:
    memory = {
        m: s.resource_requirements.gpu_memory_mb if not s.is_remote else None
        for m, s in desired.models.items()
    }
    return plan_pass(desired, {o.id: o for o in observed}, declared(desired.cluster), memory)


def running(mid: str, gpus: tuple[int, ...] = (0,), memory: int = 8000) -> InstanceRecord:
    return InstanceRecord(mid, Status.running, gpus=gpus, memory_mb=memory, port=8100)


# -- what the plan says --------------------------------------------------------------------------


def test_a_remote_model_is_listed_with_its_host_and_never_acted_on() -> None:
    p = plan(state(local("a"), remote("gpt"), remote("box", "llm.office.lan", enabled=False)))
    assert [(a.action, a.model) for a in p.actions] == [("start", "a")]
    assert "gpt" not in p.models and "box" not in p.models
    assert p.remote == (
        RemoteModel("box", "llm.office.lan", enabled=False),
        RemoteModel("gpt", "api.example.com"),
    )


def test_a_running_remote_record_is_neither_stopped_nor_counted_on_a_gpu() -> None:
    endpoint = InstanceRecord("gpt", Status.running)
    p = plan(state(local("a"), remote("gpt")), running("a"), endpoint)
    assert p.actions == ()
    assert [(g.used_mb_before, g.used_mb_after) for g in p.gpus] == [(8000, 8000)]


def test_an_unplaceable_local_model_sends_its_requests_to_its_remote_fallback() -> None:
    big = local("big", memory=90000, fallback="gpt")
    p = plan(state(big, local("small", memory=1000), remote("gpt")))
    # nothing local is started in its place: the remote model is its fallback
    assert [(a.action, a.model) for a in p.actions] == [("start", "small")]
    assert [u.model for u in p.unschedulable] == ["big"]
    note = "its requests go to remote fallback gpt (api.example.com)"
    assert p.unschedulable[0].reason.endswith(note)
    assert p.models["big"].reason is not None and p.models["big"].reason.endswith(note)
    assert p.remote == (RemoteModel("gpt", "api.example.com", serves_for=("big",)),)


def test_a_preempted_local_model_goes_to_its_remote_fallback_too() -> None:
    low = local("low", priority=2, memory=16000, fallback="gpt")
    high = local("high", priority=9, memory=16000)
    p = plan(state(low, high, remote("gpt")), running("low", memory=16000))
    assert [(a.action, a.model) for a in p.actions] == [("preempt", "low"), ("start", "high")]
    assert p.remote[0].serves_for == ("low",)


def test_a_placed_local_model_needs_no_remote_fallback() -> None:
    p = plan(state(local("a", fallback="gpt"), remote("gpt")))
    assert p.remote == (RemoteModel("gpt", "api.example.com"),)
    assert p.models["a"].reason is None


def test_renders_list_remote_models_with_their_host() -> None:
    p = plan(state(local("big", memory=90000, fallback="gpt"), remote("gpt")))
    assert "  remote: gpt → api.example.com (serves big while not placed)" in render_text(p)
    assert "| `gpt` | api.example.com | serves big while not placed |" in render_markdown(p)
    document = json.loads(render_json(p))
    assert document["remote"] == [
        {"model": "gpt", "host": "api.example.com", "enabled": True, "serves_for": ["big"]}
    ]


def test_a_plan_without_remote_models_renders_as_before() -> None:
    p = plan(state(local("a")))
    assert "remote" not in json.loads(render_json(p))
    assert "Remote" not in render_text(p) and "Remote" not in render_markdown(p)


def test_a_remote_model_in_error_has_its_local_fallback_run() -> None:
    desired = state(remote("gpt", fallback="tiny"), local("tiny", memory=2000, enabled=False))
    down = InstanceRecord("gpt", Status.error, last_error="connection refused")
    p = plan(desired, down)
    assert [(a.action, a.model, a.reason) for a in p.actions] == [
        ("start", "tiny", "fallback for gpt (its endpoint is down)")
    ]
    assert p.models["tiny"].fallback_for == "gpt"
    # an endpoint that answers, or one not probed yet, needs nobody in its place
    assert plan(desired, InstanceRecord("gpt", Status.running)).actions == ()
    assert plan(desired, InstanceRecord("gpt", Status.starting)).actions == ()
    assert plan(desired).actions == ()
    # and once it answers again, the stand-in stops
    back = plan(desired, InstanceRecord("gpt", Status.running), running("tiny", memory=2000))
    assert [(a.action, a.model) for a in back.actions] == [("stop", "tiny")]


# -- the property: remote models change no placement ---------------------------------------------

IDS = [f"m{i}" for i in range(6)]
REMOTE_IDS = ["r0", "r1", "r2"]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[dict[str, object]], list[str], list[InstanceRecord]]:
    """Local models as plain fields (each may name a local or a remote fallback), the remote
    ids, and what runs (engines on GPUs, remote models' records)."""
    ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=5, unique=True))
    remotes = draw(st.lists(st.sampled_from(REMOTE_IDS), min_size=1, max_size=3, unique=True))
    models = []
    for mid in ids:
        fallback = draw(st.none() | st.sampled_from([f for f in [*ids, *remotes] if f != mid]))
        models.append(
            {
                "mid": mid,
                "priority": draw(st.integers(1, 10)),
                "memory": draw(st.sampled_from([4000, 8000, 12000, 20000, 30000])),
                "gpu_count": draw(st.integers(1, 2)),
                "fallback": fallback,
                "enabled": draw(st.booleans()),
            }
        )
    observed = []
    gpu_ids = [0, 1]
    for m in models:
        if draw(st.booleans()):
            gpus = tuple(gpu_ids[: int(str(m["gpu_count"]))])
            observed.append(running(str(m["mid"]), gpus, int(str(m["memory"]))))
    for r in remotes:
        if draw(st.booleans()):
            observed.append(InstanceRecord(r, draw(st.sampled_from(list(Status)))))
    return models, remotes, observed


def _local(m: dict[str, object], drop_fallbacks: frozenset[str]) -> ModelSpec:
    fields = dict(m)
    mid = str(fields.pop("mid"))
    if fields["fallback"] in drop_fallbacks:
        fields["fallback"] = None
    return local(mid, **fields)


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_adding_remote_models_changes_no_placement(
    world: tuple[list[dict[str, object]], list[str], list[InstanceRecord]],
) -> None:
    models, remotes, observed = world
    gpus = (24000, 24000)
    with_remote = state(
        *(_local(m, frozenset()) for m in models), *(remote(r) for r in remotes), gpus=gpus
    )
    # the oracle: the same hosts without any remote model (a remote fallback is no fallback)
    alone = state(*(_local(m, frozenset(remotes)) for m in models), gpus=gpus)
    engines = [o for o in observed if o.id not in remotes]
    p, q = plan(with_remote, *observed), plan(alone, *engines)
    assert p.actions == q.actions
    assert [u.model for u in p.unschedulable] == [u.model for u in q.unschedulable]
    assert p.gpus == q.gpus
    assert {m: (o.status, o.gpus, o.port) for m, o in p.models.items()} == {
        m: (o.status, o.gpus, o.port) for m, o in q.models.items()
    }
    assert [r.id for r in p.remote] == sorted(remotes)
    # and each local model that the plan leaves without an engine goes to its remote fallback
    waiting = {
        str(m["mid"])
        for m in models
        if m["fallback"] in remotes
        and m["enabled"]
        and q.models[str(m["mid"])].status is not Status.running
    }
    assert {mid for r in p.remote for mid in r.serves_for} == waiting


# -- Kubernetes: no workload, and said so -------------------------------------------------------


def test_kubernetes_render_skips_a_remote_model_and_says_so() -> None:
    from reconciler.kubernetes import KUSTOMIZATION, render

    desired = state(local("a", memory=4000, fallback="gpt"), remote("gpt", priority=9))
    rendered = render(desired)
    assert rendered.problems == []
    assert sorted(rendered.files) == [KUSTOMIZATION, "models/a.yaml", "priorityclasses.yaml"]
    assert "reconciler-priority-09" not in rendered.files["priorityclasses.yaml"]
    note = (
        "remote model gpt -> api.example.com: no workload rendered "
        "(served by its endpoint, not by the cluster)"
    )
    assert note in rendered.notes
    assert f"# Note: {note}\n" in rendered.files[KUSTOMIZATION]
    assert not any("name: gpt" in text for text in rendered.files.values())  # no object of it
