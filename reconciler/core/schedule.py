"""Where each model runs: placement, preemption and fallback. PURE: no I/O, no clock, no randomness.

One pass of `schedule`:

1. Reserve what already runs and may stay where it is, before anything else, so that nothing is
   ever moved to improve packing: engines that match their spec (`Running.reusable`), engines that
   restart in place after a spec change, and engines that run only as somebody's fallback
   ("standby", held at the priority they would run at).
2. Evaluate the enabled models one at a time, highest priority first, ties by id. A reserved model
   is confirmed where it is. Any other model gets free room (spread: most free memory first; pack:
   best fit) or, failing that, room freed by preempting strictly lower-priority models that have
   not been confirmed yet. On a host with few GPUs, placement looks ahead: pack takes, of the GPUs
   where the model fits, those that leave the models to come the most room (best fit among
   equals), and spread breaks ties between equally free GPUs the same way.
   A model that cannot be placed is unschedulable and its fallback is evaluated at once. The
   fallback runs, and is protected from preemption, at max(primary priority, fallback priority),
   but it preempts only what its primary could: models of lower priority than the primary.
   (Otherwise a fallback could preempt a model its primary could not, the primary would take
   that room on the next pass, and the two would take turns.)
3. A standby fallback that no primary needed, or that its primary displaced, or a reserved engine
   that found no port at its turn, held a place that other models may have been refused for. The
   pass then runs again without reserving it, so that planning the converged system again changes
   nothing (level-triggered, no flapping).

Ports follow the same rules as memory: when the port range is exhausted, a model takes the port of
an engine that this plan stops, or else preempts the lowest-priority engine (strictly lower than
its own, not yet confirmed) that holds a port in the range.

Victims are chosen exactly (highest victim priority, then count, then memory freed beyond need,
then ids) for models on one GPU, and for pinned or multi-GPU models when the candidates are few
(a server); otherwise the cheapest GPUs are chosen one by one, which can miss the joint optimum.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from reconciler.core.gpu import GPUInfo

Policy = Literal["spread", "pack"]

MAX_PRIORITY = 10
EXACT_VICTIM_SUBSETS = 4096
"""Victim sets are searched exhaustively up to this many combinations, greedily beyond."""
LOOKAHEAD_GPUS = 16
"""Placement looks ahead on hosts with at most this many GPUs (a server); beyond, it does not."""
LOOKAHEAD_MODELS = 16
"""How many of the models to come a look-ahead tries to fit."""
LOOKAHEAD_OPTIONS = 64
"""How many GPU choices a look-ahead compares, best fit first."""
LOOKAHEAD_STEPS = 50_000
"""Trial placements a pass may spend looking ahead; then it places without (bounded time)."""

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
    while True:  # runs again only when a reservation turned out to be wasted
        one = _Pass(demands, running, gpus, placement, port_range, unreserved)
        one.run()
        if not one.wasted:
            return one.result()
        unreserved |= one.wasted


def _by_id(item: Demand | Running) -> str:
    return item.id


def _slot(d: Demand) -> tuple[int, str]:
    return (-d.priority, d.id)


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
    """A fixed port belongs to its model; a running engine keeps its port; any other model gets
    the lowest port of the range that no fixed-port model and no running engine holds.

    When the range is exhausted, a model may take the port of a running engine that holds no
    place in this pass (the plan stops it before it starts anything). Otherwise a port freed later
    in the pass would have served a model refused earlier, and the next pass would differ."""

    def __init__(
        self, port_range: tuple[int, int], demands: Sequence[Demand], running: Sequence[Running]
    ) -> None:
        self.first, self.last = port_range
        self.fixed: dict[int, str] = {}
        for d in sorted(demands, key=_by_id):
            if d.port is not None:
                self.fixed.setdefault(d.port, d.id)
        self.held: dict[int, str] = {}
        for r in sorted(running, key=_by_id):
            if r.port is not None:
                self.held.setdefault(r.port, r.id)
        self.running_port = {r.id: r.port for r in running}
        self.given: dict[str, int] = {}
        self.used: set[int] = set()
        self.next = self.first

    def own(self, d: Demand) -> int | None:
        """The port `d` has without allocating one: its fixed port, or the one it runs on."""
        if d.port is not None:
            return d.port
        port = self.running_port.get(d.id)
        if port is None or self.held.get(port) != d.id or port in self.fixed or port in self.used:
            return None
        return port

    def claim(self, model: str) -> int | None:
        """The port in the range that a running engine would give up if it were preempted."""
        port = self.running_port.get(model)
        if port is None or not self.first <= port <= self.last:
            return None
        if self.held.get(port) != model or port in self.fixed or port in self.used:
            return None
        return port

    def choose(self, d: Demand, placeless: Callable[[str], bool]) -> int | None:
        """The port `d` would get now, without taking it."""
        port = self.given.get(d.id) or self.own(d) or self._lowest()
        if port is not None:
            return port
        return next((p for p in sorted(self.held) if self._free_of(p, placeless)), None)

    def take(self, d: Demand, port: int) -> int:
        self.given[d.id] = port
        self.used.add(port)
        return port

    def exhausted(self) -> str:
        return f"no free port in {self.first}-{self.last}"

    def _lowest(self) -> int | None:
        # ports are only ever taken during a pass: everything below `next` stays taken
        while self.next <= self.last and (
            self.next in self.used or self.next in self.fixed or self.next in self.held
        ):
            self.next += 1
        return self.next if self.next <= self.last else None

    def _free_of(self, port: int, placeless: Callable[[str], bool]) -> bool:
        if not self.first <= port <= self.last or port in self.used or port in self.fixed:
            return False
        return placeless(self.held[port])


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
        self.pool_version = dict.fromkeys(self.free, 0)
        self.pools: dict[tuple[int, int], tuple[int, list[_Entry], list[int]]] = {}
        # GPUs whose free or evictable memory changed, in order: views catch up lazily
        self.touched: list[int] = []
        self.views: dict[int, tuple[_Ranked, int]] = {}
        self.entries: dict[str, _Entry] = {}
        self.failed: dict[str, str] = {}
        self.preempted: dict[str, str] = {}
        self.wasted: set[str] = set()
        self.ports = _Ports(port_range, demands, running)
        self.order: list[Demand] = []
        self.turn = 0
        self.steps_left = LOOKAHEAD_STEPS

    # -- the pass ---------------------------------------------------------------------------

    def run(self) -> None:
        self._reserve()
        self.order = sorted((d for d in self.demands.values() if d.enabled), key=_slot)
        for turn, d in enumerate(self.order):
            self.turn = turn  # placement looks ahead at the models after this one
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
            reusable = r.reusable and self.ports.own(d) == r.port
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
        if entry is not None:
            reason = self._confirm_reserved(entry, d, priority, power, fallback_for)
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

    def _confirm_reserved(
        self, e: _Entry, d: Demand, priority: int, power: int, fallback_for: str | None
    ) -> str | None:
        """A reserved engine stays where it is, on its own port unless that is now another
        model's fixed port."""
        port = self._port_for(d, power, [e])
        if port is None:  # its reservation was for nothing: run again without it
            self._remove(e)
            self.wasted.add(e.id)
            return self.ports.exhausted()
        e.port = self._take_port(d, port)
        self._unpend(e)
        e.confirmed, e.priority, e.fallback_for = True, priority, fallback_for
        return None

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
        memory = (d.memory_mb or 0) if count else 0
        lifted = self._lift(self._chain_standbys(d))
        victims: list[_Entry] = []
        gpus = self._fit(d, count, memory) if count else []
        if gpus is None:
            gpus, victims, reason = self._make_room(d, count, memory, power)
            if gpus is None:
                self._restore(lifted)
                return reason
        port = self._port_for(d, power, victims)
        if port is None:  # no port: preempt nobody
            self._restore(lifted)
            return self.ports.exhausted()
        for victim in victims:
            self._preempt(victim, d.id)
        entry = _Entry(d.id, tuple(sorted(gpus)), memory, self._take_port(d, port), priority)
        entry.confirmed, entry.fallback_for = True, fallback_for
        self._occupy(entry, pending=False)
        self._restore(lifted)
        return None

    def _port_for(
        self, d: Demand, power: int, leaving: list[_Entry]
    ) -> tuple[int, _Entry | None] | None:
        """(port, engine to preempt for it, or None), or None when there is no port for `d`.
        Engines in `leaving` hold no place once `d` is placed."""
        gone = {e.id for e in leaving}
        port = self.ports.choose(d, lambda m: m in gone or m not in self.entries)
        if port is not None:
            return port, None
        holders = (
            e
            for e in self.entries.values()
            if not e.confirmed and e.priority < power and e.id not in gone
        )
        for e in sorted(holders, key=lambda e: (e.priority, e.id)):
            claim = self.ports.claim(e.id)
            if claim is not None:
                return claim, e
        return None

    def _take_port(self, d: Demand, port: tuple[int, _Entry | None]) -> int:
        number, holder = port
        if holder is not None:
            self._preempt(holder, d.id)
        return self.ports.take(d, number)

    def _preempt(self, victim: _Entry, by: str) -> None:
        self._remove(victim)
        self.preempted[victim.id] = by

    def _fit(self, d: Demand, count: int, memory: int) -> list[int] | None:
        """GPUs with enough free memory now, or None. An engine that restarts stays where it
        runs when it fits there."""
        r = self.running.get(d.id)
        if r is not None and self._same_shape(d, r) and self._room(r.gpus, memory):
            return list(r.gpus)
        if d.pinned:
            return list(d.pinned) if self._room(d.pinned, memory) else None
        if self.policy == "pack":
            return self._pack(count, memory)
        return self._spread(count, memory)

    def _pack(self, count: int, memory: int) -> list[int] | None:
        """Best fit; on a small host, looking ahead among the GPUs where the model fits."""
        if len(self.free) > LOOKAHEAD_GPUS:
            return self.ranked.best_fit(memory, count)
        fitting = [g for _, g in self.ranked.keys if self.free[g] >= memory]
        return self._look_ahead(fitting, count, memory)

    def _spread(self, count: int, memory: int) -> list[int] | None:
        """Most free first; on a small host, ties between equally free GPUs by looking ahead."""
        top = self.ranked.top(count)
        if not self._room(top, memory):
            return None
        if len(self.free) > LOOKAHEAD_GPUS:
            return top
        least = min(self.free[g] for g in top)
        above = [g for g in top if self.free[g] > least]
        tied = [g for _, g in self.ranked.keys if self.free[g] == least]
        if len(tied) == count - len(above):
            return top
        return above + (self._look_ahead(tied, count - len(above), memory, above) or [])

    def _look_ahead(
        self, gpus: list[int], count: int, memory: int, taken: Sequence[int] = ()
    ) -> list[int] | None:
        """Of `count` GPUs among `gpus` (best fit first), those that let the models to come (in
        turn order, packed by best fit) fit best. Placing a model where it blocks fewer of those
        is what packs a host closest to the optimum; `taken` GPUs are the model's too."""
        options = list(itertools.islice(itertools.combinations(gpus, count), LOOKAHEAD_OPTIONS))
        options.sort(key=lambda option: sorted(self.free[g] for g in option))  # best fit first
        if len(options) <= 1 or self.steps_left <= 0:
            return list(options[0]) if options else None
        upcoming = self._upcoming()
        self.steps_left -= len(options) * len(upcoming)
        scores = [self._rollout((*taken, *option), memory, upcoming) for option in options]
        return list(options[scores.index(max(scores))])

    def _upcoming(self) -> list[Demand]:
        """The next models whose turn is still to come and that need new room."""
        found = []
        for i in range(self.turn + 1, len(self.order)):
            d = self.order[i]
            if d.id in self.entries or d.blocked or not d.gpus_needed or d.memory_mb is None:
                continue
            found.append(d)
            if len(found) == LOOKAHEAD_MODELS:
                break
        return found

    def _rollout(self, gpus: tuple[int, ...], memory: int, upcoming: list[Demand]) -> tuple:
        """Which of `upcoming` fit, in order, if `d` takes `gpus` and they are packed."""
        free = dict(self.free)
        for g in gpus:
            free[g] -= memory
        placed = []
        for u in upcoming:
            need = u.memory_mb or 0
            if u.pinned:
                chosen = list(u.pinned) if all(free.get(g, -1) >= need for g in u.pinned) else []
            else:
                tight = sorted((f, g) for g, f in free.items() if f >= need)[: u.gpus_needed]
                chosen = [g for _, g in tight] if len(tight) == u.gpus_needed else []
            for g in chosen:
                free[g] -= need
            placed.append(bool(chosen))
        return tuple(placed)

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
        """GPUs ranked by free memory plus what models of priority below `level` hold; brought up
        to date lazily, from the GPUs touched since the last look."""
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
        candidates = self._view(level).at_least(memory)
        if count > 1 and math.comb(len(candidates), count) <= LOOKAHEAD_OPTIONS:
            return self._victims_jointly(candidates, count, memory, level)
        # the fewest victims first (cheap: prefix sums), then the exact search on those GPUs only
        counts = [(self._victim_count(g, memory, level), g) for g in candidates]
        counts.sort()
        options = []
        for n, g in counts:
            if len(options) >= count and n > options[count - 1][0][0]:
                break
            cost, victims = self._gpu_victims(g, memory, level)
            rank = -self.free[g] if self.policy == "spread" else self.free[g]
            options.append((cost, rank, g, victims))
        options.sort(key=lambda o: o[:3])
        chosen = options[:count]
        union = {v.id: v for *_, victims in chosen for v in victims}
        return [g for _, _, g, _ in chosen], [union[v] for v in sorted(union)]

    def _victims_jointly(
        self, candidates: list[int], count: int, memory: int, level: int
    ) -> tuple[list[int], list[_Entry]]:
        """Multi-GPU model, few GPUs: every combination, each with its best victims."""
        best = None
        for gpus in itertools.combinations(sorted(candidates), count):
            victims = self._joint_victims(gpus, memory, level)
            need = sum(max(0, memory - self.free[g]) for g in gpus)
            ids = tuple(v.id for v in victims)
            rank = sorted(-self.free[g] if self.policy == "spread" else self.free[g] for g in gpus)
            key = (len(victims), _excess(victims, need), ids, rank, gpus)
            if best is None or key < best[0]:
                best = (key, list(gpus), victims)
        assert best is not None  # the view promised room on `count` GPUs
        return best[1], best[2]

    def _pool(self, gpus: Iterable[int], level: int) -> list[_Entry]:
        found = {e.id: e for g in gpus for e in self.pending_on[g].values() if e.priority < level}
        return sorted(found.values(), key=lambda e: (-e.memory_mb, e.id))

    def _gpu_pool(self, g: int, level: int) -> tuple[list[_Entry], list[int]]:
        """One GPU's possible victims below `level`, largest first, and their running sums;
        cached until a reservation on that GPU changes."""
        cached = self.pools.get((g, level))
        if cached is None or cached[0] != self.pool_version[g]:
            pool = self._pool([g], level)
            cached = (
                self.pool_version[g],
                pool,
                list(itertools.accumulate(e.memory_mb for e in pool)),
            )
            self.pools[(g, level)] = cached
        return cached[1], cached[2]

    def _victim_count(self, g: int, memory: int, level: int) -> int:
        """The fewest victims that make room on GPU g: the largest ones first."""
        need = memory - self.free[g]
        return 0 if need <= 0 else bisect_left(self._gpu_pool(g, level)[1], need) + 1

    def _gpu_victims(
        self, g: int, memory: int, level: int
    ) -> tuple[tuple[int, int, tuple[str, ...]], list[_Entry]]:
        """The best victims on one GPU: (count, excess, ids) and the entries."""
        need = memory - self.free[g]
        if need <= 0:
            return (0, 0, ()), []
        pool = self._gpu_pool(g, level)[0]
        count = self._victim_count(g, memory, level)
        if count == 1:  # the common case, without building combinations
            (excess, _), victim = min(
                ((e.memory_mb * len(e.gpus) - need, e.id), e) for e in pool if e.memory_mb >= need
            )
            return (1, excess, (victim.id,)), [victim]
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
                self.pool_version[g] += 1
            self.pending_count[e.priority] += 1
        self.entries[e.id] = e

    def _remove(self, e: _Entry) -> None:
        self._unpend(e)
        for g in e.gpus:
            self._set_free(g, self.free[g] + e.memory_mb)
        del self.entries[e.id]

    def _unpend(self, e: _Entry) -> None:
        if e.confirmed or not e.gpus or e.id not in self.pending_on[e.gpus[0]]:
            return
        for g in e.gpus:
            del self.pending_on[g][e.id]
            self.evictable[g][e.priority] -= e.memory_mb
            self.pool_version[g] += 1
            self.touched.append(g)
        self.pending_count[e.priority] -= 1

    def _set_free(self, g: int, value: int) -> None:
        self.free[g] = value
        self.ranked.set(g, value)
        self.touched.append(g)


def _excess(victims: Iterable[_Entry], need: int) -> int:
    """Memory the victims free beyond need, counting every GPU a victim holds."""
    return sum(e.memory_mb * len(e.gpus) for e in victims) - need
