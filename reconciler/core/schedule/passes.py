"""One pass of the scheduler: reserve what may stay, then each model in turn, with fallbacks; where
a model goes when it fits without preemption (spread: most free first, or pack: best fit, with
look-ahead).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from functools import cached_property

from reconciler.core.schedule.board import Board
from reconciler.core.schedule.values import (
    LOOKAHEAD_GPUS,
    LOOKAHEAD_MODELS,
    LOOKAHEAD_OPTIONS,
    MAX_PRIORITY,
    MEMORY_UNKNOWN,
    Demand,
    Entry,
    GpuCapacity,
    Placement,
    Policy,
    Running,
    Schedule,
    by_id,
    names,
    turn_order,
)
from reconciler.core.schedule.victims import Victims
from reconciler.core.serving import model_of


class LookAhead(Board):
    def _fit(self, d: Demand, count: int, memory: int) -> list[int] | None:
        """GPUs with enough free memory now, or None. An engine that restarts stays where it
        runs when it fits there."""
        r = self.running.get(d.id)
        if r is not None and self._same_shape(d, r) and self._room(r.gpus, memory):
            return list(r.gpus)
        if d.pinned:
            return list(d.pinned) if self._room(d.pinned, memory) else None
        if self.policy == "pack":
            return self._apart(d.id, count, memory, self._pack(count, memory))
        return self._apart(d.id, count, memory, self._spread(count, memory))

    @cached_property
    def _replicated(self) -> frozenset[str]:
        """Models with more than one instance in this plan (reconciler.core.serving)."""
        return frozenset(model_of(i) for i in self.demands if i != model_of(i))

    def _apart(
        self, instance: str, count: int, memory: int, chosen: list[int] | None
    ) -> list[int] | None:
        """Instances of one spec on GPUs without a sibling when enough such GPUs fit, so that
        one lost GPU takes one instance, not all (pack would stack them on one GPU); where they
        do not fit, sharing a GPU beats not running."""
        model = model_of(instance)
        if not chosen or model not in self._replicated:
            return chosen
        taken = {
            g
            for e in self.entries.values()
            if e.id != instance and model_of(e.id) == model
            for g in e.gpus
        }
        if not taken.intersection(chosen):
            return chosen
        fitting = [g for _, g in self.ranked.keys if g not in taken and self.free[g] >= memory]
        if len(fitting) < count:
            return chosen
        return fitting[:count] if self.policy == "pack" else fitting[-count:]

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

    def _rollout(
        self, gpus: tuple[int, ...], memory: int, upcoming: list[Demand]
    ) -> tuple[bool, ...]:
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
        one = Pass(demands, running, gpus, placement, port_range, unreserved)
        one.run()
        if not one.wasted:
            return one.result()
        unreserved |= one.wasted


def standby_holds(demands: Mapping[str, Demand]) -> dict[str, int]:
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


class Pass(Victims, LookAhead):
    """One run of the scheduler over mutable state; `schedule` may run it twice."""

    def run(self) -> None:
        self._reserve()
        self.order = sorted((d for d in self.demands.values() if d.enabled), key=turn_order)
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
        holds = standby_holds(self.demands)
        kept: list[tuple[int, str, int, bool]] = []
        in_place: list[tuple[int, str, int, bool]] = []
        for r in sorted(self.running.values(), key=by_id):
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
        # a port is taken at its turn: an engine this pass stops may hold it
        self._hold(
            Entry(model, gpus, memory, None, priority, standby)
            for group in (kept, in_place)
            for priority, model, memory, standby in sorted(group, key=lambda w: (-w[0], w[1]))
            for gpus in [tuple(sorted(self.running[model].gpus))]
            if len(set(gpus)) == len(gpus)
        )

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
        self, e: Entry, d: Demand, priority: int, power: int, fallback_for: str | None
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
                f"pinned GPU {names(missing)} does not exist "
                f"(GPUs: {names(sorted(self.free)) or 'none'})"
            )
        if count > len(self.free):
            return f"needs {count} GPUs but the host has {len(self.free)}"
        memory = (d.memory_mb or 0) if count else 0
        lifted = self._lift(self._chain_standbys(d))
        victims: list[Entry] = []
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
        entry = Entry(d.id, tuple(sorted(gpus)), memory, self._take_port(d, port), priority)
        entry.confirmed, entry.fallback_for = True, fallback_for
        self._occupy(entry, pending=False)
        self._restore(lifted)
        return None

    # -- ports -------------------------------------------------------------------------------

    def _port_for(
        self, d: Demand, power: int, leaving: list[Entry]
    ) -> tuple[int, Entry | None] | None:
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

    def _take_port(self, d: Demand, port: tuple[int, Entry | None]) -> int:
        number, holder = port
        if holder is not None:
            self._preempt(holder, d.id)
        return self.ports.take(d, number)

    def _preempt(self, victim: Entry, by: str) -> None:
        self._remove(victim)
        self.preempted[victim.id] = by

    # -- fallbacks on standby ----------------------------------------------------------------

    def _chain_standbys(self, d: Demand) -> list[Entry]:
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

    def _lift(self, entries: list[Entry]) -> list[Entry]:
        for e in entries:
            self._remove(e)
        return entries

    def _restore(self, lifted: list[Entry]) -> None:
        """Put lifted standbys back; one whose room its primary took is no longer reserved."""
        for e in sorted(lifted, key=lambda e: e.id):
            if self._room(e.gpus, e.memory_mb):
                self._occupy(e, pending=True)
            else:
                self.wasted.add(e.id)
