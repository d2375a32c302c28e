"""How good the scheduler's choices are: `python tests/bench/plan_quality.py` prints a report.

1. Placement: 500 random instances of at most 12 models on 1-4 GPUs, nothing running. The
   scheduler's priority-weighted placed memory (sum of priority x MiB x GPUs over placed GPU
   models) is compared with three exact optima computed with HiGHS (`pip install highspy`):
   - the rules' optimum: models in the rules' order (priority, then id), each placed whenever it
     fits next to those placed before it on some arrangement of GPUs. The gap to it is what the
     scheduler's choice of GPUs loses. Goal: mean ratio >= 0.98.
   - by priority only: as much memory as possible at priority 10, then at 9, ... even if a
     bigger model of equal priority displaces a smaller one with a lower id;
   - unconstrained: the best weighted sum, even if it leaves a higher priority out for several
     lower ones. The rules forbid both; they show what "ties by id" and strict priority cost.
2. Victims: 500 random instances where a new model of the highest priority does not fit; the
   scheduler's victim set is compared with an exhaustive search on the documented order
   (highest victim priority, number of victims, memory freed beyond need).

Prints; asserts nothing.
"""

from __future__ import annotations

import itertools
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


def scheduled_value(instance: Instance) -> int:
    result = schedule(instance.demands, [], instance.gpus, placement=instance.policy)  # type: ignore[arg-type]
    by_id = {d.id: d for d in instance.demands}
    return sum(weight(by_id[m]) for m in result.placements)


class Optimum:
    """Exact placement optima with HiGHS: x[i, g] = model i on GPU g, y[i] = model i placed."""

    def __init__(self) -> None:
        self.highs = highspy.Highs()
        self.highs.setOptionValue("output_flag", False)

    def in_order(self, instance: Instance) -> int:
        """Each model in the rules' order, if it fits with every model placed before it."""
        placed: list[Demand] = []
        for d in sorted(instance.demands, key=lambda d: (-d.priority, d.id)):
            trial = Instance(instance.gpus, [*placed, d], instance.policy)
            if len(self._solve(trial, lambda _: 1.0, {}, require=True)) == len(placed) + 1:
                placed.append(d)
        return sum(weight(d) for d in placed)

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
    ratios: dict[str, list[tuple[float, float, float]]] = {"spread": [], "pack": []}
    for _ in range(INSTANCES):
        instance = random_instance(rng)
        got = scheduled_value(instance)
        bests = (
            optimum.in_order(instance),
            optimum.lexicographic(instance),
            optimum.weighted(instance),
        )
        ratios[instance.policy].append(tuple(got / b if b else 1.0 for b in bests))  # type: ignore[arg-type]
    print(f"1. Placement: {INSTANCES} random instances, <= 12 models on 1-4 GPUs")
    head = f"{'policy':<7} {'n':>4} {'= optimum':>10} {'mean':>7} {'worst':>6}"
    print(f"   {'':<30}rules' optimum{'':<10}by priority  unconstrained")
    print(f"   {head}   {'mean':>10} {'mean':>14}")
    for policy, rows in [*ratios.items(), ("all", ratios["spread"] + ratios["pack"])]:
        rules = [r[0] for r in rows]
        equal = sum(r > 1 - 1e-9 for r in rules) / len(rules)
        print(
            f"   {policy:<7} {len(rows):>4} {equal:>10.1%} {statistics.fmean(rules):>7.4f} "
            f"{min(rules):>6.3f}   {statistics.fmean(r[1] for r in rows):>10.4f} "
            f"{statistics.fmean(r[2] for r in rows):>14.4f}"
        )
    print("   goal: mean ratio to the rules' optimum >= 0.98")


# -- victims -------------------------------------------------------------------------------


def victim_key(victims, priority: dict[str, int], need: int) -> tuple[int, int, int]:
    freed = sum(v.memory_mb * len(v.gpus) for v in victims)
    return (max(priority[v.id] for v in victims), len(victims), freed - need)


def targets_of(new: Demand, capacity: dict[int, int]) -> list[tuple[int, ...]]:
    if new.pinned:
        return [new.pinned]
    return list(itertools.combinations(sorted(capacity), new.gpu_count))


def fits(new: Demand, free: dict[int, int]) -> bool:
    return any(all(free[g] >= new.memory_mb for g in t) for t in targets_of(new, free))


def best_victims(new: Demand, running: list[Running], priority, capacity) -> tuple | None:
    eligible = [r for r in running if priority[r.id] < new.priority]
    free_now = {
        g: c - sum(r.memory_mb for r in running if g in r.gpus) for g, c in capacity.items()
    }
    targets = targets_of(new, capacity)
    best = None
    for size in range(1, len(eligible) + 1):
        for victims in itertools.combinations(eligible, size):
            free = dict(free_now)
            for v in victims:
                for g in v.gpus:
                    free[g] += v.memory_mb
            for target in targets:
                if all(free[g] >= new.memory_mb for g in target):
                    need = sum(max(0, new.memory_mb - free_now[g]) for g in target)
                    key = victim_key(victims, priority, need)
                    best = key if best is None or key < best else best
    return best


def victim_instance(rng: random.Random):
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
            priority[f"r{i}"] = rng.randint(1, 9)
    count = min(len(capacity), rng.choices([1, 2], weights=[70, 30])[0])
    pinned = tuple(sorted(rng.sample(sorted(capacity), count))) if rng.random() < 0.25 else ()
    new = Demand("a-new", 10, count, rng.randrange(2000, 16000, 500), pinned)
    return new, running, priority, capacity


def victim_report(rng: random.Random) -> None:
    kinds: dict[str, list[bool]] = {"1 GPU": [], "pinned": [], "several GPUs": []}
    needless = missed = 0
    while sum(map(len, kinds.values())) < INSTANCES:
        new, running, priority, capacity = victim_instance(rng)
        free_now = {
            g: c - sum(r.memory_mb for r in running if g in r.gpus) for g, c in capacity.items()
        }
        if fits(new, free_now):
            continue  # no preemption needed: not a victim question
        demands = [new, *(Demand(r.id, priority[r.id], len(r.gpus), r.memory_mb) for r in running)]
        gpus = [GpuCapacity(g, c) for g, c in capacity.items()]
        result = schedule(demands, running, gpus)
        victims = [r for r in running if result.preempted.get(r.id) == "a-new"]
        best = best_victims(new, running, priority, capacity)
        if best is None:
            needless += bool(victims)
            continue
        if not victims:
            missed += 1
            continue
        placed = result.placements["a-new"]
        need = sum(max(0, new.memory_mb - free_now[g]) for g in placed.gpus)
        kind = "pinned" if new.pinned else "1 GPU" if new.gpu_count == 1 else "several GPUs"
        kinds[kind].append(victim_key(victims, priority, need) == best)
    print()
    print(f"2. Victims: {INSTANCES} instances where the newcomer must preempt to fit")
    for kind, minimal in kinds.items():
        if minimal:
            share = sum(minimal) / len(minimal)
            print(f"   {kind:<13} {len(minimal):>4} instances, victim set minimal in {share:.1%}")
    everything = [m for ms in kinds.values() for m in ms]
    share = sum(everything) / len(everything)
    print(f"   all           {len(everything):>4} instances, victim set minimal in {share:.1%}")
    print(f"   preempted although no victim set makes room: {needless}")
    print(f"   room possible by preempting, but nothing preempted: {missed}")


def main() -> None:
    rng = random.Random(2024)
    placement_report(rng)
    victim_report(rng)


if __name__ == "__main__":
    main()
