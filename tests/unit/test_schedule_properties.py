"""Properties of the scheduler and the planner over random clusters, specs and observed states."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.desired import DesiredState
from reconciler.core.gpu import GPUInfo
from reconciler.core.observed import ObservedModel, Status
from reconciler.core.plan import Plan, converged_observed, make_plan, render_json
from reconciler.core.schedule import Demand, GpuCapacity, Running, schedule
from reconciler.core.spec import ClusterSpec, DeclaredGPU, ModelSpec

IDS = [f"m{i}" for i in range(10)]
PROPERTY = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- random worlds -------------------------------------------------------------------------


def random_cluster(rng: random.Random) -> tuple[ClusterSpec, list[GPUInfo]]:
    n = rng.choice([1, 1, 2, 2, 3, 4])
    declared = [
        DeclaredGPU(index=i, memory_mb=rng.choice([8000, 16000, 24000, 40000])) for i in range(n)
    ]
    first = 8100
    cluster = ClusterSpec(
        gpus=declared,
        reserved_memory_mb=rng.choice([0, 0, 1000]),
        placement=rng.choice(["spread", "pack"]),
        port_range=(first, first + rng.choice([2, 5, 50])),
    )
    gpus = [
        GPUInfo(g.index, g.name, g.memory_mb, unmanaged_mb=rng.choice([0, 0, 0, 2000]))
        for g in declared
    ]
    return cluster, gpus


def random_models(rng: random.Random, n_gpus: int) -> dict[str, ModelSpec]:
    ids = rng.sample(IDS, rng.randint(0, len(IDS)))
    fixed_ports = iter(rng.sample(range(8100, 8160), len(IDS)))
    models = {}
    for mid in sorted(ids):
        count = rng.choice([0, 1, 1, 1, 1, 2, 2, 3])
        count = min(count, n_gpus)
        pins = sorted(rng.sample(range(n_gpus), count)) if count and rng.random() < 0.2 else []
        later = [o for o in sorted(ids) if o > mid]
        models[mid] = ModelSpec(
            id=mid,
            framework="llama_cpp",
            model_path=f"/models/{mid}.gguf",
            priority=rng.randint(1, 10),
            gpu_devices=pins,
            parameters={"ctx-size": rng.choice([2048, 4096])},
            resource_requirements={
                "gpu_count": count,
                "gpu_memory_mb": None if rng.random() < 0.05 else rng.randrange(1000, 30000, 500),
            },
            port=next(fixed_ports) if rng.random() < 0.15 else None,
            fallback=rng.choice(later) if later and rng.random() < 0.3 else None,
            enabled=rng.random() < 0.85,
        )
    return models


def vary(rng: random.Random, models: dict[str, ModelSpec], n_gpus: int) -> dict[str, ModelSpec]:
    """A later revision: some models changed, removed or added."""
    fresh = random_models(rng, n_gpus)
    out = {}
    for mid, spec in models.items():
        roll = rng.random()
        if roll < 0.1:
            continue
        if roll < 0.3:
            spec = spec.model_copy(update={"priority": rng.randint(1, 10)})
        elif roll < 0.4:
            spec = spec.model_copy(update={"parameters": {"ctx-size": 1024}})
        elif roll < 0.45:
            spec = spec.model_copy(update={"enabled": not spec.enabled})
        out[mid] = spec
    for mid, spec in fresh.items():
        if mid not in out and rng.random() < 0.3:
            out[mid] = spec.model_copy(update={"fallback": None, "port": None})
    # keep fallbacks pointing at existing models and ports unique
    ports: set[int] = set()
    for mid, spec in list(out.items()):
        update = {}
        if spec.fallback is not None and spec.fallback not in out:
            update["fallback"] = None
        if spec.port is not None:
            if spec.port in ports:
                update["port"] = None
            ports.add(spec.port)
        if update:
            out[mid] = spec.model_copy(update=update)
    return dict(sorted(out.items()))


def memory_of(models: dict[str, ModelSpec]) -> dict[str, int | None]:
    return {m: s.resource_requirements.gpu_memory_mb for m, s in models.items()}


def plan_of(desired: DesiredState, observed, gpus) -> Plan:
    return make_plan(desired, observed, gpus, memory_of(desired.models))


def disturb(rng: random.Random, observed: dict[str, ObservedModel]) -> dict[str, ObservedModel]:
    """What happens between passes: crashes, give-ups, engines that went away."""
    out = dict(observed)
    for mid, obs in sorted(observed.items()):
        roll = rng.random()
        if roll < 0.05 and obs.occupies:
            out[mid] = ObservedModel(mid, Status.error, last_error="exit 1")
        elif roll < 0.1 and obs.occupies:
            out[mid] = ObservedModel(mid, Status.error, given_up=True, last_error="OOM")
        elif roll < 0.13:
            del out[mid]
        elif roll < 0.16 and obs.occupies:
            out[mid] = replace(obs, status=Status.starting)
        elif roll < 0.18 and obs.occupies:
            out[mid] = replace(obs, status=Status.stopping)
        elif roll < 0.25 and obs.occupies:
            out[mid] = replace(obs, spec_hash=None)  # adopted: taken as matching
    return out


def world(seed: int):
    """(desired, observed, gpus, old desired): observed is where an older revision converged."""
    rng = random.Random(seed)
    cluster, gpus = random_cluster(rng)
    old = random_models(rng, len(gpus))
    old_desired = DesiredState(old, cluster, "old")
    observed = converged_observed(plan_of(old_desired, {}, gpus), {})
    if rng.random() < 0.5:  # a second revision on top, so that fallbacks and victims run
        mid = vary(rng, old, len(gpus))
        observed = converged_observed(
            plan_of(DesiredState(mid, cluster, "mid"), observed, gpus), observed
        )
    observed = disturb(rng, observed)
    new = vary(rng, old, len(gpus))
    return DesiredState(new, cluster, "new"), observed, gpus, old_desired


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@PROPERTY
@given(seeds)
def test_converged_system_plans_nothing(seed: int) -> None:
    desired, observed, gpus, _ = world(seed)
    first = plan_of(desired, observed, gpus)
    after = converged_observed(first, observed)
    second = plan_of(desired, after, gpus)
    assert second.actions == (), (first.actions, second.actions)
    running = {m for m, o in first.models.items() if o.status is Status.running}
    assert running == {m for m, o in second.models.items() if o.status is Status.running}


def capacity_of(desired: DesiredState, gpus) -> dict[int, int]:
    reserved = desired.cluster.reserved_memory_mb
    return {g.device_id: max(0, g.memory_total - reserved - g.unmanaged_mb) for g in gpus}


def protected_priority(models: dict[str, ModelSpec]) -> dict[str, int]:
    """Below which priority nobody may preempt a model: its own; for a disabled model that runs
    only as a fallback, the highest priority it would run at for any primary."""
    best = {m: s.priority for m, s in models.items()}
    for spec in models.values():
        if not spec.enabled:
            continue
        effective, current = spec.priority, spec.fallback
        while current is not None:
            effective = max(effective, models[current].priority)
            if not models[current].enabled:
                best[current] = max(best[current], effective)
            current = models[current].fallback
    return best


@PROPERTY
@given(seeds)
def test_plan_respects_capacity_pins_counts_and_ports(seed: int) -> None:
    desired, observed, gpus, _ = world(seed)
    plan = plan_of(desired, observed, gpus)
    capacity = capacity_of(desired, gpus)
    used = {g.index: g.used_mb_after for g in plan.gpus}
    assert all(used[g] <= capacity[g] for g in capacity)
    ports = []
    for mid, out in plan.models.items():
        if out.status is not Status.running:
            continue
        spec = desired.models[mid]
        assert len(set(out.gpus)) == len(out.gpus) == spec.resource_requirements.gpu_count
        assert set(out.gpus) <= set(capacity)
        if spec.gpu_devices:
            assert set(out.gpus) == set(spec.gpu_devices)
        if spec.port is not None:
            assert out.port == spec.port
        ports.append(out.port)
    assert None not in ports and len(set(ports)) == len(ports)


@PROPERTY
@given(seeds)
def test_nobody_is_preempted_for_equal_or_lower_priority(seed: int) -> None:
    desired, observed, gpus, _ = world(seed)
    plan = plan_of(desired, observed, gpus)
    protected = protected_priority(desired.models)
    for action in plan.actions:
        if action.action == "preempt":
            by = action.reason.removeprefix("preempted by ").split(" ")[0]
            victim = protected.get(action.model, 0)
            assert plan.models[by].priority > victim, action


@PROPERTY
@given(seeds)
def test_same_input_same_plan(seed: int) -> None:
    desired, observed, gpus, _ = world(seed)
    plan = render_json(plan_of(desired, observed, gpus))
    rng = random.Random(seed)
    shuffled_models = list(desired.models.items())
    rng.shuffle(shuffled_models)
    shuffled_observed = list(observed.items())
    rng.shuffle(shuffled_observed)
    again = DesiredState(dict(shuffled_models), desired.cluster, desired.revision)
    assert render_json(plan_of(again, dict(shuffled_observed), gpus[::-1])) == plan


@PROPERTY
@given(seeds)
def test_unchanged_running_models_are_left_alone(seed: int) -> None:
    """An enabled engine whose spec, pin and count still match is not stopped, restarted or
    moved, unless a model of strictly higher priority preempts it."""
    desired, observed, gpus, _ = world(seed)
    plan = plan_of(desired, observed, gpus)
    capacity = capacity_of(desired, gpus)
    for action in plan.actions:
        obs, spec = observed.get(action.model), desired.models.get(action.model)
        if obs is None or obs.status is not Status.running or spec is None or not spec.enabled:
            continue
        if obs.spec_hash != spec.spec_hash() or obs.memory_mb > min(
            (capacity[g] for g in obs.gpus), default=obs.memory_mb
        ):
            continue
        if spec.gpu_devices and set(spec.gpu_devices) != set(obs.gpus):
            continue
        if any(o.port == obs.port for m, o in desired.models.items() if m != action.model):
            continue  # its port is now another model's fixed port
        if action.action == "preempt":
            by = action.reason.removeprefix("preempted by ").split(" ")[0]
            assert plan.models[by].priority > spec.priority
        else:
            assert action.action == "start" and "preemption" in action.reason, action


# -- victims, against an exhaustive search ---------------------------------------------------


def victim_key(
    victims: tuple[Running, ...], priority: dict[str, int], need: int
) -> tuple[int, int, int, tuple[str, ...]]:
    """What victim choice minimises: highest victim priority, count, excess, then ids."""
    freed = sum(v.memory_mb * len(v.gpus) for v in victims)
    return (
        max(priority[v.id] for v in victims),
        len(victims),
        freed - need,
        tuple(sorted(v.id for v in victims)),
    )


def best_victims(
    new: Demand, running: list[Running], priority: dict[str, int], capacity: dict[int, int]
) -> tuple | None:
    """Exhaustively: the best victim set that makes room for `new` on some GPU(s)."""
    eligible = [r for r in running if priority[r.id] < new.priority]
    candidates = (
        [new.pinned] if new.pinned else itertools.combinations(sorted(capacity), new.gpu_count)
    )
    targets = [tuple(t) for t in candidates]
    best = None
    for size in range(1, len(eligible) + 1):
        for victims in itertools.combinations(eligible, size):
            gone = {v.id for v in victims}
            free = dict(capacity)
            for r in running:
                if r.id not in gone:
                    for g in r.gpus:
                        free[g] -= r.memory_mb
            before = dict(capacity)
            for r in running:
                for g in r.gpus:
                    before[g] -= r.memory_mb
            for target in targets:
                if all(free[g] >= new.memory_mb for g in target):
                    need = sum(max(0, new.memory_mb - before[g]) for g in target)
                    key = victim_key(victims, priority, need)
                    best = key if best is None or key < best else best
    return best


@st.composite
def preemption_case(draw):
    n_gpus = draw(st.integers(1, 3))
    capacity = {g: draw(st.sampled_from([8000, 16000, 24000])) for g in range(n_gpus)}
    free = dict(capacity)
    running, priority = [], {}
    for i in range(draw(st.integers(1, 8))):
        count = draw(st.integers(1, n_gpus))
        gpus = tuple(sorted(draw(st.permutations(range(n_gpus)))[:count]))
        memory = draw(st.integers(1, 12)) * 500
        if all(free[g] >= memory for g in gpus):
            for g in gpus:
                free[g] -= memory
            running.append(Running(f"r{i}", gpus, memory, 8100 + i))
            priority[f"r{i}"] = draw(st.integers(1, 9))
    count = draw(st.integers(1, n_gpus)) if draw(st.booleans()) else 1
    pinned = (
        tuple(sorted(draw(st.permutations(range(n_gpus)))[:count])) if draw(st.booleans()) else ()
    )
    new = Demand("a-new", 10, count, draw(st.integers(1, 24)) * 500, pinned=pinned)
    return new, running, priority, capacity


@settings(max_examples=1500, deadline=None)
@given(preemption_case())
def test_victims_are_the_best_set_and_only_when_needed(case) -> None:
    """Exact on a small host (a few GPUs and candidate victims, as here)."""
    new, running, priority, capacity = case
    demands = [new, *(Demand(r.id, priority[r.id], len(r.gpus), r.memory_mb) for r in running)]
    gpus = [GpuCapacity(g, c) for g, c in capacity.items()]
    result = schedule(demands, running, gpus, port_range=(8100, 8199))
    victims = tuple(r for r in running if result.preempted.get(r.id) == "a-new")
    fits_now = best_victims(
        new,
        [],
        priority,
        {g: capacity[g] - sum(r.memory_mb for r in running if g in r.gpus) for g in capacity},
    )
    if not victims:
        assert (
            "a-new" in result.placements or best_victims(new, running, priority, capacity) is None
        )
        return
    assert fits_now is None  # preempted only because it did not fit
    placed = result.placements["a-new"]
    before = {g: capacity[g] - sum(r.memory_mb for r in running if g in r.gpus) for g in capacity}
    need = sum(max(0, new.memory_mb - before[g]) for g in placed.gpus)
    assert victim_key(victims, priority, need) == best_victims(new, running, priority, capacity)


@settings(max_examples=500, deadline=None)
@given(preemption_case())
def test_no_gpu_is_over_committed(case) -> None:
    new, running, priority, capacity = case
    demands = [new, *(Demand(r.id, priority[r.id], len(r.gpus), r.memory_mb) for r in running)]
    result = schedule(demands, running, [GpuCapacity(g, c) for g, c in capacity.items()])
    for g, size in capacity.items():
        assert sum(p.memory_mb for p in result.placements.values() if g in p.gpus) <= size
