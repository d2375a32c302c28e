"""vLLM engines: `vllm serve MODEL --host H --port P --tensor-parallel-size N [--param value...]`.

Executable: $RECONCILER_VLLM (a path) when set, else `vllm` on PATH. The tensor-parallel size is
the number of placed GPUs, divided by pipeline-parallel-size when the spec sets one (vLLM uses
TP x PP GPUs), and at least 1 (a CPU-only placement); CUDA_VISIBLE_DEVICES restricts vLLM to
exactly the placed GPUs. Parameters are rendered as `vllm serve` expects them (STYLE):
switches without a value, `--no-key` for a switch that is on by default, one flag with every
value for nargs="+" options. vLLM answers GET /health once ready. VLLM_HOST_IP and VLLM_PORT
are vLLM's own addresses (VLLM_PORT is read as a port and crashes vLLM when it is not one): a
spec may not set them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from reconciler.core.estimate import (
    CannotEstimate,
    Estimate,
    HFFacts,
    HFServing,
    ModelFacts,
    float_param,
    hf_max_len,
    hf_serving_estimate,
    int_param,
    mismatched_facts,
)
from reconciler.core.flags import FlagStyle, render_flags
from reconciler.core.spec import ModelSpec, ParameterValue
from reconciler.engines.base import (
    EngineDescriptor,
    EngineError,
    EnginePlacement,
    KubernetesContainer,
)
from reconciler.engines.process import ProcessEngine, find_executable
from reconciler.models import files as modelfiles
from reconciler.models.files import is_local_path

ENV_VLLM = "RECONCILER_VLLM"

# `vllm serve --help` (engine and frontend arguments, vLLM >= 0.12); --host, --port and
# --tensor-parallel-size are set by the reconciler from the placement. Not accepted on purpose:
# --data-parallel-size (it multiplies the GPUs beyond the placement), --disable-log-requests
# (removed in vLLM 0.12: use enable-log-requests) and --swap-space (removed in vLLM 0.18).
PARAMETERS = frozenset(
    {
        "gpu-memory-utilization",
        "max-model-len",
        "dtype",
        "quantization",
        "kv-cache-dtype",
        "block-size",
        "max-num-seqs",
        "max-num-batched-tokens",
        "pipeline-parallel-size",
        "served-model-name",
        "tokenizer",
        "tokenizer-mode",
        "revision",
        "trust-remote-code",
        "enforce-eager",
        "enable-prefix-caching",
        "enable-chunked-prefill",
        "cpu-offload-gb",
        "seed",
        "download-dir",
        "load-format",
        "max-logprobs",
        "chat-template",
        "api-key",
        "enable-lora",
        "lora-modules",
        "max-loras",
        "max-lora-rank",
        "generation-config",
        "tool-call-parser",
        "enable-auto-tool-choice",
        "reasoning-parser",
        "limit-mm-per-prompt",
        "enable-log-requests",
        "disable-log-stats",
        "uvicorn-log-level",
    }
)

STYLE = FlagStyle(
    # store_true or BooleanOptionalAction
    switches=frozenset(
        {
            "trust-remote-code",
            "enforce-eager",
            "enable-prefix-caching",
            "enable-chunked-prefill",
            "enable-lora",
            "enable-auto-tool-choice",
            "enable-log-requests",
            "disable-log-stats",
        }
    ),
    # on by default in vLLM's V1 engine: `false` becomes `--no-key`
    negatable=frozenset({"enable-prefix-caching", "enable-chunked-prefill"}),
    # nargs="+": repeating the flag would keep only the last list
    multi_value=frozenset({"served-model-name", "lora-modules"}),
)

RESERVED_ENV = frozenset({"VLLM_HOST_IP", "VLLM_PORT"})

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default --gpu-memory-utilization: without it, vLLM claims 90% of each GPU."""

MAX_NUM_BATCHED_TOKENS = 8192
"""Tokens of vLLM's start-up profiling forward pass (V1's default max_num_batched_tokens for
`vllm serve` on data-centre GPUs; older versions used 2048): sets the activation peak."""

MAX_NUM_SEQS = 256
"""vLLM's default max_num_seqs: one row of f32 logits per sequence in the sampler."""


def find_vllm(environ: Mapping[str, str] | None = None) -> str:
    """$RECONCILER_VLLM, else `vllm` on PATH; plain `vllm` when neither (start() reports it)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VLLM) or shutil.which("vllm", path=environ.get("PATH")) or "vllm"


def vllm_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as `vllm serve` flags, in key order."""
    return render_flags(parameters, STYLE)


def tensor_parallel_size(
    gpu_count: int, parameters: Mapping[str, ParameterValue], key: str = "pipeline-parallel-size"
) -> int:
    """Placed GPUs / pipeline stages, at least 1."""
    stages = parameters.get(key, 1)
    try:
        pipeline = max(1, int(stages))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        pipeline = 1  # the engine itself rejects the value; the command stays total
    return max(1, gpu_count // pipeline)


def model_argument(spec: ModelSpec) -> str:
    """Pure: the model the engine is given: a hub id as written, a local path expanded."""
    if not is_local_path(spec.model_path):
        return spec.model_path
    try:
        return str(modelfiles.resolve(spec.model_path, assemble=False))
    except modelfiles.ModelFileError:
        return spec.model_path  # start() reports the problem; command() stays total


def vllm_argv(spec: ModelSpec, placement: EnginePlacement, launcher: tuple[str, ...]) -> list[str]:
    """Pure: the descriptor's argv builder."""
    return [
        *launcher,
        "serve",
        model_argument(spec),
        "--host",
        placement.host,
        "--port",
        str(placement.port),
        "--tensor-parallel-size",
        str(tensor_parallel_size(len(placement.gpus), spec.parameters)),
        *vllm_args(spec.parameters),
    ]


def vllm_estimate(
    facts: HFFacts,
    parameters: Mapping[str, object],
    gpu_count: int = 1,
    gpu_total_mb: int | None = None,
) -> Estimate:
    """vLLM: gpu-memory-utilization x the GPU, or the minimum it needs to start."""
    try:
        serving = HFServing(
            engine="vLLM",
            max_len=hf_max_len(facts, int_param(parameters, "max-model-len"), "max-model-len"),
            max_len_flag="max-model-len",
            dtype=str(parameters.get("dtype", "auto")),
            kv_cache_dtype=str(parameters.get("kv-cache-dtype", "auto")),
            pipeline=int_param(parameters, "pipeline-parallel-size") or 1,
            batched_tokens=int_param(parameters, "max-num-batched-tokens")
            or MAX_NUM_BATCHED_TOKENS,
            seqs=int_param(parameters, "max-num-seqs") or MAX_NUM_SEQS,
            eager=parameters.get("enforce-eager") in (True, "true", "True"),
            fraction=float_param(parameters, "gpu-memory-utilization"),
            fraction_flag="gpu-memory-utilization",
            default_fraction=DEFAULT_GPU_MEMORY_UTILIZATION,
        )
    except CannotEstimate as exc:
        return Estimate(None, {}, str(exc), gpu_count)
    return hf_serving_estimate(facts, serving, gpu_count, gpu_total_mb)


def _estimate_hook(spec: ModelSpec, facts: ModelFacts, gpu_total_mb: int | None) -> Estimate:
    if not isinstance(facts, HFFacts):
        return mismatched_facts(spec, facts)
    count = spec.resource_requirements.gpu_count
    return vllm_estimate(facts, spec.parameters, count, gpu_total_mb)


class VllmEngine(ProcessEngine):
    """vLLM engines as detached processes (see the module docstring)."""

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

    @property
    def launcher(self) -> tuple[str, ...]:
        return (self.executable,)

    def preflight(self, spec: ModelSpec, placement: EnginePlacement) -> None:
        executable = self.executable
        if find_executable(executable) is None:
            raise EngineError(
                f"vllm is not installed (no executable {executable!r}; install vllm or set "
                f"{ENV_VLLM} to its path)"
            )
        check_local_model(spec)


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


def _create(state_dir: str | os.PathLike[str], namespace: str) -> VllmEngine:
    return VllmEngine(state_dir, namespace)


DESCRIPTOR = EngineDescriptor(
    framework="vllm",
    parameters=PARAMETERS,
    argv=vllm_argv,
    estimate=_estimate_hook,
    model_files="hf",
    kubernetes=KubernetesContainer(
        image="vllm/vllm-openai:latest", launcher=("vllm",), shared_memory=True
    ),
    create=_create,
    reserved_env=RESERVED_ENV,
    context_parameter="max-model-len",
    hub_ids=True,
)
VllmEngine.descriptor = DESCRIPTOR
