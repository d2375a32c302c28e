"""Properties of the planner over clusters, specs and observed states that Hypothesis builds.

The worlds are drawn field by field (GPUs, models with priorities, pins, fixed ports and
fallbacks, engines running, crashed, given up or preempted), so a failure shrinks to a small
example. What a host runs after a plan comes from `planner_oracle.apply_plan`, which carries out
the plan's actions, not from the planner's own `converged_observed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_oracle import apply_plan

from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Plan, make_plan, render_json
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.spec import ModelSpec

IDS = [f"m{i}" for i in range(8)]
FIRST_PORT = 8100
PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class World:
    desired: DesiredState
    observed: dict[str, InstanceRecord]
    gpus: list[GPUInfo]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[ClusterSpec, list[GPUInfo]]:
    sizes = draw(st.lists(st.sampled_from([8000, 16000, 24000, 40000]), min_size=1, max_size=4))
    declared = [DeclaredGPU(index=i, memory_mb=m) for i, m in enumerate(sizes)]
    cluster = ClusterSpec(
        gpus=declared,
        reserved_memory_mb=draw(st.sampled_from([0, 1000])),
        placement=draw(st.sampled_from(["spread", "pack"])),
        port_range=(FIRST_PORT, FIRST_PORT + draw(st.sampled_from([2, 5, 50]))),
    )
    gpus = [
        GPUInfo(g.index, g.name, g.memory_mb, unmanaged_mb=draw(st.sampled_from([0, 0, 2000])))
        for g in declared
    ]
    return cluster, gpus


@st.composite
def models(draw: st.DrawFn, n_gpus: int) -> dict[str, ModelSpec]:
    ids = sorted(draw(st.lists(st.sampled_from(IDS), unique=True, max_size=len(IDS))))
    fixed_ports = iter(range(8140, 8160))
    out = {}
    for mid in ids:
        count = min(n_gpus, draw(st.sampled_from([0, 1, 1, 1, 2, 3])))
        pins = []
        if count and draw(st.integers(0, 4)) == 0:
            pins = sorted(draw(st.permutations(range(n_gpus)))[:count])
        later = [o for o in ids if o > mid]
        memory = draw(st.one_of(st.none(), st.integers(2, 60).map(lambda k: k * 500)))
        out[mid] = ModelSpec(
            id=mid,
            framework="llama_cpp",
            model_path=f"/models/{mid}.gguf",
            priority=draw(st.integers(1, 10)),
            gpu_devices=pins,
            parameters={"ctx-size": draw(st.sampled_from([2048, 4096]))},
            resource_requirements={"gpu_count": count, "gpu_memory_mb": memory},
            port=next(fixed_ports) if draw(st.integers(0, 6)) == 0 else None,
            fallback=draw(st.sampled_from(later)) if later and draw(st.booleans()) else None,
            enabled=draw(st.integers(0, 6)) > 0,
        )
    return out


STATES = ["absent", "running", "running", "starting", "stopping", "error", "gave up", "preempted"]


@st.composite
def observations(
    draw: st.DrawFn, specs: dict[str, ModelSpec], capacity: dict[int, int]
) -> dict[str, InstanceRecord]:
    """Engines started from this or an older spec, placed within capacity, on unique ports (one
    of them maybe another model's fixed port now); some crashed, gave up or were preempted."""
    free = dict(capacity)
    ports = iter(range(FIRST_PORT, 8200))
    observed = {}
    for mid in [*specs, "removed"]:
        state = draw(st.sampled_from(STATES))
        if state == "absent":
            continue
        if state in ("error", "gave up", "preempted"):
            status = Status.preempted if state == "preempted" else Status.error
            observed[mid] = InstanceRecord(
                mid, status, given_up=state == "gave up", last_error="exit 1"
            )
            continue
        gpus = tuple(sorted(draw(st.sets(st.sampled_from(sorted(capacity)), max_size=3))))
        spec = specs.get(mid)
        current = spec.spec_hash() if spec else "gone"
        spec_hash = draw(st.sampled_from([current, current, "older", None]))
        memory = draw(st.integers(1, 40)) * 500 if gpus else 0
        if spec_hash != "older" and spec and spec.resource_requirements.gpu_memory_mb and gpus:
            memory = spec.resource_requirements.gpu_memory_mb  # what this spec started it with
        if any(free[g] < memory for g in gpus):
            continue
        for g in gpus:
            free[g] -= memory
        port = draw(st.sampled_from([next(ports), 8140])) if draw(st.booleans()) else next(ports)
        if any(o.port == port for o in observed.values()):
            port = next(ports)
        observed[mid] = InstanceRecord(
            mid, Status(state), gpus=gpus, memory_mb=memory, port=port, spec_hash=spec_hash
        )
    return observed


@st.composite
def worlds(draw: st.DrawFn) -> World:
    cluster, gpus = draw(clusters())
    specs = draw(models(len(gpus)))
    capacity = {g.device_id: g.memory_total for g in gpus}
    observed = draw(observations(specs, capacity))
    return World(DesiredState(specs, cluster, "rev"), observed, gpus)


def plan_of(desired: DesiredState, observed: dict[str, InstanceRecord], gpus) -> Plan:
    memory = {m: s.resource_requirements.gpu_memory_mb for m, s in desired.models.items()}
    return make_plan(desired, observed, gpus, memory)


def preempted_by(reason: str) -> str:
    return reason.removeprefix("preempted by ").split(" ")[0]


@PROPERTY
@given(worlds())
def test_after_the_plan_is_carried_out_planning_again_changes_nothing(world: World) -> None:
    first = plan_of(world.desired, world.observed, world.gpus)
    after = apply_plan(first, world.observed, world.desired)
    second = plan_of(world.desired, after, world.gpus)
    assert second.actions == (), (first.actions, second.actions)
    running = {m for m, o in second.models.items() if o.status is Status.running}
    assert running == {m for m, o in after.items() if o.occupies}
    third = plan_of(world.desired, apply_plan(second, after, world.desired), world.gpus)
    assert render_json(third) == render_json(second)


def capacity_of(world: World) -> dict[int, int]:
    reserved = world.desired.cluster.reserved_memory_mb
    return {g.device_id: max(0, g.memory_total - reserved - g.unmanaged_mb) for g in world.gpus}


@PROPERTY
@given(worlds())
def test_plan_respects_capacity_pins_counts_and_ports(world: World) -> None:
    plan = plan_of(world.desired, world.observed, world.gpus)
    capacity = capacity_of(world)
    after = apply_plan(plan, world.observed, world.desired)
    used = dict.fromkeys(capacity, 0)
    ports = []
    for mid, obs in after.items():
        if not obs.occupies:
            continue
        spec = world.desired.models[mid]  # removed models are stopped
        for g in obs.gpus:
            used[g] += obs.memory_mb
        assert len(set(obs.gpus)) == len(obs.gpus) == spec.resource_requirements.gpu_count
        if spec.gpu_devices:
            assert set(obs.gpus) == set(spec.gpu_devices)
        if spec.port is not None:
            assert obs.port == spec.port
        ports.append(obs.port)
    assert all(used[g] <= capacity[g] for g in capacity), (used, capacity)
    assert None not in ports and len(set(ports)) == len(ports)


def protected_priority(specs: dict[str, ModelSpec]) -> dict[str, int]:
    """Below which priority nobody may preempt a model: its own; for a disabled model that runs
    only as a fallback, the highest priority it would run at for any primary."""
    best = {m: s.priority for m, s in specs.items()}
    for spec in specs.values():
        if not spec.enabled:
            continue
        effective, current, seen = spec.priority, spec.fallback, {spec.id}
        while current is not None and current not in seen:
            seen.add(current)
            effective = max(effective, specs[current].priority)
            if not specs[current].enabled:
                best[current] = max(best[current], effective)
            current = specs[current].fallback
    return best


@PROPERTY
@given(worlds())
def test_nobody_is_preempted_for_equal_or_lower_priority(world: World) -> None:
    plan = plan_of(world.desired, world.observed, world.gpus)
    protected = protected_priority(world.desired.models)
    for action in plan.actions:
        if action.action == "preempt":
            by = plan.models[preempted_by(action.reason)]
            assert by.status is Status.running
            assert by.priority > protected.get(action.model, 0), action


@PROPERTY
@given(worlds(), st.randoms(use_true_random=False))
def test_same_input_same_plan(world: World, rng) -> None:
    plan = render_json(plan_of(world.desired, world.observed, world.gpus))
    specs = list(world.desired.models.items())
    rng.shuffle(specs)
    observed = list(world.observed.items())
    rng.shuffle(observed)
    again = DesiredState(dict(specs), world.desired.cluster, world.desired.revision)
    assert render_json(plan_of(again, dict(observed), world.gpus[::-1])) == plan


@PROPERTY
@given(worlds())
def test_unchanged_running_models_are_left_alone(world: World) -> None:
    """An enabled engine whose spec, pin, count and port still match and that fits where it runs
    is not stopped, restarted or moved, unless a model of strictly higher priority preempts it.
    "Fits" counts every engine holding its GPUs: when capacity shrank under engines that all
    ran there (more memory reserved, an unmanaged process), one of them must give way."""
    plan = plan_of(world.desired, world.observed, world.gpus)
    capacity = capacity_of(world)
    held = dict.fromkeys(capacity, 0)
    for obs in world.observed.values():
        if obs.occupies:
            for g in obs.gpus:
                held[g] += obs.memory_mb
    fixed = {s.port: m for m, s in world.desired.models.items() if s.port is not None}
    for action in plan.actions:
        obs, spec = world.observed.get(action.model), world.desired.models.get(action.model)
        if obs is None or obs.status is not Status.running or spec is None or not spec.enabled:
            continue
        if obs.spec_hash not in (None, spec.spec_hash()):
            continue
        if len(obs.gpus) != spec.resource_requirements.gpu_count:
            continue
        if spec.gpu_devices and set(spec.gpu_devices) != set(obs.gpus):
            continue
        if fixed.get(obs.port, action.model) != action.model or obs.port != (spec.port or obs.port):
            continue  # its port is now another model's fixed port, or its own fixed port moved
        if any(held[g] > capacity[g] for g in obs.gpus):
            continue
        if action.action == "preempt":
            by = plan.models[preempted_by(action.reason)]
            assert by.priority > spec.priority, action
        else:
            assert action.action == "start" and "preemption" in action.reason, action
