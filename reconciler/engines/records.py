"""Who an engine process is, as its markers and its record on disk say.

Identity lives in the process itself: every engine is started with marker variables in its
environment (model id, spec hash, namespace, GPUs, port, memory, framework), so a restarted
reconciler adopts its engines by scanning the process table, with no file at all.

A small JSON record per engine (<state_dir>/engines/<id>.json, written atomically) remembers
pid, create_time, argv and start time. It is needed only for engines that died: a dead process
cannot be scanned, yet the planner must hear that it crashed. The record is the engine's
`Handle` plus what only the disk needs (namespace, argv): one field list, one conversion.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import (
    MARKER_GPUS,
    MARKER_HASH,
    MARKER_MEMORY,
    MARKER_MODEL,
    MARKER_NAMESPACE,
    MARKER_PORT,
    EnginePlacement,
    Handle,
)
from reconciler.state.files import atomic_write

log = logging.getLogger(__name__)

MARKER_FRAMEWORK = "RECONCILER_FRAMEWORK"
"""Which engine class owns a process: every process engine shares one namespace."""

_HANDLE_FIELDS = frozenset(f.name for f in dataclasses.fields(Handle))


def engine_env(
    spec: ModelSpec, placement: EnginePlacement, framework: str, namespace: str
) -> dict[str, str]:
    """Pure: the variables an engine gets on top of what it inherits (environment.py).

    spec.env first, then the placement's GPUs and the markers, so a spec can never hide an
    engine from its reconciler or escape its placement.
    """
    gpus = ",".join(str(g) for g in placement.gpus)
    return {
        **spec.env,
        "CUDA_VISIBLE_DEVICES": gpus,
        MARKER_MODEL: spec.id,
        MARKER_HASH: spec.spec_hash(),
        MARKER_NAMESPACE: namespace,
        MARKER_FRAMEWORK: framework,
        MARKER_GPUS: gpus,
        MARKER_PORT: str(placement.port),
        MARKER_MEMORY: str(placement.memory_mb),
    }


def identity_from_env(env: Mapping[str, str], namespace: str) -> Handle | None:
    """The engine a process environment names (pid and times unset), or None when not ours."""
    if env.get(MARKER_NAMESPACE) != namespace or not env.get(MARKER_MODEL):
        return None
    try:
        gpus_text = env.get(MARKER_GPUS, "")
        return Handle(
            model_id=env[MARKER_MODEL],
            framework=env.get(MARKER_FRAMEWORK, ""),
            spec_hash=env.get(MARKER_HASH, ""),
            port=int(env.get(MARKER_PORT, "0")),
            gpus=tuple(int(g) for g in gpus_text.split(",") if g),
            memory_mb=int(env.get(MARKER_MEMORY, "0")),
            started_at=0.0,
        )
    except ValueError:
        return None  # tampered markers: not an engine we can manage


@dataclass(frozen=True)
class EngineRecord:
    """<state_dir>/engines/<id>.json: the engine's handle as started, its namespace and argv."""

    namespace: str
    argv: tuple[str, ...]
    handle: Handle

    def to_json(self) -> str:
        data: dict[str, Any] = dataclasses.asdict(self.handle)
        data.update(namespace=self.namespace, argv=list(self.argv))
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineRecord:
        data = json.loads(text)
        fields = {k: v for k, v in data.items() if k in _HANDLE_FIELDS}
        fields["gpus"] = tuple(fields["gpus"])
        return cls(data["namespace"], tuple(data["argv"]), Handle(**fields))

    def observed(self, *, alive: bool, exit_code: int | None = None) -> Handle:
        """The handle as observed now (alive or exited)."""
        return dataclasses.replace(self.handle, alive=alive, exit_code=exit_code)

    def with_exit_code(self, exit_code: int) -> EngineRecord:
        return dataclasses.replace(self, handle=self.observed(alive=False, exit_code=exit_code))


class RecordStore:
    """The records of one state directory: <state_dir>/engines/<model id>.json."""

    def __init__(self, directory: Path, namespace: str) -> None:
        self.directory = directory
        self.namespace = namespace

    def path(self, model_id: str) -> Path:
        return self.directory / f"{model_id}.json"

    def write(self, record: EngineRecord) -> None:
        atomic_write(self.path(record.handle.model_id), record.to_json())

    def read(self, model_id: str) -> EngineRecord | None:
        return _read(self.path(model_id))

    def all(self) -> dict[str, EngineRecord]:
        """This namespace's records by model id; unreadable ones are skipped."""
        try:
            paths = list(self.directory.glob("*.json"))
        except OSError:
            return {}
        records = {}
        for path in paths:
            record = _read(path)
            if record is not None and record.namespace == self.namespace:
                records[record.handle.model_id] = record
        return records

    def remove(self, model_id: str) -> None:
        self.path(model_id).unlink(missing_ok=True)


def _read(path: Path) -> EngineRecord | None:
    try:
        return EngineRecord.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        # a damaged record only loses the exit report of a dead engine: drop it
        log.warning("ignoring unreadable engine record %s: %s", path, exc)
        return None
