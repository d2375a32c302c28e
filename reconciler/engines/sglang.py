"""SGLang engines: `python -m sglang.launch_server --model-path M --host H --port P --tp-size N`.

Launcher: $RECONCILER_SGLANG (an executable that takes launch_server's arguments) when set,
else the reconciler's own interpreter running `-m sglang.launch_server`. The tensor-parallel size
is the number of placed GPUs divided by pipeline-parallel-size (at least 1);
CUDA_VISIBLE_DEVICES restricts SGLang to exactly the placed GPUs.

Parameters are SGLang's server arguments (python/sglang/srt/server_args.py, documented in
docs/advanced_features/server_arguments.md), long names without `--`. Not accepted on purpose:
--tp-size/--tensor-parallel-size (set from the placement), --dp-size (it multiplies the GPUs
beyond the placement), --base-gpu-id (GPUs are chosen through CUDA_VISIBLE_DEVICES), --host and
--port (the host's and the planner's), and the multi-node flags. SGLANG_HOST_IP and SGLANG_PORT
are SGLang's own addresses: a spec may not set them.

SGLang answers GET /health once its scheduler is up; its memory behaves like vLLM's: it claims
mem-fraction-static of each GPU for weights and KV cache (the estimate reads the same
config.json and safetensors headers).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping

from reconciler.core.engine_args import FlagStyle
from reconciler.engines.base import EngineError, Launcher
from reconciler.engines.hf import HFArgv, HFEngine, hf_descriptor
from reconciler.engines.hf_memory import HFFlags

ENV_SGLANG = "RECONCILER_SGLANG"
MODULE = "sglang.launch_server"

PARAMETERS = frozenset(
    {
        # model and tokenizer
        "tokenizer-path",
        "tokenizer-mode",
        "skip-tokenizer-init",
        "load-format",
        "trust-remote-code",
        "context-length",
        "is-embedding",
        "revision",
        "model-impl",
        # quantization and data type
        "dtype",
        "quantization",
        "kv-cache-dtype",
        # memory and scheduling
        "mem-fraction-static",
        "max-running-requests",
        "max-queued-requests",
        "max-total-tokens",
        "chunked-prefill-size",
        "max-prefill-tokens",
        "schedule-policy",
        "schedule-conservativeness",
        "page-size",
        # runtime
        "pipeline-parallel-size",
        "stream-interval",
        "random-seed",
        "watchdog-timeout",
        "download-dir",
        # logging
        "log-level",
        "log-requests",
        "enable-metrics",
        "decode-log-interval",
        # API
        "api-key",
        "served-model-name",
        "chat-template",
        "reasoning-parser",
        "tool-call-parser",
        "enable-cache-report",
        # LoRA
        "enable-lora",
        "lora-paths",
        "max-loras-per-batch",
        "max-lora-rank",
        # kernels and optimisations
        "attention-backend",
        "sampling-backend",
        "grammar-backend",
        "disable-radix-cache",
        "disable-cuda-graph",
        "cuda-graph-max-bs",
        "enable-torch-compile",
    }
)

STYLE = FlagStyle(
    # argparse store_true: `true` -> --key, `false` -> omitted
    switches=frozenset(
        {
            "skip-tokenizer-init",
            "trust-remote-code",
            "is-embedding",
            "log-requests",
            "enable-metrics",
            "enable-cache-report",
            "enable-lora",
            "disable-radix-cache",
            "disable-cuda-graph",
            "enable-torch-compile",
        }
    ),
    # nargs="*": one flag followed by every adapter
    multi_value=frozenset({"lora-paths"}),
)

# `LAUNCHER --model-path M --host H --port P --tp-size N [--param value...]`
ARGV = HFArgv(subcommand=(), model_flag="--model-path", tp_flag="--tp-size", style=STYLE)

RESERVED_ENV = frozenset({"SGLANG_HOST_IP", "SGLANG_PORT"})

# HFFlags' defaults are SGLang's: chunked-prefill-size 8192 on large GPUs, 256 sequences sampled
# at once when the spec does not bound them, and 0.9 the documented upper mem-fraction-static
# (recent versions size it from the GPU).
FLAGS = HFFlags(
    engine="SGLang",
    max_len="context-length",
    # the tokens of one prefill chunk (-1 disables chunking: the default is used)
    batched_tokens="chunked-prefill-size",
    seqs="max-running-requests",
    eager="disable-cuda-graph",
    # the share of each GPU for weights + the KV cache pool
    fraction="mem-fraction-static",
)


class SglangEngine(HFEngine):
    """SGLang engines as detached processes (see the module docstring)."""

    server = "SGLang"
    package = "sglang"
    launcher_env = ENV_SGLANG

    def usual_launcher(self, environ: Mapping[str, str]) -> Launcher:
        """This interpreter with `-m sglang.launch_server`."""
        return (sys.executable, "-m", MODULE)

    def check_launcher(self, launcher: Launcher) -> None:
        own_interpreter = launcher == (sys.executable, "-m", MODULE)
        if own_interpreter and importlib.util.find_spec("sglang") is None:
            raise EngineError(
                f"SGLang is not installed in {sys.executable} (pip install sglang, or set "
                f"{ENV_SGLANG} to the launcher of an SGLang installation)"
            )


DESCRIPTOR = hf_descriptor(
    SglangEngine,
    framework="sglang",
    parameters=PARAMETERS,
    argv=ARGV,
    flags=FLAGS,
    image="lmsysorg/sglang:latest",
    image_launcher=("python3", "-m", MODULE),
    reserved_env=RESERVED_ENV,
)
