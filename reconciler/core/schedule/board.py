"""The state of one scheduler pass: free memory per GPU, the models holding GPUs and who may be
preempted (with the single-victim index), and the ports: fixed ones, those running engines keep,
and the port range.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping, Sequence

from reconciler.core.schedule.values import (
    LOOKAHEAD_STEPS,
    MAX_PRIORITY,
    Demand,
    Entry,
    GpuCapacity,
    Policy,
    Running,
    by_id,
)

# (free with the victim gone, victim id, GPU rank, GPU, free + all the victim frees on its GPUs)
Key = tuple[int, str, int, int, int]


class VictimIndex:
    """Pairs (GPU, pending model) by priority; reads the board's `free` and `pending_on`."""

    def __init__(
        self,
        free: Mapping[int, int],
        pending_on: Mapping[int, Mapping[str, Entry]],
        *,
        spread: bool,
    ) -> None:
        self.free = free
        self.pending_on = pending_on
        self.spread = spread
        self.by_priority: list[list[Key]] = [[] for _ in range(MAX_PRIORITY + 1)]
        # the keys of each GPU's pairs, by victim: always the model's pairs in `by_priority`
        self.keys_on: dict[int, dict[str, Key]] = {g: {} for g in free}
        self.dirty: set[int] = set(free)

    def touch(self, g: int) -> None:
        """GPU g's free memory or its possible victims changed."""
        self.dirty.add(g)

    def leave(self, e: Entry) -> None:
        """`e` may no longer be preempted."""
        for g in e.gpus:
            key = self.keys_on[g].pop(e.id, None)
            if key is not None:
                self._drop(e.priority, key)

    def lowest_level(self, memory: int, power: int) -> int | None:
        """The lowest level, at most `power`, at which one victim leaves `memory` free on some
        GPU (level L may preempt priorities below L), or None."""
        self._catch_up()
        for priority in range(1, power):
            keys = self.by_priority[priority]
            if keys and keys[-1][0] >= memory:
                return priority + 1
        return None

    def best(self, memory: int, level: int) -> tuple[int, Entry] | None:
        """The GPU and the one model below `level` whose preemption leaves `memory` free on it,
        by (memory freed beyond need, victim id, GPU rank, GPU): the order the exhaustive search
        uses for one victim. None when no single victim is enough on any GPU."""
        self._catch_up()
        best: tuple[int, str, int, int] | None = None
        for keys in self.by_priority[1:level]:
            # in order of free-with-victim-gone; what a victim frees on its other GPUs only adds
            # to it, so once that alone exceeds the best total nothing further can win
            for i in range(bisect_left(keys, (memory,)), len(keys)):
                after, victim, rank, g, total = keys[i]
                if best is not None and after > best[0]:
                    break
                if best is None or (total, victim, rank, g) < best:
                    best = (total, victim, rank, g)
        if best is None:
            return None
        return best[3], self.pending_on[best[3]][best[1]]

    def _catch_up(self) -> None:
        if not self.dirty:
            return
        # when every GPU changed (the first search), sorting once beats inserting one by one
        bulk = len(self.dirty) == len(self.free)
        if bulk:
            for keys_of_priority in self.by_priority:
                keys_of_priority.clear()
        for g in self.dirty:
            keys = self.keys_on[g]
            if not bulk:
                pending = self.pending_on[g]
                for victim, key in keys.items():
                    self._drop(pending[victim].priority, key)
            keys.clear()
            free = self.free[g]
            rank = -free if self.spread else free
            for e in self.pending_on[g].values():
                key = (free + e.memory_mb, e.id, rank, g, free + e.memory_mb * len(e.gpus))
                keys[e.id] = key
                if bulk:
                    self.by_priority[e.priority].append(key)
                else:
                    insort(self.by_priority[e.priority], key)
        if bulk:
            for keys_of_priority in self.by_priority:
                keys_of_priority.sort()
        self.dirty.clear()

    def _drop(self, priority: int, key: Key) -> None:
        keys = self.by_priority[priority]
        del keys[bisect_left(keys, key)]


class Ports:
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
        for d in sorted(demands, key=by_id):
            if d.port is not None:
                self.fixed.setdefault(d.port, d.id)
        # an engine whose model now has another fixed port gives its port up whatever happens
        # (it moves or it stops): the port is free for others from the start of the pass
        fixed_of = {d.id: d.port for d in demands}
        self.held: dict[int, str] = {}
        for r in sorted(running, key=by_id):
            if r.port is not None and fixed_of.get(r.id) in (None, r.port):
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


class Ranked:
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

    def count_at_least(self, need: int) -> int:
        return len(self.keys) - bisect_left(self.keys, (need, -1))

    def most(self) -> tuple[int, int]:
        """(largest value, lowest index holding it)."""
        start = bisect_left(self.keys, (self.keys[-1][0], -1))
        return self.keys[start]


class Board:
    """Mutable state of one pass and the only code that changes GPU memory."""

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
        self.ranked = Ranked(self.free)
        # pending (not yet confirmed) entries per GPU: the only possible victims
        self.pending_on: dict[int, dict[str, Entry]] = {g: {} for g in self.free}
        self.evictable = {g: [0] * (MAX_PRIORITY + 1) for g in self.free}
        self.pending_count = [0] * (MAX_PRIORITY + 1)
        self.pool_version = dict.fromkeys(self.free, 0)
        self.pools: dict[tuple[int, int], tuple[int, list[Entry], list[int]]] = {}
        self.index = VictimIndex(self.free, self.pending_on, spread=policy == "spread")
        # GPUs whose free or evictable memory changed, in order: views catch up lazily
        self.touched: list[int] = []
        self.views: dict[int, tuple[Ranked, int]] = {}
        self.entries: dict[str, Entry] = {}
        self.failed: dict[str, str] = {}
        self.preempted: dict[str, str] = {}
        self.wasted: set[str] = set()
        self.ports = Ports(port_range, demands, running)
        self.order: list[Demand] = []
        self.turn = 0
        self.steps_left = LOOKAHEAD_STEPS

    def _room(self, gpus: Iterable[int], memory: int) -> bool:
        return all(self.free[g] >= memory for g in gpus)

    def _same_shape(self, d: Demand, r: Running) -> bool:
        """Can `d` run on the GPUs `r` runs on (count, pin, known memory)?"""
        if len(r.gpus) != d.gpus_needed or any(g not in self.free for g in r.gpus):
            return False
        if d.pinned and set(d.pinned) != set(r.gpus):
            return False
        return not r.gpus or d.memory_mb is not None

    def _occupy(self, e: Entry, *, pending: bool) -> None:
        for g in e.gpus:
            self._set_free(g, self.free[g] - e.memory_mb)
        if pending and e.gpus:
            self._pend(e)
        self.entries[e.id] = e

    def _hold(self, entries: Iterable[Entry]) -> None:
        """Reserve each of `entries` (pending), in order, where it still fits. The ranking is
        sorted once at the end instead of at every step: this is most of the engines."""
        for e in entries:
            if all(self.free.get(g, -1) >= e.memory_mb for g in e.gpus):
                for g in e.gpus:
                    self.free[g] -= e.memory_mb
                    self.index.touch(g)
                self.touched.extend(e.gpus)
                if e.gpus:
                    self._pend(e)
                self.entries[e.id] = e
        self.ranked = Ranked(self.free)

    def _pend(self, e: Entry) -> None:
        for g in e.gpus:
            self.pending_on[g][e.id] = e
            self.evictable[g][e.priority] += e.memory_mb
            self.pool_version[g] += 1
        self.pending_count[e.priority] += 1

    def _remove(self, e: Entry) -> None:
        self._unpend(e)
        for g in e.gpus:
            self._set_free(g, self.free[g] + e.memory_mb)
        del self.entries[e.id]

    def _unpend(self, e: Entry) -> None:
        if e.confirmed or not e.gpus or e.id not in self.pending_on[e.gpus[0]]:
            return
        self.index.leave(e)
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
        self.index.touch(g)  # every reservation, pending or not, changes free memory here
