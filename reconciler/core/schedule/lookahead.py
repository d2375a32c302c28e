"""Where a model goes when it fits without preemption: spread (most free first) or pack (best
fit). On a host with few GPUs, placement looks ahead: pack takes, of the GPUs where the model
fits, those that leave the models to come the most room (best fit among equals), and spread
breaks ties between equally free GPUs the same way."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cached_property

from reconciler.core.replicas import model_of
from reconciler.core.schedule.board import Board
from reconciler.core.schedule.model import (
    LOOKAHEAD_GPUS,
    LOOKAHEAD_MODELS,
    LOOKAHEAD_OPTIONS,
    Demand,
)


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
        """Models with more than one instance in this plan (reconciler.core.replicas)."""
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
