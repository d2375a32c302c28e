"""Memory that learns: measure running engines, keep the figures in the state directory
(`memory.json`, so they survive restarts), and hand the planner what to reserve.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path

from reconciler.core.desired import DesiredState
from reconciler.core.estimate import MemoryFigures, grown_past, record_measurement, reservation
from reconciler.core.events import EventKind
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Handle
from reconciler.engines.holdings import Usage, measure
from reconciler.loop.planning import Requirements
from reconciler.state.directory import atomic_write

MEMORY_FILE = "memory.json"
VERSION = 1
HASHES_KEPT = 4

Learned = dict[str, dict[str, MemoryFigures]]
"""model id -> spec hash -> figures"""


def read_learned(state_dir: str | os.PathLike[str]) -> Learned:
    """What was learned; an unreadable or foreign file is nothing learned (it is only a cache of
    measurements: the next measurement rebuilds it)."""
    try:
        return parse_learned((Path(state_dir) / MEMORY_FILE).read_bytes())
    except OSError:
        return {}


def parse_learned(data: bytes) -> Learned:
    """memory.json's content, as read_learned reads it (nothing learned if it is not one)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return {}
    learned: Learned = {}
    for model_id, hashes in (doc.get("models") or {}).items():
        if not isinstance(hashes, dict):
            continue
        for spec_hash, fields in hashes.items():
            figures = _figures(fields)
            if figures is not None:
                learned.setdefault(str(model_id), {})[str(spec_hash)] = figures
    return learned


def write_learned(state_dir: str | os.PathLike[str], learned: Learned) -> None:
    models = {
        model_id: {h: asdict(f) for h, f in list(hashes.items())[-HASHES_KEPT:]}
        for model_id, hashes in sorted(learned.items())
    }
    # insertion order is age order (oldest hash first): never sort the hashes
    text = json.dumps({"version": VERSION, "models": models}, indent=1)
    atomic_write(Path(state_dir) / MEMORY_FILE, text + "\n")


def _figures(fields: object) -> MemoryFigures | None:
    if not isinstance(fields, dict):
        return None
    values = {}
    for name in ("estimated_mb", "measured_mb", "peak_mb"):
        value = fields.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return None
        values[name] = value
    measured_by = fields.get("measured_by")
    if measured_by is not None and not isinstance(measured_by, str):
        return None
    return MemoryFigures(measured_by=measured_by, **values)


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
        states: dict[str, InstanceRecord],
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
        state: InstanceRecord,
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
    record: InstanceRecord | None,
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
