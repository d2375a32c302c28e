"""How good the scheduler's choices are: `python tests/bench/plan_quality.py` prints a report.

1. Placement: 500 random instances of at most 12 models on 1-4 GPUs, nothing running. The
   scheduler's priority-weighted placed memory (sum of priority x MiB x GPUs over placed GPU
   models) is compared with three exact optima computed with HiGHS (`pip install highspy`):
   - the rules' optimum: models in the rules' order (priority, then id), each placed whenever it
     fits next to those placed before it on some arrangement of GPUs (exact: one feasibility
     MIP per model). The placed sets are compared lexicographically in the rules' order: a
     ratio above 1 would mean the scheduler beat the optimum, a defect in the oracle, and is
     reported as such. The weighted gap is what the scheduler's choice of GPUs loses.
     Goal: mean weighted ratio >= 0.98.
   - by priority only: as much memory as possible at priority 10, then at 9, ... even if a
     bigger model of equal priority displaces a smaller one with a lower id;
   - unconstrained: the best weighted sum, even if it leaves a higher priority out for several
     lower ones. The rules forbid both; they show what "ties by id" and strict priority cost.
2. Victims: 500 random instances where a newcomer (priority 2-10, engines running at 1-10, so
   equal and higher priorities stand in the way) does not fit; the scheduler's victim set is
   compared with the exact optimum of the documented order (highest victim priority, number of
   victims, memory freed beyond need), solved objective by objective with HiGHS at MIP gap 0.
   Ratio = optimum / scheduler on that order folded into one number; above 1 is a defect in the
   oracle. Newcomers that fit are counted too: any preemption for them is one in vain.

All HiGHS solves run with mip_rel_gap = mip_abs_gap = 0. The planner's time goal is judged on
make_plan end to end in plan_scale.py.

Prints; asserts nothing.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from dataclasses import dataclass

import highspy

from reconciler.core.schedule import Demand, GpuCapacity, Running, schedule

INSTANCES = 500
SIZES = [16000, 24000, 40000, 80000]


@dataclass(frozen=True)
class Instance:
    gpus: list[GpuCapacity]
    demands: list[Demand]
    policy: str


def random_instance(rng: random.Random) -> Instance:
    gpus = [GpuCapacity(i, rng.choice(SIZES)) for i in range(rng.randint(1, 4))]
    biggest = max(g.capacity_mb for g in gpus)
    demands = []
    for i in range(rng.randint(2, 12)):
        count = min(len(gpus), rng.choices([1, 2, 3], weights=[75, 20, 5])[0])
        memory = rng.randrange(1000, int(biggest * 0.8), 500)
        pinned = tuple(sorted(rng.sample(range(len(gpus)), count))) if rng.random() < 0.1 else ()
        demands.append(Demand(f"m{i:02d}", rng.randint(1, 10), count, memory, pinned))
    return Instance(gpus, demands, rng.choice(["spread", "pack"]))


def weight(d: Demand) -> int:
    return d.priority * (d.memory_mb or 0) * d.gpus_needed


def scheduled(instance: Instance) -> list[Demand]:
    result = schedule(instance.demands, [], instance.gpus, placement=instance.policy)  # type: ignore[arg-type]
    return [d for d in instance.demands if d.id in result.placements]


def rules_score(instance: Instance, placed: list[Demand]) -> int:
    """The rules' objective as one number: model k in the rules' order weighs more than every
    model after it together, so comparing scores compares the placed sets lexicographically."""
    order = sorted(instance.demands, key=lambda d: (-d.priority, d.id))
    ids = {d.id for d in placed}
    return sum(2 ** (len(order) - k) for k, d in enumerate(order) if d.id in ids)


class Optimum:
    """Exact placement optima with HiGHS: x[i, g] = model i on GPU g, y[i] = model i placed."""

    def __init__(self) -> None:
        self.highs = highspy.Highs()
        self.highs.setOptionValue("output_flag", False)
        self.highs.setOptionValue("mip_rel_gap", 0.0)
        self.highs.setOptionValue("mip_abs_gap", 0.0)

    def in_order(self, instance: Instance) -> list[Demand]:
        """The rules' optimum, exactly: each model in the rules' order if some arrangement of
        GPUs fits it with every model placed before it (a feasibility MIP per model)."""
        placed: list[Demand] = []
        for d in sorted(instance.demands, key=lambda d: (-d.priority, d.id)):
            trial = Instance(instance.gpus, [*placed, d], instance.policy)
            if len(self._solve(trial, lambda _: 1.0, {}, require=True)) == len(placed) + 1:
                placed.append(d)
        return placed

    def lexicographic(self, instance: Instance) -> int:
        """Most memory at the highest priority, then the next, ...; returns the weighted value."""
        floors: dict[int, float] = {}
        for level in sorted({d.priority for d in instance.demands}, reverse=True):
            picked = self._solve(instance, lambda d, lv=level: float(d.priority == lv), floors)
            amount = sum(d.memory_mb * d.gpus_needed for d in picked if d.priority == level)
            floors[level] = amount
        return sum(weight(d) for d in picked)

    def weighted(self, instance: Instance) -> int:
        return sum(weight(d) for d in self._solve(instance, lambda d: float(d.priority), {}))

    def _solve(
        self, instance: Instance, factor, floors: dict[int, float], require: bool = False
    ) -> list[Demand]:
        """The models an optimal placement places; with `require`, all of them or none."""
        h = self.highs
        h.clearModel()
        y = {d.id: h.addBinary() for d in instance.demands}
        if require:
            for d in instance.demands:
                h.addConstr(y[d.id] == 1)
        x = {(d.id, g.index): h.addBinary() for d in instance.demands for g in instance.gpus}
        for d in instance.demands:
            h.addConstr(sum(x[d.id, g.index] for g in instance.gpus) == d.gpus_needed * y[d.id])
            for g in instance.gpus:
                if d.pinned and g.index not in d.pinned:
                    h.addConstr(x[d.id, g.index] == 0)
        for g in instance.gpus:
            used = sum(d.memory_mb * x[d.id, g.index] for d in instance.demands)
            h.addConstr(used <= g.capacity_mb)
        for level, amount in floors.items():
            at = [d for d in instance.demands if d.priority == level]
            h.addConstr(sum(d.memory_mb * d.gpus_needed * y[d.id] for d in at) >= amount)
        h.maximize(sum(factor(d) * d.memory_mb * d.gpus_needed * y[d.id] for d in instance.demands))
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return []
        return [d for d in instance.demands if h.val(y[d.id]) > 0.5]


def placement_report(rng: random.Random) -> None:
    optimum = Optimum()
    ratios: dict[str, list[tuple[float, ...]]] = {"spread": [], "pack": []}
    defects = 0
    for _ in range(INSTANCES):
        instance = random_instance(rng)
        placed = scheduled(instance)
        got = sum(weight(d) for d in placed)
        best = optimum.in_order(instance)
        score, optimal = rules_score(instance, placed), rules_score(instance, best)
        exact = score / optimal if optimal else (1.0 if score == 0 else math.inf)
        if exact > 1:
            defects += 1
            print(f"   DEFECT IN THE ORACLE: the scheduler beats the rules' optimum: {instance}")
        bests = (
            sum(weight(d) for d in best),
            optimum.lexicographic(instance),
            optimum.weighted(instance),
        )
        ratios[instance.policy].append((exact, *(got / b if b else 1.0 for b in bests)))
    print(f"1. Placement: {INSTANCES} random instances, <= 12 models on 1-4 GPUs, against exact")
    print("   optima (HiGHS, MIP gap 0); ratio = scheduler / optimum")
    print(f"   {'':<16}rules' optimum: placed set   weighted value   by priority  unconstrained")
    print(
        f"   {'policy':<7} {'n':>4} {'= optimum':>14} {'worst':>9} {'mean':>9} {'worst':>6}"
        f" {'mean':>13} {'mean':>14}"
    )
    for policy, rows in [*ratios.items(), ("all", ratios["spread"] + ratios["pack"])]:
        equal = sum(r[0] == 1 for r in rows) / len(rows)
        print(
            f"   {policy:<7} {len(rows):>4} {equal:>14.1%} {min(r[0] for r in rows):>9.4f} "
            f"{statistics.fmean(r[1] for r in rows):>9.4f} {min(r[1] for r in rows):>6.3f} "
            f"{statistics.fmean(r[2] for r in rows):>13.4f} "
            f"{statistics.fmean(r[3] for r in rows):>14.4f}"
        )
    print(f"   ratios above 1 (defects in the oracle): {defects}")
    mean = statistics.fmean(r[1] for rows in ratios.values() for r in rows)
    print(
        f"   goal: mean weighted ratio to the rules' optimum >= 0.98: {mean:.4f} "
        f"({'meets' if mean >= 0.98 else 'MISSES'})"
    )


# -- victims -------------------------------------------------------------------------------

SCALE = 10**6
"""Weights that make one number of the lexicographic victim objective: excess and count < SCALE."""


def victim_cost(top: int, count: int, excess: int) -> int:
    return top * SCALE * SCALE + count * SCALE + excess


def targets_of(new: Demand, capacity: dict[int, int]) -> list[tuple[int, ...]]:
    if new.pinned:
        return [new.pinned]
    return list(itertools.combinations(sorted(capacity), new.gpu_count))


def fits(new: Demand, free: dict[int, int]) -> bool:
    return any(all(free[g] >= new.memory_mb for g in t) for t in targets_of(new, free))


def exact_victims(highs, new: Demand, running: list[Running], priority, free) -> int | None:
    """The lexicographic optimum with HiGHS at MIP gap 0, one objective after the other: the
    highest victim priority, then the number of victims, then the memory freed beyond need."""
    h = highs
    h.clearModel()
    memory = new.memory_mb or 0
    eligible = [r for r in running if priority[r.id] < new.priority]
    v = {r.id: h.addBinary() for r in eligible}
    x = {g: h.addBinary() for g in free}
    if new.pinned:
        for g in free:
            h.addConstr(x[g] == (1 if g in new.pinned else 0))
    else:
        h.addConstr(sum(x.values()) == new.gpu_count)
    for g in free:
        freed = sum(r.memory_mb * v[r.id] for r in eligible if g in r.gpus)
        h.addConstr(free[g] + freed >= memory * x[g])
    top = h.addVariable(lb=0, ub=10)
    for r in eligible:
        h.addConstr(top >= priority[r.id] * v[r.id])
    count = sum(v.values())
    excess = sum(r.memory_mb * len(r.gpus) * v[r.id] for r in eligible) - sum(
        max(0, memory - free[g]) * x[g] for g in free
    )
    best = []
    for objective in (top, count, excess):
        h.minimize(objective)
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        value = round(h.getInfo().objective_function_value)
        best.append(value)
        h.addConstr(objective <= value)
    return victim_cost(*best)


def scheduled_victims(new: Demand, running: list[Running], priority, capacity):
    demands = [new, *(Demand(r.id, priority[r.id], len(r.gpus), r.memory_mb) for r in running)]
    gpus = [GpuCapacity(g, c) for g, c in capacity.items()]
    result = schedule(demands, running, gpus)
    return result, [r for r in running if result.preempted.get(r.id) == new.id]


def victim_instance(rng: random.Random):
    """Engines of every priority (so equal and higher than the newcomer's occur) and newcomers
    that fit without preemption as well as ones that do not."""
    capacity = {g: rng.choice(SIZES[:3]) for g in range(rng.randint(1, 3))}
    free = dict(capacity)
    running, priority = [], {}
    for i in range(rng.randint(2, 10)):
        count = min(len(capacity), rng.choices([1, 2], weights=[80, 20])[0])
        gpus = tuple(sorted(rng.sample(sorted(capacity), count)))
        memory = rng.randrange(1000, 12000, 500)
        if all(free[g] >= memory for g in gpus):
            for g in gpus:
                free[g] -= memory
            running.append(Running(f"r{i}", gpus, memory, 8100 + i))
            priority[f"r{i}"] = rng.randint(1, 10)
    count = min(len(capacity), rng.choices([1, 2], weights=[70, 30])[0])
    pinned = tuple(sorted(rng.sample(sorted(capacity), count))) if rng.random() < 0.25 else ()
    new = Demand("a-new", rng.randint(2, 10), count, rng.randrange(2000, 16000, 500), pinned)
    return new, running, priority, capacity


def victim_report(rng: random.Random) -> None:
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.setOptionValue("mip_abs_gap", 0.0)
    kinds: dict[str, list[float]] = {"1 GPU": [], "pinned": [], "several GPUs": []}
    fitting = in_vain = needless = missed = defects = 0
    while sum(map(len, kinds.values())) < INSTANCES:
        new, running, priority, capacity = victim_instance(rng)
        free_now = {
            g: c - sum(r.memory_mb for r in running if g in r.gpus) for g, c in capacity.items()
        }
        result, victims = scheduled_victims(new, running, priority, capacity)
        if fits(new, free_now):
            fitting += 1
            in_vain += bool(victims)
            continue
        best = exact_victims(highs, new, running, priority, free_now)
        if best is None:
            needless += bool(victims)
            continue
        if not victims:
            missed += 1
            continue
        placed = result.placements[new.id]
        need = sum(max(0, new.memory_mb - free_now[g]) for g in placed.gpus)
        freed = sum(v.memory_mb * len(v.gpus) for v in victims)
        got = victim_cost(max(priority[v.id] for v in victims), len(victims), freed - need)
        ratio = best / got
        if ratio > 1:
            defects += 1
            print(f"   DEFECT IN THE ORACLE: scheduler {got} beats the optimum {best}: {new}")
        kind = "pinned" if new.pinned else "1 GPU" if new.gpu_count == 1 else "several GPUs"
        kinds[kind].append(ratio)
    print()
    print(f"2. Victims: {INSTANCES} instances where the newcomer must preempt to fit, against")
    print("   the exact lexicographic optimum (HiGHS, MIP gap 0); ratio = optimum / scheduler")
    for kind, ratios in [*kinds.items(), ("all", [r for rs in kinds.values() for r in rs])]:
        if ratios:
            exact = sum(r == 1 for r in ratios) / len(ratios)
            print(
                f"   {kind:<13} {len(ratios):>4} instances, optimal in {exact:.1%}, "
                f"worst ratio {min(ratios):.6f}"
            )
    print(f"   ratios above 1 (defects in the oracle): {defects}")
    print(f"   preempted although no victim set makes room: {needless}")
    print(f"   room possible by preempting, but nothing preempted: {missed}")
    print(
        f"   newcomers that fit without preemption: {fitting}, "
        f"of which preempted in vain: {in_vain}"
    )


def main() -> None:
    rng = random.Random(2024)
    placement_report(rng)
    victim_report(rng)


if __name__ == "__main__":
    main()
