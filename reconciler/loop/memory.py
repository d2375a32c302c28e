"""Memory that learns, in the loop: measure running engines, keep the figures, hand the planner
the reservation each model should get, and say when an engine outgrows its reservation.

A running engine's recorded reservation follows what was learned for its spec hash (no restart:
the same engine, better evidence), so the planner counts it at its measured size in both
directions: an over-estimate frees room for others, an under-estimate stops overbooking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from reconciler.core.desired import DesiredState
from reconciler.core.events import EventKind
from reconciler.core.memory import MemoryFigures, grown_past, record_measurement, reservation
from reconciler.core.observed import Status
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Handle
from reconciler.engines.usage import Usage, measure
from reconciler.loop.planning import Requirements
from reconciler.state.memory import Learned, read_learned, write_learned
from reconciler.state.statefile import ModelState

log = logging.getLogger("reconciler.loop.memory")

MEASURE_EVERY_S = 5.0
"""At most one measurement per engine this often: a pass can run many times a second."""

Measure = Callable[[int, bool], Usage | None]


class MemoryLearner:
    def __init__(self, state_dir: Path, measure_usage: Measure | None = None) -> None:
        self.state_dir = state_dir
        self.learned: Learned = read_learned(state_dir)
        self._measure = measure_usage or (
            lambda pid, declared: measure(pid, declared_gpus=declared)
        )
        self._measured_at: dict[str, float] = {}
        self._warned: set[tuple[str, str]] = set()

    def figures(self, model_id: str, spec_hash: str) -> MemoryFigures | None:
        return self.learned.get(model_id, {}).get(spec_hash)

    def learn(
        self,
        desired: DesiredState,
        handles: Mapping[str, list[Handle]],
        states: dict[str, ModelState],
        requirements: Requirements,
        now: float,
        event: Callable[..., None],
        *,
        dry_run: bool = False,
    ) -> None:
        """Measure the running engines that are due (not in a dry run: it writes nothing) and
        set each running engine's recorded reservation to what was learned for it."""
        declared = desired.cluster.gpus != "auto"
        changed = False
        for model_id, spec in desired.models.items():
            state = states.get(model_id)
            pid = next((h.pid for h in handles.get(model_id, []) if h.alive and h.pid), None)
            if state is None or state.status != Status.running or pid is None:
                continue
            spec_hash = state.spec_hash or spec.spec_hash()
            due = now - self._measured_at.get(model_id, float("-inf")) >= MEASURE_EVERY_S
            if due and not dry_run:
                self._measured_at[model_id] = now
                estimate = requirements.cached_estimate(spec)  # the one the planner made
                changed |= self._measure_one(
                    model_id, spec_hash, pid, state, estimate, declared, event
                )
            # every pass, not only when measured: the engine's own record keeps the figure it
            # was started with, and the planner must count what was learned since
            chosen = reservation(
                spec.resource_requirements.gpu_memory_mb, self.figures(model_id, spec_hash)
            )
            if chosen.mb is not None and chosen.basis == "measured":
                states[model_id] = replace(state, memory_mb=chosen.mb)
        if changed:
            try:
                write_learned(self.state_dir, self.learned)
            except OSError as exc:
                log.warning("could not keep the learned memory figures: %s", exc)

    def _measure_one(
        self,
        model_id: str,
        spec_hash: str,
        pid: int,
        state: ModelState,
        estimate_mb: int | None,
        declared: bool,
        event: Callable[..., None],
    ) -> bool:
        """Measure one engine; True when its figures changed."""
        try:
            usage = self._measure(pid, declared)
        except Exception:  # measuring is advisory: it must never break a pass
            log.exception("measuring %s failed", model_id)
            return False
        if usage is None:
            return False
        before = self.figures(model_id, spec_hash) or MemoryFigures(estimated_mb=estimate_mb)
        after = record_measurement(before, usage.mb, usage.measured_by)
        self._note_growth(model_id, spec_hash, state.memory_mb, usage, event)
        if after == before:
            return False
        self.learned.setdefault(model_id, {})[spec_hash] = after
        return True

    def _note_growth(
        self,
        model_id: str,
        spec_hash: str,
        reserved_mb: int,
        usage: Usage,
        event: Callable[..., None],
    ) -> None:
        key = (model_id, spec_hash)
        if not grown_past(reserved_mb, usage.mb):
            self._warned.discard(key)
            return
        if key in self._warned:
            return
        self._warned.add(key)
        what = "GPU memory" if usage.measured_by == "nvml" else "resident memory"
        event(
            EventKind.memory_exceeded,
            model_id,
            f"uses {usage.mb} MiB ({what}), more than the {reserved_mb} MiB reserved for it",
            measured_mb=usage.mb,
            reserved_mb=reserved_mb,
        )


def _measure(pid: int, declared_gpus: bool) -> Usage | None:
    return measure(pid, declared_gpus=declared_gpus)


def figures_of(
    learner: MemoryLearner,
    requirements: Requirements,
    model_id: str,
    spec: ModelSpec | None,
    record: ModelState | None,
) -> MemoryFigures | None:
    """What readers (API, metrics) show of one model: the figures learned for the spec hash
    that runs (else the one in force), with the estimate already made when none was learned.
    Never reads model files: a reader must not take the loop's time."""
    spec_hash = (record.spec_hash if record else None) or (spec.spec_hash() if spec else None)
    if spec_hash is None:
        return None
    learned = learner.figures(model_id, spec_hash) or MemoryFigures()
    if learned.estimated_mb is None and spec is not None:
        learned = replace(learned, estimated_mb=requirements.cached_estimate(spec))
    return None if learned == MemoryFigures() else learned
