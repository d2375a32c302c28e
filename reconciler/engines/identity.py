"""Who an engine is and what it inherits: its markers, its environment, its record on disk.

Identity lives in the process itself: every engine is started with marker variables in its
environment (model id, spec hash, namespace, GPUs, port, memory, framework), so a restarted
reconciler adopts its engines by scanning the process table, with no file at all.

What an engine inherits from the host is a short allow list, nothing else. An engine runs
whatever a spec author chose (an image, a flag, a model's own code), so it must not see the
daemon's secrets: the API token, the gateway keys, the SMTP password, or any other variable of
the operator's environment file. A deny list misses the next secret someone adds; an allow list
does not. Engines get the variables a process needs to run and to find its GPUs and model cache
(PASS_THROUGH), then the spec's `env`, then the reconciler's own values (GPUs, markers): never a
`RECONCILER_*` variable of the host, whatever the list says. What is not on the list is missing
on purpose: proxies (their URLs may carry a password), SSL and credential files, PYTHON*
settings. A spec that needs such a value sets it in its `env` (in git, where a reviewer sees it).

A small JSON record per engine (<state_dir>/engines/<id>.json, written atomically) remembers
pid, create_time, argv and start time. It is needed only for engines that died: a dead process
cannot be scanned, yet the planner must hear that it crashed. The record is the engine's
`Handle` plus what only the disk needs (namespace, argv).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
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
from reconciler.state.directory import atomic_write

log = logging.getLogger(__name__)

MARKER_FRAMEWORK = "RECONCILER_FRAMEWORK"
"""Which engine class owns a process: every process engine shares one namespace."""

PASS_THROUGH = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
)
"""Names a process needs to run: find executables and libraries, its home, time and locale."""
PASS_THROUGH_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "HF_")
"""Locale categories; the GPU stack's settings; the Hugging Face cache and hub settings, where
engines find (or fetch) model files (HF_TOKEN included: engines read gated models with it)."""
HOST_ONLY_PREFIX = "RECONCILER_"
"""The daemon's own settings and every secret git may name: never an engine's."""


def passes_through(name: str) -> bool:
    """True when an engine inherits the host's variable `name`."""
    if name.startswith(HOST_ONLY_PREFIX):
        return False
    return name in PASS_THROUGH or name.startswith(PASS_THROUGH_PREFIXES)


def inherited_env(environ: Mapping[str, str], dropped: Iterable[str] = ()) -> dict[str, str]:
    """The host variables an engine starts with; `dropped` (compared upper-case) are left out
    even when the list has them (e.g. names an engine reads as its listen address)."""
    drop = {name.upper() for name in dropped}
    return {k: v for k, v in environ.items() if passes_through(k) and k.upper() not in drop}


def engine_env(
    spec: ModelSpec, placement: EnginePlacement, framework: str, namespace: str
) -> dict[str, str]:
    """Pure: the variables an engine gets on top of what it inherits (inherited_env).

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
        handle = self.handle
        data: dict[str, Any] = {
            "model_id": handle.model_id,
            "framework": handle.framework,
            "spec_hash": handle.spec_hash,
            "port": handle.port,
            "gpus": list(handle.gpus),
            "memory_mb": handle.memory_mb,
            "started_at": handle.started_at,
            "pid": handle.pid,
            "create_time": handle.create_time,
            "container_id": handle.container_id,
            "alive": handle.alive,
            "exit_code": handle.exit_code,
            "log_path": handle.log_path,
            "namespace": self.namespace,
            "argv": list(self.argv),
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineRecord:
        """The record a file holds; keys that a Handle gained later may be missing from an older
        file (its engine may still run) and take the Handle's defaults."""
        data = json.loads(text)
        handle = Handle(
            model_id=data["model_id"],
            framework=data["framework"],
            spec_hash=data["spec_hash"],
            port=data["port"],
            gpus=tuple(data["gpus"]),
            memory_mb=data["memory_mb"],
            started_at=data["started_at"],
            pid=data.get("pid"),
            create_time=data.get("create_time"),
            container_id=data.get("container_id"),
            alive=data.get("alive", True),
            exit_code=data.get("exit_code"),
            log_path=data.get("log_path"),
        )
        return cls(data["namespace"], tuple(data["argv"]), handle)

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
