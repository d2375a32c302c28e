"""The state of one pass: free memory per GPU, the models holding GPUs, and who may be preempted.

Victim choice and look-ahead read this state; only the bookkeeping here changes it, so that the
ranked views and the per-GPU victim pools stay in step with free memory."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence

from reconciler.core.schedule.index import VictimIndex
from reconciler.core.schedule.model import (
    LOOKAHEAD_STEPS,
    MAX_PRIORITY,
    Demand,
    Entry,
    GpuCapacity,
    Policy,
    Running,
)
from reconciler.core.schedule.ports import Ports


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
