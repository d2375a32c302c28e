"""The shell shared by engines that run as local processes (llama.cpp, vLLM, ...).

A process engine is its descriptor's pure argv builder plus an executable found on this host,
run by the `ProcessSupervisor` (detached.py): detached, adopted again by its markers
(identity.py), logged to <state_dir>/logs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from reconciler.core.engine_args import FlagValueError
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import (
    Command,
    Engine,
    EngineDescriptor,
    EngineError,
    EnginePlacement,
    Handle,
)
from reconciler.engines.detached import ProcessSupervisor
from reconciler.engines.identity import HOST_ONLY_PREFIX, engine_env


def _spec_may_set(name: str, reserved: frozenset[str]) -> bool:
    """Not a listen address or port, and not one of the host's RECONCILER_* variables."""
    upper = name.upper()
    return upper not in reserved and not upper.startswith(HOST_ONLY_PREFIX)


class ProcessEngine:
    """Subclasses name their `descriptor` and `executable`, and may refine `command()` and
    `preflight()`, which raises EngineError for the problems a retry cannot fix (missing
    executable or model file, parameters the executable cannot express)."""

    descriptor: EngineDescriptor | None = None
    """None only for stand-ins that set `framework` and override command() themselves."""

    def __init__(self, state_dir: str | os.PathLike[str], namespace: str | None = None) -> None:
        self.supervisor = ProcessSupervisor(state_dir, namespace)

    @property
    def framework(self) -> str:
        assert self.descriptor is not None
        return self.descriptor.framework

    @property
    def reserved_env(self) -> frozenset[str]:
        return self.descriptor.reserved_env if self.descriptor is not None else frozenset()

    @property
    def namespace(self) -> str:
        return self.supervisor.namespace

    @property
    def launcher(self) -> tuple[str, ...]:
        """The argv words that start the server on this host (before any flag)."""
        raise NotImplementedError

    def env(self, spec: ModelSpec, placement: EnginePlacement) -> dict[str, str]:
        """Pure: spec.env + CUDA_VISIBLE_DEVICES + markers (over environment.inherited_env).

        Names the engine reads as its listen address or port never come from the spec (the
        host and the planner decide those): they are dropped here and from the inherited
        environment (Command.unset_env), whatever validation let through; so are the host's
        RECONCILER_* names.
        """
        reserved = self.reserved_env
        kept = spec.model_copy(
            update={"env": {k: v for k, v in spec.env.items() if _spec_may_set(k, reserved)}}
        )
        return engine_env(kept, placement, self.framework, self.namespace)

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        """Pure: the argv and environment this engine would run (FlagValueError on a value
        that could become a flag)."""
        if self.descriptor is None:
            raise NotImplementedError("a process engine without a descriptor builds its command")
        argv = self.descriptor.argv(spec, placement, self.launcher)
        return Command(argv=tuple(argv), env=self.env(spec, placement), unset_env=self.reserved_env)

    def preflight(self, spec: ModelSpec, placement: EnginePlacement) -> None:
        """Raise EngineError when the engine cannot start whatever the retries."""

    def health_path(self, spec: ModelSpec) -> str:
        """The HTTP path that answers 200 once the engine is ready."""
        return spec.health_check.path

    def start(self, spec: ModelSpec, placement: EnginePlacement) -> Handle:
        self.preflight(spec, placement)
        try:
            command = self.command(spec, placement)
        except FlagValueError as exc:
            raise EngineError(str(exc)) from exc
        return self.supervisor.launch(command, host=placement.host)

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        self.supervisor.stop(handle, grace_s)

    def observe(self) -> list[Handle]:
        return self.supervisor.observe(self.framework)

    def logs(self, handle: Handle, lines: int = 20) -> list[str]:
        return self.supervisor.tail(handle, lines)


def observe_all(engines: Iterable[Engine]) -> list[list[Handle]]:
    """Each engine's observe(), in order; but the process engines of one state directory and
    namespace share one scan of the process table, which each of them would otherwise read
    whole for its own framework (~3 ms each, every pass)."""
    scans: dict[tuple[type, Path, str], list[Handle]] = {}
    found: list[list[Handle]] = []
    for engine in engines:
        if not isinstance(engine, ProcessEngine) or _observes_alone(engine):
            found.append(engine.observe())
            continue
        supervisor = engine.supervisor
        key = (type(supervisor), supervisor.state_dir, supervisor.namespace)
        if key not in scans:
            scans[key] = supervisor.observe()
        found.append([h for h in scans[key] if h.framework == engine.framework])
    return found


def _observes_alone(engine: ProcessEngine) -> bool:
    """A subclass with its own observe() does not share the scan."""
    return type(engine).observe is not ProcessEngine.observe
