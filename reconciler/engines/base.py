"""The Engine protocol: one shape for llama.cpp, vLLM and Docker engines.

An engine turns (spec, placement) into a running thing, and can find every running thing it
started, even from a new reconciler process (adoption): identity lives with the engine (process
environment markers or container labels), never only in the state file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from reconciler.core.spec import ModelSpec

MARKER_MODEL = "RECONCILER_MODEL_ID"
MARKER_HASH = "RECONCILER_SPEC_HASH"
MARKER_NAMESPACE = "RECONCILER_NAMESPACE"
MARKER_GPUS = "RECONCILER_GPUS"
MARKER_PORT = "RECONCILER_PORT"
MARKER_MEMORY = "RECONCILER_MEMORY_MB"


@dataclass(frozen=True)
class EnginePlacement:
    """Where the planner put a model: GPUs, MiB reserved per GPU, and the port."""

    gpus: tuple[int, ...]
    port: int
    memory_mb: int = 0
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class Command:
    """What an engine would run: pure data, computed without side effects.

    For process engines `argv` is the executable and its arguments (never a shell string);
    for containers it is the container's command and `image` is set.
    """

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None


@dataclass(frozen=True)
class Handle:
    """One engine that exists now (alive or exited), as observed."""

    model_id: str
    framework: str
    spec_hash: str
    port: int
    gpus: tuple[int, ...]
    memory_mb: int
    started_at: float
    """Unix time the engine was started."""
    pid: int | None = None
    create_time: float | None = None
    container_id: str | None = None
    alive: bool = True
    exit_code: int | None = None
    log_path: str | None = None


class EngineError(Exception):
    """An engine could not be started: a missing executable or model file, a port in use...

    These are not retried in a loop: the model goes to `error` with this message at once.
    """


class Engine(Protocol):
    framework: str

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        """Pure: the argv and environment this engine would run for the spec."""
        ...

    def start(self, spec: ModelSpec, placement: EnginePlacement) -> Handle:
        """Start detached (it outlives the reconciler); raise EngineError on a permanent failure."""
        ...

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        """Stop gracefully, then forcibly; leave no process or container behind."""
        ...

    def observe(self) -> list[Handle]:
        """Every engine of this framework that this reconciler namespace started, found afresh
        (adoption): processes by their markers, containers by their labels."""
        ...

    def logs(self, handle: Handle, lines: int = 20) -> list[str]:
        """The last lines the engine wrote."""
        ...
