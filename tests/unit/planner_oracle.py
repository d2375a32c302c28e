"""Oracles for the planner's tests, written without the production code they judge.

- `apply_plan`: what a host runs once it carried out a plan's actions, one by one (what the
  reconcile loop does), instead of the planner's own `converged_observed`.
- `best_victims`: the best victim set by brute force over every subset of the running models,
  on the lexicographic objective of DESIGN.md: the highest victim priority, then the number of
  victims, then the memory freed beyond need, then the victims' ids.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Plan

VictimKey = tuple[int, int, int, tuple[str, ...]]


def apply_plan(
    plan: Plan, observed: Mapping[str, InstanceRecord], desired: DesiredState
) -> dict[str, InstanceRecord]:
    """Carry out `plan`'s actions in order: a stop leaves the engine stopped, a preemption leaves
    it preempted, a start or restart leaves it running where the action says, from the current
    spec. Whatever no action names stays as it was."""
    after = dict(observed)
    for action in plan.actions:
        if action.action == "stop":
            after[action.model] = InstanceRecord(action.model, Status.stopped)
        elif action.action == "preempt":
            after[action.model] = InstanceRecord(action.model, Status.preempted)
        else:
            spec = desired.models[action.model]
            after[action.model] = InstanceRecord(
                action.model,
                Status.running,
                gpus=action.gpus,
                memory_mb=action.memory_mb,
                port=action.port,
                spec_hash=spec.spec_hash(),
            )
    return after


@dataclass(frozen=True)
class Engine:
    """A running engine as the victim oracle sees it."""

    id: str
    priority: int
    gpus: tuple[int, ...]
    memory_mb: int


@dataclass(frozen=True)
class Newcomer:
    id: str
    priority: int
    memory_mb: int
    gpu_count: int = 1
    pinned: tuple[int, ...] = ()


def free_now(capacity: Mapping[int, int], engines: Sequence[Engine]) -> dict[int, int]:
    free = dict(capacity)
    for e in engines:
        for g in e.gpus:
            free[g] -= e.memory_mb
    return free


def targets(new: Newcomer, capacity: Mapping[int, int]) -> list[tuple[int, ...]]:
    """Every set of GPUs the newcomer could run on."""
    if new.pinned:
        return [new.pinned]
    return [tuple(t) for t in itertools.combinations(sorted(capacity), new.gpu_count)]


def fits(new: Newcomer, free: Mapping[int, int]) -> bool:
    """Room without preempting anybody."""
    return any(all(free[g] >= new.memory_mb for g in t) for t in targets(new, free))


def victim_key(victims: Sequence[Engine], need: int) -> VictimKey:
    freed = sum(v.memory_mb * len(v.gpus) for v in victims)
    return (
        max(v.priority for v in victims),
        len(victims),
        freed - need,
        tuple(sorted(v.id for v in victims)),
    )


def need_on(new: Newcomer, gpus: Sequence[int], free: Mapping[int, int]) -> int:
    """Memory missing on `gpus` before anybody is preempted."""
    return sum(max(0, new.memory_mb - free[g]) for g in gpus)


def best_victims(
    new: Newcomer, power: int, engines: Sequence[Engine], capacity: Mapping[int, int]
) -> VictimKey | None:
    """The least victim set (by `victim_key`) of engines below priority `power` that makes room
    for `new`, or None when no set does. Every subset, every target: exponential, for a few
    engines only."""
    eligible = [e for e in engines if e.priority < power]
    before = free_now(capacity, engines)
    best: VictimKey | None = None
    for size in range(1, len(eligible) + 1):
        for victims in itertools.combinations(eligible, size):
            free = dict(before)
            for v in victims:
                for g in v.gpus:
                    free[g] += v.memory_mb
            for target in targets(new, capacity):
                if all(free[g] >= new.memory_mb for g in target):
                    key = victim_key(victims, need_on(new, target, before))
                    best = key if best is None or key < best else best
    return best
