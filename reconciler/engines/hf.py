"""What servers of Hugging Face checkpoints share (vLLM and the like): the engine that runs one
as a detached process (a pinned or found launcher, the preflight before a start), the parts of
its argv that follow the placement, and its descriptor. Each engine module keeps only what
differs: how it is launched and spelled, its flag names (an `HFFlags`, whose memory arithmetic
is hf_memory.py), its image.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.engine_args import FlagStyle, render_flags
from reconciler.core.spec import ModelSpec, ParameterValue
from reconciler.engines.base import (
    ArgvBuilder,
    EngineDescriptor,
    EngineError,
    EnginePlacement,
    KubernetesContainer,
    Launcher,
)
from reconciler.engines.hf_memory import HFFlags, hf_hook
from reconciler.engines.process_engine import ProcessEngine
from reconciler.engines.processes import find_executable
from reconciler.model_files import facts as modelfiles
from reconciler.model_files.facts import is_local_path

# ---- argv ----------------------------------------------------------------------------------


def tensor_parallel_size(
    gpu_count: int, parameters: Mapping[str, ParameterValue], key: str = "pipeline-parallel-size"
) -> int:
    """Placed GPUs / pipeline stages, at least 1."""
    stages = parameters.get(key, 1)
    pipeline = 1  # a value that is no number: the engine itself rejects it; the command stays total
    if isinstance(stages, int | float | str):
        with contextlib.suppress(ValueError, OverflowError):
            pipeline = max(1, int(stages))
    return max(1, gpu_count // pipeline)


@dataclass(frozen=True)
class HFArgv:
    """How one server spells its command line; called, the descriptor's (pure) argv builder:
    launcher, subcommand, the model, the listen address and port, the tensor-parallel size that
    makes the server use exactly the placed GPUs, then the spec's parameters as flags."""

    subcommand: tuple[str, ...]
    model_flag: str | None
    """the flag before the model; None: the model is positional"""
    tp_flag: str
    style: FlagStyle

    def __call__(
        self, spec: ModelSpec, placement: EnginePlacement, launcher: Launcher
    ) -> list[str]:
        model = model_argument(spec)
        where = [model] if self.model_flag is None else [self.model_flag, model]
        where += ["--host", placement.host, "--port", str(placement.port)]
        where += [self.tp_flag, str(tensor_parallel_size(len(placement.gpus), spec.parameters))]
        return [*launcher, *self.subcommand, *where, *self.flags(spec.parameters)]

    def flags(self, parameters: Mapping[str, ParameterValue]) -> list[str]:
        """Spec parameters as this server's flags, in key order (FlagValueError for a value
        that could become a flag)."""
        return render_flags(parameters, self.style)


def served_name(spec: ModelSpec) -> str | None:
    """The name these servers answer to: --served-model-name (its first value), by default the
    model path as given."""
    name = spec.parameters.get("served-model-name")
    if isinstance(name, list):
        name = name[0] if name else None
    return str(name) if name is not None else spec.model_path


def model_argument(spec: ModelSpec) -> str:
    """Pure: the model the engine is given: a hub id as written, a local path expanded."""
    if not is_local_path(spec.model_path):
        return spec.model_path
    try:
        return str(modelfiles.resolve(spec.model_path, assemble=False))
    except modelfiles.ModelFileError:
        return spec.model_path  # start() reports the problem; command() stays total


def check_local_model(spec: ModelSpec) -> None:
    """EngineError when a local model path (or packaged model) is not there."""
    if not is_local_path(spec.model_path):
        return
    try:
        path = modelfiles.resolve(spec.model_path)
    except modelfiles.ModelFileError as exc:
        raise EngineError(str(exc)) from exc
    if not Path(path).exists():
        raise EngineError(f"model path not found: {path}")


# ---- the runtime engine and the descriptor ------------------------------------------------


class HFEngine(ProcessEngine):
    """A server of HF checkpoints as a detached process. Subclasses say how this host launches
    it when its host setting `launcher_env` is unset (`usual_launcher`) and what to tell an
    operator when it is missing (`server`, `package`), and may check a launcher further
    (`check_launcher`)."""

    server: str
    """the server's name in messages ("vllm", ...)"""
    package: str
    """what to install when it is missing"""
    launcher_env: str
    """the host setting that names its launcher"""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        namespace: str | None = None,
        *,
        launcher: Launcher | None = None,
    ) -> None:
        super().__init__(state_dir, namespace)
        self._launcher = launcher

    @property
    def launcher(self) -> Launcher:
        """The pinned launcher, else the one this host has now."""
        return self._launcher or self.found_launcher()

    def found_launcher(self, environ: Mapping[str, str] | None = None) -> Launcher:
        """The launcher this host has now: $<launcher_env> when set, else the usual install."""
        environ = os.environ if environ is None else environ
        override = environ.get(self.launcher_env)
        return (override,) if override else self.usual_launcher(environ)

    def usual_launcher(self, environ: Mapping[str, str]) -> Launcher:
        """How the server starts where it was installed the usual way."""
        raise NotImplementedError

    def check_launcher(self, launcher: Launcher) -> None:
        """Raise EngineError when a launcher whose executable exists cannot run the server."""

    def preflight(self, spec: ModelSpec, placement: EnginePlacement) -> None:
        launcher = self.launcher
        if find_executable(launcher[0]) is None:
            raise EngineError(
                f"{self.server} is not installed (no executable {launcher[0]!r}; install "
                f"{self.package} or set {self.launcher_env} to its launcher)"
            )
        self.check_launcher(launcher)
        check_local_model(spec)


def hf_descriptor(
    engine: type[HFEngine],
    *,
    framework: str,
    parameters: frozenset[str],
    argv: ArgvBuilder,
    flags: HFFlags,
    image: str,
    image_launcher: Launcher,
    reserved_env: frozenset[str],
) -> EngineDescriptor:
    """The descriptor of an HF-checkpoint server, bound to its runtime `engine` class: a model
    as local files or a hub id, the memory rule of `flags` (whose max_len flag sets the
    context), a pod with an in-memory /dev/shm for its tensor-parallel workers."""
    descriptor = EngineDescriptor(
        framework=framework,
        parameters=parameters,
        argv=argv,
        estimate=hf_hook(flags),
        model_files="hf",
        kubernetes=KubernetesContainer(image=image, launcher=image_launcher, shared_memory=True),
        create=engine,
        reserved_env=reserved_env,
        context_parameter=flags.max_len,
        hub_ids=True,
        served_name=served_name,
    )
    engine.descriptor = descriptor
    return descriptor
