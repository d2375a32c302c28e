"""The Engine protocol and the engine descriptor: what every engine module exports.

An engine module (llama_cpp, vllm, docker...) exports one `EngineDescriptor`: pure
knowledge about the framework (its parameters, its argv, its memory estimate, its Kubernetes
image) plus a factory for the runtime `Engine`. The registry lists the
descriptors; validation, estimation, model facts and the Kubernetes render read them, so a new
engine is one module and one line in the registry.

A runtime engine turns (spec, placement) into a running thing, and can find every running thing
it started, even from a new reconciler process (adoption): identity lives with the engine
(process environment markers or container labels), never only in the state file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.core.engine_args import FrameworkRules
from reconciler.core.estimate import Estimate, ModelFacts, ModelFiles
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
    unset_env: frozenset[str] = frozenset()
    """Names removed from the inherited environment (the engine's listen address and port:
    the reconciler's own environment must not move an engine either)."""


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
    @property
    def framework(self) -> str:
        """The framework this engine runs (its descriptor's)."""
        ...

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

    def health_path(self, spec: ModelSpec) -> str:
        """The HTTP path that answers 200 once the engine is ready (an engine may know better
        than the spec: llama-cpp-python's server has no /health)."""
        ...


Launcher = tuple[str, ...]
"""The argv words that start the engine's server before any flag: `("vllm",)`,
`("python3", "-m", "some.server")`..."""

ArgvBuilder = Callable[[ModelSpec, EnginePlacement, Launcher], list[str]]
"""Pure: (spec, placement, launcher) -> the argv that runs the engine. No state directory,
no I/O; raises reconciler.core.engine_args.FlagValueError for a value that could become a flag."""

EstimateHook = Callable[[ModelSpec, ModelFacts, int | None], Estimate]
"""Pure: (spec, the model's facts, the GPU's MiB or None) -> MiB per GPU with a breakdown."""

EngineFactory = Callable[[str | os.PathLike[str], str], Engine]
"""(state directory, namespace) -> the runtime engine of this reconciler."""


@dataclass(frozen=True)
class KubernetesContainer:
    """How the engine runs in a pod: the default image and the executable inside it."""

    image: str
    launcher: Launcher
    """the executable inside the image, with the words that start the server"""
    argv_is_command: bool = True
    """True: the argv replaces the image's command; False: it is `args` to its ENTRYPOINT."""
    shared_memory: bool = False
    """Mount an in-memory /dev/shm (tensor-parallel workers share memory through it)."""


@dataclass(frozen=True)
class EngineDescriptor:
    """Everything the reconciler knows about one framework, without running anything."""

    framework: str
    parameters: frozenset[str] | None
    """Known flags (without `--`); None = any key passes (a container defines its own)."""
    argv: ArgvBuilder
    estimate: EstimateHook | None
    """None: the need cannot be estimated (resource_requirements.gpu_memory_mb is required)."""
    model_files: ModelFiles
    kubernetes: KubernetesContainer
    create: EngineFactory
    reserved_env: frozenset[str] = frozenset()
    """Environment names the engine reads as its listen address or port: never from a spec."""
    needs_image: bool = False
    hub_ids: bool = False
    """model_path may be a Hugging Face hub id that the engine downloads itself."""
    context_parameter: str | None = None
    """The parameter that sets the context length (`reconciler estimate --ctx`)."""
    extra_env: Callable[[ModelSpec, EnginePlacement], dict[str, str]] | None = None
    """Pure: variables the engine needs besides the spec's env (a container's PORT...)."""
    served_name: Callable[[ModelSpec], str | None] | None = None
    """Pure: the name the engine answers to in a request's `model`; None: it answers to any."""
    remote: bool = False
    """True: no engine process, container or pod. The model is an endpoint someone else serves
    (the gateway relays to it, the daemon probes it); the planner never places it, the loop
    starts, stops and observes nothing for it, and the Kubernetes render skips it."""

    def rules(self) -> FrameworkRules:
        """What validation needs to know of this framework."""
        return FrameworkRules(
            name=self.framework,
            parameters=self.parameters,
            reserved_env=self.reserved_env,
            needs_image=self.needs_image,
            remote=self.remote,
        )
