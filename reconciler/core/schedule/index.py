"""The single-victim index: the one preemption that makes room for a one-GPU model with the least
memory freed beyond need, found on any GPU without looking at every GPU.

Most models that must preempt need one victim. Choosing it by scanning every GPU costs models x
GPUs; this index keeps every (GPU, possible victim) pair in order of the memory the GPU would have
free with the victim gone, one sorted list per victim priority, so a search is a bisection per
priority below the searcher's level.

A pair's key depends on the GPU's free memory, which changes with every placement: GPUs whose free
memory changed are only marked, and their pairs are re-keyed at the next search (most passes never
search). A model that stops being a possible victim (confirmed, preempted) leaves at once."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping

from reconciler.core.schedule.model import MAX_PRIORITY, Entry

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
