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

import functools
import os
import shutil
from collections.abc import Mapping

from reconciler.core.flags import FlagStyle, render_flags
from reconciler.core.spec import ModelSpec, ParameterValue
from reconciler.engines.base import (
    EngineDescriptor,
    EngineError,
    EnginePlacement,
    KubernetesContainer,
)
from reconciler.engines.hf import (
    HFFlags,
    check_local_model,
    hf_estimate,
    hf_hook,
    placement_args,
    served_name,
)
from reconciler.engines.process import ProcessEngine, find_executable

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

FLAGS = HFFlags(
    engine="vLLM",
    max_len="max-model-len",
    pipeline="pipeline-parallel-size",
    # Tokens of vLLM's start-up profiling forward pass (V1's default max_num_batched_tokens for
    # `vllm serve` on data-centre GPUs; older versions used 2048): sets the activation peak.
    batched_tokens="max-num-batched-tokens",
    batched_tokens_default=8192,
    # vLLM's default max_num_seqs: one row of f32 logits per sequence in the sampler
    seqs="max-num-seqs",
    seqs_default=256,
    eager="enforce-eager",
    # without gpu-memory-utilization, vLLM claims 90% of each GPU
    fraction="gpu-memory-utilization",
    fraction_default=0.9,
)


def find_vllm(environ: Mapping[str, str] | None = None) -> str:
    """$RECONCILER_VLLM, else `vllm` on PATH; plain `vllm` when neither (start() reports it)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VLLM) or shutil.which("vllm", path=environ.get("PATH")) or "vllm"


def vllm_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as `vllm serve` flags, in key order."""
    return render_flags(parameters, STYLE)


def vllm_argv(spec: ModelSpec, placement: EnginePlacement, launcher: tuple[str, ...]) -> list[str]:
    """Pure: the descriptor's argv builder."""
    where = placement_args(spec, placement, model_flag=None, tp_flag="--tensor-parallel-size")
    return [*launcher, "serve", *where, *vllm_args(spec.parameters)]


vllm_estimate = functools.partial(hf_estimate, FLAGS)
"""vLLM: gpu-memory-utilization x the GPU, or the minimum it needs to start."""


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


def _create(state_dir: str | os.PathLike[str], namespace: str) -> VllmEngine:
    return VllmEngine(state_dir, namespace)


DESCRIPTOR = EngineDescriptor(
    framework="vllm",
    parameters=PARAMETERS,
    argv=vllm_argv,
    estimate=hf_hook(FLAGS),
    model_files="hf",
    kubernetes=KubernetesContainer(
        image="vllm/vllm-openai:latest", launcher=("vllm",), shared_memory=True
    ),
    create=_create,
    reserved_env=RESERVED_ENV,
    context_parameter="max-model-len",
    hub_ids=True,
    served_name=served_name,
)
VllmEngine.descriptor = DESCRIPTOR
