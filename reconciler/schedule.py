"""Where each model runs: placement, preemption and fallback. PURE: no I/O, no clock, no randomness.

One pass of `schedule`:

1. Reserve what already runs and may stay where it is, before anything else, so that nothing is
   ever moved to improve packing: engines that match their spec (`Running.reusable`), engines that
   restart in place after a spec change, and engines that run only as somebody's fallback
   ("standby", held at the priority they would run at).
2. Evaluate the enabled models one at a time, highest priority first, ties by id. A reserved model
   is confirmed where it is. Any other model gets free room (spread: most free memory first; pack:
   best fit) or, failing that, room freed by preempting strictly lower-priority models that have
   not been confirmed yet. A model that cannot be placed is unschedulable and its fallback is
   evaluated at once. The fallback runs, and is protected from preemption, at max(primary
   priority, fallback priority), but it preempts only what its primary could: models of lower
   priority than the primary. (Otherwise a fallback could preempt a model its primary could not,
   the primary would take that room on the next pass, and the two would take turns.)
3. A standby fallback that no primary needed, or that its primary displaced, was a reservation that
   other models may have been refused for. The pass then runs again without reserving it, so that
   planning the converged system again changes nothing (level-triggered, no flapping). Likewise,
   when a model found no free port while engines this plan stops hold ports, the pass runs again
   with those ports free (the plan stops engines before it starts any).

Victims are chosen exactly (highest victim priority, then count, then memory freed beyond need,
then ids) for models on one GPU and for pinned models with few candidate victims; for unpinned
multi-GPU models the cheapest GPUs are chosen one by one, which can miss the joint optimum.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from reconciler.gpus import GPUInfo

Policy = Literal["spread", "pack"]

MAX_PRIORITY = 10
EXACT_VICTIM_SUBSETS = 4096
"""Victim sets are searched exhaustively up to this many combinations, greedily beyond."""

MEMORY_UNKNOWN = "GPU memory requirement unknown: set resource_requirements.gpu_memory_mb"
AFTER_PREEMPTING = " after preempting every lower priority"


@dataclass(frozen=True)
class Demand:
    """A model the desired state asks for (enabled) or may need as a fallback (disabled)."""

    id: str
    priority: int
    gpu_count: int = 1
    memory_mb: int | None = None
    """MiB per GPU; None = unknown, which makes a GPU model unschedulable."""
    pinned: tuple[int, ...] = ()
    port: int | None = None
    """A fixed port; None = one from the port range."""
    fallback: str | None = None
    enabled: bool = True
    blocked: str | None = None
    """Why the model must not be placed now (e.g. retries exhausted); its fallback runs instead."""

    @property
    def gpus_needed(self) -> int:
        return len(self.pinned) if self.pinned else self.gpu_count


@dataclass(frozen=True)
class Running:
    """An engine that holds GPUs and a port now."""

    id: str
    gpus: tuple[int, ...]
    memory_mb: int
    """Reservation per GPU, in MiB."""
    port: int | None
    reusable: bool = True
    """The engine matches the current spec, pin and gpu_count: it may stay where it is."""


@dataclass(frozen=True)
class GpuCapacity:
    index: int
    capacity_mb: int
    """Memory our engines may use: total - reserved - used by processes we do not manage."""


@dataclass(frozen=True)
class Placement:
    id: str
    gpus: tuple[int, ...]
    memory_mb: int
    port: int | None
    priority: int
    """Effective priority: a fallback runs at max(primary priority, its own)."""
    fallback_for: str | None = None


@dataclass(frozen=True)
class Schedule:
    placements: dict[str, Placement]
    preempted: dict[str, str]
    """victim id -> id of the model it was preempted for (a victim may be placed again)."""
    unschedulable: dict[str, str]
    """model id -> why it cannot be placed (victims are listed in `preempted` instead)."""


def capacities(gpus: Sequence[GPUInfo], reserved_mb: int = 0) -> list[GpuCapacity]:
    """Per-GPU memory our engines may use, sorted by index."""
    return [
        GpuCapacity(g.device_id, max(0, g.memory_total - reserved_mb - g.unmanaged_mb))
        for g in sorted(gpus, key=lambda g: g.device_id)
    ]


def schedule(
    demands: Sequence[Demand],
    running: Sequence[Running],
    gpus: Sequence[GpuCapacity],
    *,
    placement: Policy = "spread",
    port_range: tuple[int, int] = (8100, 8199),
) -> Schedule:
    """Place `demands` on `gpus`, keeping what runs where it is; deterministic for equal input."""
    for d in demands:
        if not 1 <= d.priority <= MAX_PRIORITY:
            raise ValueError(f"{d.id}: priority {d.priority} is outside 1..{MAX_PRIORITY}")
    unreserved: frozenset[str] = frozenset()
    released: frozenset[int] = frozenset()
    while True:  # runs again only when a reservation or a held port turned out to be wasted
        one = _Pass(demands, running, gpus, placement, port_range, unreserved, released)
        one.run()
        freed = one.ports_to_release() - released
        if not one.wasted and not freed:
            return one.result()
        unreserved |= one.wasted
        released |= freed


def _by_id(item: Demand | Running) -> str:
    return item.id


def _slot(d: Demand) -> tuple[int, str]:
    return (d.priority, d.id)


def _names(indexes: Iterable[int]) -> str:
    return ", ".join(map(str, indexes))


class _Ranked:
    """GPU indexes sorted by a value (free memory, or free memory plus what may be preempted):
    most-free and best-fit queries in O(log G). Ties go to the lowest index."""

    def __init__(self, values: Mapping[int, int]) -> None:
        self.value = dict(values)
        self.keys = sorted((v, i) for i, v in self.value.items())

    def set(self, index: int, value: int) -> None:
        old = self.value[index]
        if old != value:
            del self.keys[bisect_left(self.keys, (old, index))]
            insort(self.keys, (value, index))
            self.value[index] = value

    def top(self, k: int) -> list[int]:
        """The k GPUs with the largest values."""
        if not 0 < k <= len(self.keys):
            return []
        threshold = self.keys[-k][0]
        above = [i for _, i in self.keys[bisect_left(self.keys, (threshold + 1, -1)) :]]
        start = bisect_left(self.keys, (threshold, -1))
        return above + [i for _, i in self.keys[start : start + k - len(above)]]

    def best_fit(self, need: int, k: int) -> list[int] | None:
        """The k GPUs with the smallest values that are still >= need."""
        start = bisect_left(self.keys, (need, -1))
        if len(self.keys) - start < k:
            return None
        return [i for _, i in self.keys[start : start + k]]

    def at_least(self, need: int) -> list[int]:
        return [i for _, i in self.keys[bisect_left(self.keys, (need, -1)) :]]

    def most(self) -> tuple[int, int]:
        """(largest value, lowest index holding it)."""
        start = bisect_left(self.keys, (self.keys[-1][0], -1))
        return self.keys[start]


class _Ports:
    """A fixed port belongs to its model; a running model keeps its port; any other model gets the
    lowest port of the range that no fixed-port model and no running engine holds."""

    def __init__(
        self,
        port_range: tuple[int, int],
        demands: Sequence[Demand],
        running: Sequence[Running],
        released: frozenset[int],
    ) -> None:
        self.first, self.last = port_range
        self.released = released
        self.fixed: dict[int, str] = {}
        for d in sorted(demands, key=_by_id):
            if d.port is not None:
                self.fixed.setdefault(d.port, d.id)
        self.held: dict[int, str] = {}
        for r in sorted(running, key=_by_id):
            if r.port is not None and r.port not in released:
                self.held.setdefault(r.port, r.id)
        self.running_port = {r.id: r.port for r in running}
        self.taken = set(self.fixed) | set(self.held)
        self.given: dict[str, int] = {}
        self.next = self.first

    def own(self, d: Demand) -> int | None:
        """The port `d` has without allocating one: its fixed port, or the one it runs on."""
        if d.port is not None:
            return d.port
        port = self.running_port.get(d.id)
        if port is not None and self.held.get(port) == d.id and port not in self.fixed:
            return port
        return None

    def available(self, d: Demand) -> bool:
        return d.id in self.given or self.own(d) is not None or self._lowest() is not None

    def take(self, d: Demand) -> int | None:
        port = self.given.get(d.id) or self.own(d) or self._lowest()
        if port is not None:
            self.given[d.id] = port
            self.taken.add(port)
        return port

    def exhausted(self) -> str:
        return f"no free port in {self.first}-{self.last}"

    def _lowest(self) -> int | None:
        # ports are only ever taken during a pass, so everything below `next` stays taken
        while self.next <= self.last and self.next in self.taken:
            self.next += 1
        return self.next if self.next <= self.last else None


@dataclass(slots=True, eq=False)
class _Entry:
    """A model holding GPUs during a pass: reserved (pending until its turn) or confirmed."""

    id: str
    gpus: tuple[int, ...]
    memory_mb: int
    port: int | None
    priority: int
    standby: bool = False
    confirmed: bool = False
    fallback_for: str | None = None


def _standby_holds(demands: Mapping[str, Demand]) -> dict[str, int]:
    """For each disabled model that some enabled model's fallback chain reaches: the highest
    priority it would run at as a fallback (max over the chain of the priorities so far)."""
    holds: dict[str, int] = {}
    for d in demands.values():
        if not d.enabled:
            continue
        effective, seen = d.priority, {d.id}
        current = demands.get(d.fallback) if d.fallback else None
        while current is not None and current.id not in seen:
            seen.add(current.id)
            effective = max(effective, current.priority)
            if not current.enabled:
                holds[current.id] = max(holds.get(current.id, 0), effective)
            current = demands.get(current.fallback) if current.fallback else None
    return holds


class _Pass:
    """One run of the scheduler over mutable state; `schedule` may run it twice (see above)."""

    def __init__(
        self,
        demands: Sequence[Demand],
        running: Sequence[Running],
        gpus: Sequence[GpuCapacity],
        policy: Policy,
        port_range: tuple[int, int],
        unreserved: frozenset[str],
        released: frozenset[int],
    ) -> None:
        self.demands = {d.id: d for d in demands}
        self.running = {r.id: r for r in running}
        self.policy = policy
        self.unreserved = unreserved
        self.free = {g.index: g.capacity_mb for g in gpus}
        self.ranked = _Ranked(self.free)
        # pending (not yet confirmed) entries per GPU: the only possible victims
        self.pending_on: dict[int, dict[str, _Entry]] = {g: {} for g in self.free}
        self.evictable = {g: [0] * (MAX_PRIORITY + 1) for g in self.free}
        self.pending_count = [0] * (MAX_PRIORITY + 1)
        # GPUs whose free or evictable memory changed, in order: views catch up lazily
        self.touched: list[int] = []
        self.views: dict[int, tuple[_Ranked, int]] = {}
        self.entries: dict[str, _Entry] = {}
        self.failed: dict[str, str] = {}
        self.preempted: dict[str, str] = {}
        self.wasted: set[str] = set()
        self.ports = _Ports(port_range, demands, running, released)
        self.port_starved = False

    # -- the pass ---------------------------------------------------------------------------

    def run(self) -> None:
        self._reserve()
        for d in sorted((d for d in self.demands.values() if d.enabled), key=_slot):
            self._evaluate(d, d.priority, d.priority, None, ())
        self.wasted.update(e.id for e in self.entries.values() if e.standby and not e.confirmed)

    def result(self) -> Schedule:
        placements = {
            e.id: Placement(e.id, e.gpus, e.memory_mb, e.port, e.priority, e.fallback_for)
            for e in sorted(self.entries.values(), key=lambda e: e.id)
            if e.confirmed
        }
        preempted = {v: self.preempted[v] for v in sorted(self.preempted)}
        unschedulable = {m: self.failed[m] for m in sorted(self.failed) if m not in preempted}
        return Schedule(placements, preempted, unschedulable)

    def ports_to_release(self) -> frozenset[int]:
        """Ports held by engines this pass does not keep, when somebody needed a port."""
        if not self.port_starved:
            return frozenset()
        placed = {e.id for e in self.entries.values() if e.confirmed}
        return frozenset(
            r.port for r in self.running.values() if r.port is not None and r.id not in placed
        )

    def _reserve(self) -> None:
        """Hold the places of running engines that may stay, highest priority first, then of
        engines that restart in place in what is left. One that does not fit (capacity shrank,
        or its memory grew) is placed at its turn like any other model."""
        holds = _standby_holds(self.demands)
        kept: list[tuple[int, str, int, bool]] = []
        in_place: list[tuple[int, str, int, bool]] = []
        for r in sorted(self.running.values(), key=_by_id):
            d = self.demands.get(r.id)
            if d is None or d.blocked or r.id in self.unreserved:
                continue
            # a port released for a rerun does not make its engine any less reusable
            keeps_port = self.ports.own(d) == r.port or r.port in self.ports.released
            reusable = r.reusable and keeps_port
            if d.enabled and reusable:
                kept.append((d.priority, r.id, r.memory_mb, False))
            elif d.enabled and self._same_shape(d, r):
                # nobody of equal or lower priority takes its GPUs while it restarts
                in_place.append((d.priority, r.id, d.memory_mb or 0, False))
            elif not d.enabled and reusable and r.id in holds:
                kept.append((holds[r.id], r.id, r.memory_mb, True))
        for group in (kept, in_place):
            for priority, model, memory, standby in sorted(group, key=lambda w: (-w[0], w[1])):
                gpus = tuple(sorted(self.running[model].gpus))
                if len(set(gpus)) == len(gpus) and all(
                    self.free.get(g, -1) >= memory for g in gpus
                ):
                    # its port is taken at its turn: an engine this pass stops may hold it
                    self._occupy(_Entry(model, gpus, memory, None, priority, standby), pending=True)

    def _same_shape(self, d: Demand, r: Running) -> bool:
        """Can `d` run on the GPUs `r` runs on (count, pin, known memory)?"""
        if len(r.gpus) != d.gpus_needed or any(g not in self.free for g in r.gpus):
            return False
        if d.pinned and set(d.pinned) != set(r.gpus):
            return False
        return not r.gpus or d.memory_mb is not None

    def _evaluate(
        self,
        d: Demand,
        priority: int,
        power: int,
        fallback_for: str | None,
        chain: tuple[str, ...],
    ) -> bool:
        """Place or confirm `d` at `priority`, preempting only below `power` (the priority of the
        enabled model whose turn it is); on failure, fall back along its chain."""
        entry = self.entries.get(d.id)
        if entry is not None and entry.confirmed:
            return True
        if entry is not None and self.ports.available(d):
            self._confirm(entry, priority, fallback_for, self.ports.take(d))
            return True
        if entry is not None:
            self._remove(entry)
            reason = self._no_port()
        elif d.id in self.failed:  # already tried at a priority at least as high
            return False
        else:
            reason = self._place(d, priority, power, fallback_for)
        if reason is None:
            return True
        self.failed[d.id] = (
            reason if fallback_for is None else f"fallback for {fallback_for}: {reason}"
        )
        fallback = self.demands.get(d.fallback) if d.fallback else None
        if fallback is not None and fallback.id not in chain:
            effective = max(priority, fallback.priority)
            self._evaluate(fallback, effective, power, d.id, (*chain, d.id))
        return False

    def _place(self, d: Demand, priority: int, power: int, fallback_for: str | None) -> str | None:
        """Place `d` now, preempting if it must; the reason when it cannot be placed."""
        if d.blocked:
            return d.blocked
        count = d.gpus_needed
        if count and d.memory_mb is None:
            return MEMORY_UNKNOWN
        missing = [g for g in d.pinned if g not in self.free]
        if missing:
            return (
                f"pinned GPU {_names(missing)} does not exist "
                f"(GPUs: {_names(sorted(self.free)) or 'none'})"
            )
        if count > len(self.free):
            return f"needs {count} GPUs but the host has {len(self.free)}"
        if not self.ports.available(d):
            return self._no_port()
        memory = d.memory_mb or 0 if count else 0
        lifted = self._lift(self._chain_standbys(d))
        victims: list[_Entry] = []
        gpus = self._fit(d, count, memory) if count else []
        if gpus is None:
            gpus, victims, reason = self._make_room(d, count, memory, power)
            if gpus is None:
                self._restore(lifted)
                return reason
        for victim in victims:
            self._remove(victim)
            self.preempted[victim.id] = d.id
        entry = _Entry(d.id, tuple(sorted(gpus)), memory, self.ports.take(d), priority)
        entry.confirmed, entry.fallback_for = True, fallback_for
        self._occupy(entry, pending=False)
        self._restore(lifted)
        return None

    def _no_port(self) -> str:
        self.port_starved = True
        return self.ports.exhausted()

    def _fit(self, d: Demand, count: int, memory: int) -> list[int] | None:
        """GPUs with enough free memory now, or None. An engine that restarts stays where it
        runs when it fits there."""
        r = self.running.get(d.id)
        if r is not None and self._same_shape(d, r) and self._room(r.gpus, memory):
            return list(r.gpus)
        if d.pinned:
            return list(d.pinned) if self._room(d.pinned, memory) else None
        if self.policy == "pack":
            return self.ranked.best_fit(memory, count)
        top = self.ranked.top(count)
        return top if self._room(top, memory) else None

    def _room(self, gpus: Iterable[int], memory: int) -> bool:
        return all(self.free[g] >= memory for g in gpus)

    # -- fallbacks on standby ----------------------------------------------------------------

    def _chain_standbys(self, d: Demand) -> list[_Entry]:
        """Standby fallbacks in `d`'s fallback chain: their reservation counts as free for `d`."""
        found, seen, current = [], {d.id}, d.fallback
        while current is not None and current not in seen:
            seen.add(current)
            entry = self.entries.get(current)
            if entry is not None and entry.standby and not entry.confirmed:
                found.append(entry)
            nxt = self.demands.get(current)
            current = nxt.fallback if nxt else None
        return found

    def _lift(self, entries: list[_Entry]) -> list[_Entry]:
        for e in entries:
            self._remove(e)
        return entries

    def _restore(self, lifted: list[_Entry]) -> None:
        """Put lifted standbys back; one whose room its primary took is no longer reserved."""
        for e in sorted(lifted, key=lambda e: e.id):
            if self._room(e.gpus, e.memory_mb):
                self._occupy(e, pending=True)
            else:
                self.wasted.add(e.id)

    # -- preemption --------------------------------------------------------------------------

    def _make_room(
        self, d: Demand, count: int, memory: int, power: int
    ) -> tuple[list[int], list[_Entry], None] | tuple[None, list[_Entry], str]:
        """Victims of priority below `power`, or the reason there is no room even so."""
        if not any(self.pending_count[:power]):  # nobody may be preempted for d
            return None, [], self._no_room(d, count, memory, self.ranked, "")
        if not self._feasible(self._view(power), d, count, memory):
            return None, [], self._no_room(d, count, memory, self._view(power), AFTER_PREEMPTING)
        # the lowest level that makes room minimises the highest victim priority (level L may
        # preempt priorities below L)
        level = next(
            L
            for L in range(2, power + 1)
            if any(self.pending_count[:L]) and self._feasible(self._view(L), d, count, memory)
        )
        gpus, victims = self._victims(d, count, memory, level)
        return gpus, victims, None

    def _feasible(self, view: _Ranked, d: Demand, count: int, memory: int) -> bool:
        if d.pinned:
            return all(view.value[g] >= memory for g in d.pinned)
        return len(view.at_least(memory)) >= count

    def _no_room(self, d: Demand, count: int, memory: int, view: _Ranked, suffix: str) -> str:
        if d.pinned:
            short = min(g for g in d.pinned if view.value[g] < memory)
            pins = _names(sorted(d.pinned))
            return (
                f"needs {memory} MiB on pinned GPU {pins}; GPU {short} has "
                f"{view.value[short]} MiB free{suffix}"
            )
        if count == 1:
            most, index = view.most()
            return f"needs {memory} MiB on 1 GPU; most free is {most} MiB on GPU {index}{suffix}"
        n = len(view.at_least(memory))
        have = "GPU has" if n == 1 else "GPUs have"
        return f"needs {memory} MiB on each of {count} GPUs; {n} {have} that much free{suffix}"

    def _view(self, level: int) -> _Ranked:
        """GPUs ranked by free memory plus what models of priority below `level` hold."""
        cached = self.views.get(level)
        if cached is None:
            view = _Ranked({g: self._potential(g, level) for g in self.free})
        else:
            view, seen = cached
            for g in sorted(set(self.touched[seen:])):
                view.set(g, self._potential(g, level))
        self.views[level] = (view, len(self.touched))
        return view

    def _potential(self, g: int, level: int) -> int:
        return self.free[g] + sum(self.evictable[g][:level])

    def _victims(
        self, d: Demand, count: int, memory: int, level: int
    ) -> tuple[list[int], list[_Entry]]:
        if d.pinned:
            return list(d.pinned), self._joint_victims(d.pinned, memory, level)
        options = []
        for g in self._view(level).at_least(memory):
            cost, victims = self._gpu_victims(g, memory, level)
            rank = -self.free[g] if self.policy == "spread" else self.free[g]
            options.append((cost, rank, g, victims))
        options.sort(key=lambda o: o[:3])
        chosen = options[:count]
        union = {v.id: v for *_, victims in chosen for v in victims}
        return [g for _, _, g, _ in chosen], [union[v] for v in sorted(union)]

    def _pool(self, gpus: Iterable[int], level: int) -> list[_Entry]:
        found = {e.id: e for g in gpus for e in self.pending_on[g].values() if e.priority < level}
        return sorted(found.values(), key=lambda e: (-e.memory_mb, e.id))

    def _gpu_victims(
        self, g: int, memory: int, level: int
    ) -> tuple[tuple[int, int, tuple[str, ...]], list[_Entry]]:
        """The best victims on one GPU: (count, excess, ids) and the entries."""
        need = memory - self.free[g]
        if need <= 0:
            return (0, 0, ()), []
        pool = self._pool([g], level)
        total, count = 0, 0
        for e in pool:  # largest first: the fewest victims that free enough
            total, count = total + e.memory_mb, count + 1
            if total >= need:
                break
        if math.comb(len(pool), count) <= EXACT_VICTIM_SUBSETS:
            combos: Iterable[tuple[_Entry, ...]] = itertools.combinations(pool, count)
        else:  # too many: the count-1 largest and the smallest one that completes them
            head, short = pool[: count - 1], need - sum(e.memory_mb for e in pool[: count - 1])
            last = min(
                (e for e in pool[count - 1 :] if e.memory_mb >= short),
                key=lambda e: (e.memory_mb * len(e.gpus), e.id),
            )
            combos = [(*head, last)]
        key, best = min(
            ((_excess(c, need), tuple(sorted(e.id for e in c))), c)
            for c in combos
            if sum(e.memory_mb for e in c) >= need
        )
        return (count, *key), list(best)

    def _joint_victims(self, pinned: tuple[int, ...], memory: int, level: int) -> list[_Entry]:
        """Fewest victims (then least excess, then ids) that make room on every pinned GPU."""
        needs = {g: memory - self.free[g] for g in pinned if self.free[g] < memory}
        pool = self._pool(needs, level)
        budget = 0
        for size in range(1, len(pool) + 1):
            budget += math.comb(len(pool), size)
            if budget > EXACT_VICTIM_SUBSETS:
                break
            fitting = [
                ((_excess(c, sum(needs.values())), tuple(sorted(e.id for e in c))), c)
                for c in itertools.combinations(pool, size)
                if all(sum(e.memory_mb for e in c if g in e.gpus) >= n for g, n in needs.items())
            ]
            if fitting:
                return sorted(min(fitting, key=lambda f: f[0])[1], key=lambda e: e.id)
        union = {v.id: v for g in sorted(needs) for v in self._gpu_victims(g, memory, level)[1]}
        return [union[v] for v in sorted(union)]

    # -- bookkeeping -------------------------------------------------------------------------

    def _occupy(self, e: _Entry, *, pending: bool) -> None:
        for g in e.gpus:
            self._set_free(g, self.free[g] - e.memory_mb)
        if pending and e.gpus:
            for g in e.gpus:
                self.pending_on[g][e.id] = e
                self.evictable[g][e.priority] += e.memory_mb
            self.pending_count[e.priority] += 1
        self.entries[e.id] = e

    def _remove(self, e: _Entry) -> None:
        self._unpend(e)
        for g in e.gpus:
            self._set_free(g, self.free[g] + e.memory_mb)
        del self.entries[e.id]

    def _confirm(
        self, e: _Entry, priority: int, fallback_for: str | None, port: int | None
    ) -> None:
        self._unpend(e)
        e.confirmed, e.priority, e.fallback_for, e.port = True, priority, fallback_for, port

    def _unpend(self, e: _Entry) -> None:
        if e.confirmed or not e.gpus or e.id not in self.pending_on[e.gpus[0]]:
            return
        for g in e.gpus:
            del self.pending_on[g][e.id]
            self.evictable[g][e.priority] -= e.memory_mb
            self.touched.append(g)
        self.pending_count[e.priority] -= 1

    def _set_free(self, g: int, value: int) -> None:
        self.free[g] = value
        self.ranked.set(g, value)
        self.touched.append(g)


def _excess(victims: Iterable[_Entry], need: int) -> int:
    """Memory the victims free beyond need, counting every GPU a victim holds."""
    return sum(e.memory_mb * len(e.gpus) for e in victims) - need
