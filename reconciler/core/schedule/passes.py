"""One pass of the scheduler: reserve what may stay, then each model in turn, with fallbacks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.core.schedule.lookahead import LookAhead
from reconciler.core.schedule.model import (
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
