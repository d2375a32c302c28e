"""Victim choice: which lower-priority models to preempt so that a model fits.

The order minimised: the highest victim priority, then the number of victims, then the memory
freed beyond need, then the victims' ids. Exact for models on one GPU, and for pinned or
multi-GPU models when the candidates are few (a server); otherwise the cheapest GPUs are chosen
one by one, which can miss the joint optimum."""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Iterable

from reconciler.core.schedule.board import Board, Ranked
from reconciler.core.schedule.values import (
    AFTER_PREEMPTING,
    EXACT_VICTIM_SUBSETS,
    LOOKAHEAD_OPTIONS,
    Demand,
    Entry,
    names,
)


class Victims(Board):
    def _make_room(
        self, d: Demand, count: int, memory: int, power: int
    ) -> tuple[list[int], list[Entry], None] | tuple[None, list[Entry], str]:
        """Victims of priority below `power`, or the reason there is no room even so."""
        single = None
        if count == 1 and not d.pinned and not self.ranked.count_at_least(memory):
            single = self.index.lowest_level(memory, power)
        if single is None:
            if not any(self.pending_count[:power]):  # nobody may be preempted for d
                return None, [], self._no_room(d, count, memory, self.ranked, "")
            if not self._feasible(self._view(power), d, count, memory):
                view = self._view(power)
                return None, [], self._no_room(d, count, memory, view, AFTER_PREEMPTING)
        # the lowest level that makes room minimises the highest victim priority (level L may
        # preempt priorities below L); room only grows with the level, so bisect for it, below
        # the level where one victim makes room when there is one
        low, level = 2, single or power
        while low < level:
            middle = (low + level) // 2
            if any(self.pending_count[:middle]) and self._feasible(
                self._view(middle), d, count, memory
            ):
                level = middle
            else:
                low = middle + 1
        gpus, victims = self._victims(d, count, memory, level)
        return gpus, victims, None

    def _feasible(self, view: Ranked, d: Demand, count: int, memory: int) -> bool:
        if d.pinned:
            return all(view.value[g] >= memory for g in d.pinned)
        return view.count_at_least(memory) >= count

    def _no_room(self, d: Demand, count: int, memory: int, view: Ranked, suffix: str) -> str:
        if d.pinned:
            short = min(g for g in d.pinned if view.value[g] < memory)
            pins = names(sorted(d.pinned))
            return (
                f"needs {memory} MiB on pinned GPU {pins}; GPU {short} has "
                f"{view.value[short]} MiB free{suffix}"
            )
        if count == 1:
            most, index = view.most()
            return f"needs {memory} MiB on 1 GPU; most free is {most} MiB on GPU {index}{suffix}"
        n = view.count_at_least(memory)
        have = "GPU has" if n == 1 else "GPUs have"
        return f"needs {memory} MiB on each of {count} GPUs; {n} {have} that much free{suffix}"

    def _view(self, level: int) -> Ranked:
        """GPUs ranked by free memory plus what models of priority below `level` hold; brought up
        to date lazily, from the GPUs touched since the last look."""
        cached = self.views.get(level)
        if cached is None:
            view = Ranked({g: self._potential(g, level) for g in self.free})
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
    ) -> tuple[list[int], list[Entry]]:
        if d.pinned:
            return list(d.pinned), self._joint_victims(d.pinned, memory, level)
        if count == 1 and not self.ranked.count_at_least(memory):
            # no GPU needs zero victims, so one victim, if any does, is the fewest there can be
            single = self.index.best(memory, level)
            if single is not None:
                return [single[0]], [single[1]]
        candidates = self._view(level).at_least(memory)
        if count > 1 and math.comb(len(candidates), count) <= LOOKAHEAD_OPTIONS:
            return self._victims_jointly(candidates, count, memory, level)
        # the fewest victims first (cheap: prefix sums), then the exact search on those GPUs only
        counts = []
        for g in candidates:
            need = memory - self.free[g]
            sums = self._gpu_pool(g, level)[1]
            counts.append((0 if need <= 0 else bisect_left(sums, need) + 1, g))
        counts.sort()
        # (cost, rank, GPU, victims) per GPU: the best `count` of them are chosen
        options: list[tuple[tuple[int, int, tuple[str, ...]], int, int, list[Entry]]] = []
        for n, g in counts:
            if len(options) >= count and n > options[count - 1][0][0]:
                break
            cost, victims = self._gpu_victims(g, memory, level, n)
            rank = -self.free[g] if self.policy == "spread" else self.free[g]
            options.append((cost, rank, g, victims))
        options.sort(key=lambda o: o[:3])
        chosen = options[:count]
        union = {v.id: v for *_, victims in chosen for v in victims}
        return [g for _, _, g, _ in chosen], [union[v] for v in sorted(union)]

    def _victims_jointly(
        self, candidates: list[int], count: int, memory: int, level: int
    ) -> tuple[list[int], list[Entry]]:
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

    def _pool(self, gpus: Iterable[int], level: int) -> list[Entry]:
        found = {e.id: e for g in gpus for e in self.pending_on[g].values() if e.priority < level}
        return sorted(found.values(), key=lambda e: (-e.memory_mb, e.id))

    def _gpu_pool(self, g: int, level: int) -> tuple[list[Entry], list[int]]:
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
        self, g: int, memory: int, level: int, count: int | None = None
    ) -> tuple[tuple[int, int, tuple[str, ...]], list[Entry]]:
        """The best victims on one GPU: (count, excess, ids) and the entries. `count`, when
        given, is `_victim_count` for the same arguments."""
        need = memory - self.free[g]
        if need <= 0:
            return (0, 0, ()), []
        pool = self._gpu_pool(g, level)[0]
        if count is None:
            count = self._victim_count(g, memory, level)
        if count == 1:  # the common case, without building combinations
            (excess, _), victim = min(
                ((e.memory_mb * len(e.gpus) - need, e.id), e) for e in pool if e.memory_mb >= need
            )
            return (1, excess, (victim.id,)), [victim]
        if count == 2 and len(pool) * (len(pool) - 1) // 2 <= EXACT_VICTIM_SUBSETS:
            return _best_pair(pool, need)
        if math.comb(len(pool), count) <= EXACT_VICTIM_SUBSETS:
            combos: Iterable[tuple[Entry, ...]] = itertools.combinations(pool, count)
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

    def _joint_victims(self, pinned: tuple[int, ...], memory: int, level: int) -> list[Entry]:
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


def _best_pair(
    pool: list[Entry], need: int
) -> tuple[tuple[int, int, tuple[str, ...]], list[Entry]]:
    """Every pair of `pool` (largest first) that frees `need`, without building the others: the
    second of a pair only shrinks along the pool, so the search stops where it falls short."""
    best: tuple[tuple[int, str, str], Entry, Entry] | None = None
    for i, first in enumerate(pool):
        short = need - first.memory_mb
        if i + 1 == len(pool) or pool[i + 1].memory_mb < short:
            break  # every later first is no larger, and its partners no larger either
        weight = first.memory_mb * len(first.gpus)
        for j in range(i + 1, len(pool)):
            second = pool[j]
            if second.memory_mb < short:
                break
            low, high = sorted((first.id, second.id))
            key = (weight + second.memory_mb * len(second.gpus) - need, low, high)
            if best is None or key < best[0]:
                best = (key, first, second)
    assert best is not None  # the caller counted two victims that make room
    (excess, low, high), first, second = best
    return (2, excess, (low, high)), [first, second]


def _excess(victims: Iterable[Entry], need: int) -> int:
    """Memory the victims free beyond need, counting every GPU a victim holds."""
    return sum(e.memory_mb * len(e.gpus) for e in victims) - need
