"""vLLM engines: `vllm serve MODEL --host H --port P --tensor-parallel-size N [--param value...]`.

Executable: $RECONCILER_VLLM (a path) when set, else `vllm` on PATH. The tensor-parallel size is
the number of placed GPUs, divided by pipeline-parallel-size when the spec sets one (vLLM uses
TP x PP GPUs), and at least 1 (a CPU-only placement); CUDA_VISIBLE_DEVICES restricts vLLM to
exactly the placed GPUs. Parameters are rendered as `vllm serve` expects them
(flags.py): switches without a value, `--no-key` for a switch that is on by default, one flag
with every value for nargs="+" options. vLLM answers GET /health once ready.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from reconciler.core.flags import VLLM_MULTI_VALUE, VLLM_NEGATABLE, VLLM_SWITCHES
from reconciler.core.spec import ModelSpec, ParameterValue, Scalar
from reconciler.engines.base import Command, EngineError, EnginePlacement
from reconciler.engines.process import ProcessEngine, find_executable
from reconciler.models import files as modelfiles

ENV_VLLM = "RECONCILER_VLLM"


def find_vllm(environ: Mapping[str, str] | None = None) -> str:
    """$RECONCILER_VLLM, else `vllm` on PATH; plain `vllm` when neither (start() reports it)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VLLM) or shutil.which("vllm", path=environ.get("PATH")) or "vllm"


def vllm_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as `vllm serve` flags, in key order."""
    args: list[str] = []
    for key in sorted(parameters):
        args += _vllm_flag(key, parameters[key])
    return args


def _vllm_flag(key: str, value: ParameterValue) -> list[str]:
    flag = f"--{key}"
    if isinstance(value, bool) and key in VLLM_SWITCHES:
        if value:
            return [flag]
        return [f"--no-{key}"] if key in VLLM_NEGATABLE else []
    if isinstance(value, list):
        if key in VLLM_MULTI_VALUE:
            return [flag, *(_text(v) for v in value)]
        return [part for v in value for part in (flag, _text(v))]
    return [flag, _text(value)]


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tensor_parallel_size(gpu_count: int, parameters: Mapping[str, ParameterValue]) -> int:
    """Placed GPUs / pipeline stages, at least 1."""
    stages = parameters.get("pipeline-parallel-size", 1)
    try:
        pipeline = max(1, int(stages))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pipeline = 1  # vLLM itself rejects the value; the command stays total
    return max(1, gpu_count // pipeline)


def is_local_path(model_path: str) -> bool:
    """A path on this host (or a packaged model) rather than a Hugging Face hub id."""
    return modelfiles.is_packaged(model_path) or model_path.startswith(("/", ".", "~"))


def model_argument(spec: ModelSpec) -> str:
    """Pure: what `vllm serve` is given: a hub id as written, a local path expanded."""
    if not is_local_path(spec.model_path):
        return spec.model_path
    try:
        return str(modelfiles.resolve(spec.model_path, assemble=False))
    except modelfiles.ModelFileError:
        return spec.model_path  # start() reports the problem; command() stays total


class VllmEngine(ProcessEngine):
    """vLLM engines as detached processes (see the module docstring)."""

    framework = "vllm"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        namespace: str | None = None,
        *,
        executable: str | None = None,
    ) -> None:
        super().__init__(state_dir, namespace)
        self._executable = executable

    @property
    def executable(self) -> str:
        """The pinned executable, else the one this host has now."""
        return self._executable or find_vllm()

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        argv = (
            self.executable,
            "serve",
            model_argument(spec),
            "--host",
            placement.host,
            "--port",
            str(placement.port),
            "--tensor-parallel-size",
            str(tensor_parallel_size(len(placement.gpus), spec.parameters)),
            *vllm_args(spec.parameters),
        )
        return Command(argv=argv, env=self.env(spec, placement))

    def preflight(self, spec: ModelSpec, placement: EnginePlacement) -> None:
        executable = self.executable
        if find_executable(executable) is None:
            raise EngineError(
                f"vllm is not installed (no executable {executable!r}; install vllm or set "
                f"{ENV_VLLM} to its path)"
            )
        if is_local_path(spec.model_path):
            path = _prepare_local_model(spec.model_path)
            if not path.exists():
                raise EngineError(f"model path not found: {path}")


def _prepare_local_model(model_path: str) -> Path:
    try:
        return modelfiles.resolve(model_path)
    except modelfiles.ModelFileError as exc:
        raise EngineError(str(exc)) from exc
