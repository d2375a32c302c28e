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

import shutil
from collections.abc import Mapping

from reconciler.core.engine_args import FlagStyle
from reconciler.engines.base import Launcher
from reconciler.engines.hf import HFArgv, HFEngine, hf_descriptor
from reconciler.engines.hf_memory import HFFlags

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

# `vllm serve MODEL --host H --port P --tensor-parallel-size N [--param value...]`
ARGV = HFArgv(subcommand=("serve",), model_flag=None, tp_flag="--tensor-parallel-size", style=STYLE)

RESERVED_ENV = frozenset({"VLLM_HOST_IP", "VLLM_PORT"})

# HFFlags' defaults are vLLM's: V1's max_num_batched_tokens for `vllm serve` on data-centre
# GPUs is 8192 (older versions used 2048), max_num_seqs 256, and without gpu-memory-utilization
# vLLM claims 90% of each GPU.
FLAGS = HFFlags(
    engine="vLLM",
    max_len="max-model-len",
    # the tokens of vLLM's start-up profiling forward pass
    batched_tokens="max-num-batched-tokens",
    seqs="max-num-seqs",
    eager="enforce-eager",
    fraction="gpu-memory-utilization",
)


class VllmEngine(HFEngine):
    """vLLM engines as detached processes (see the module docstring)."""

    server = "vllm"
    package = "vllm"
    launcher_env = ENV_VLLM

    def usual_launcher(self, environ: Mapping[str, str]) -> Launcher:
        """`vllm` on PATH; plain `vllm` when it is not there (start() reports it)."""
        return (shutil.which("vllm", path=environ.get("PATH")) or "vllm",)


DESCRIPTOR = hf_descriptor(
    VllmEngine,
    framework="vllm",
    parameters=PARAMETERS,
    argv=ARGV,
    flags=FLAGS,
    image="vllm/vllm-openai:latest",
    image_launcher=("vllm",),
    reserved_env=RESERVED_ENV,
)
