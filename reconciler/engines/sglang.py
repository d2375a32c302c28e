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

import functools
import importlib.util
import os
import sys
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

RESERVED_ENV = frozenset({"SGLANG_HOST_IP", "SGLANG_PORT"})

FLAGS = HFFlags(
    engine="SGLang",
    max_len="context-length",
    pipeline="pipeline-parallel-size",
    # tokens of one prefill chunk on data-centre GPUs (SGLang's default for large GPUs; -1
    # disables chunking): the activation peak of a forward pass
    batched_tokens="chunked-prefill-size",
    batched_tokens_default=8192,
    # sequences sampled at once when the spec does not bound them
    seqs="max-running-requests",
    seqs_default=256,
    eager="disable-cuda-graph",
    # SGLang's documented share of each GPU for weights + KV cache pool (recent versions size it
    # from the GPU; 0.9 is the documented upper value)
    fraction="mem-fraction-static",
    fraction_default=0.9,
)


def find_launcher(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """$RECONCILER_SGLANG, else this interpreter with `-m sglang.launch_server`."""
    environ = os.environ if environ is None else environ
    override = environ.get(ENV_SGLANG)
    return (override,) if override else (sys.executable, "-m", MODULE)


def sglang_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as launch_server flags, in key order."""
    return render_flags(parameters, STYLE)


def sglang_argv(
    spec: ModelSpec, placement: EnginePlacement, launcher: tuple[str, ...]
) -> list[str]:
    """Pure: the descriptor's argv builder."""
    where = placement_args(spec, placement, model_flag="--model-path", tp_flag="--tp-size")
    return [*launcher, *where, *sglang_args(spec.parameters)]


sglang_estimate = functools.partial(hf_estimate, FLAGS)
"""SGLang: mem-fraction-static x the GPU, or the minimum it needs to start."""


class SglangEngine(ProcessEngine):
    """SGLang engines as detached processes (see the module docstring)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        namespace: str | None = None,
        *,
        launcher: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(state_dir, namespace)
        self._launcher = launcher

    @property
    def launcher(self) -> tuple[str, ...]:
        """The pinned launcher, else the one this host has now."""
        return self._launcher or find_launcher()

    def preflight(self, spec: ModelSpec, placement: EnginePlacement) -> None:
        launcher = self.launcher
        if find_executable(launcher[0]) is None:
            raise EngineError(
                f"SGLang is not installed (no executable {launcher[0]!r}; install sglang or "
                f"set {ENV_SGLANG} to its launcher)"
            )
        own_interpreter = launcher == (sys.executable, "-m", MODULE)
        if own_interpreter and importlib.util.find_spec("sglang") is None:
            raise EngineError(
                f"SGLang is not installed in {sys.executable} (pip install sglang, or set "
                f"{ENV_SGLANG} to the launcher of an SGLang installation)"
            )
        check_local_model(spec)


def _create(state_dir: str | os.PathLike[str], namespace: str) -> SglangEngine:
    return SglangEngine(state_dir, namespace)


DESCRIPTOR = EngineDescriptor(
    framework="sglang",
    parameters=PARAMETERS,
    argv=sglang_argv,
    estimate=hf_hook(FLAGS),
    model_files="hf",
    kubernetes=KubernetesContainer(
        image="lmsysorg/sglang:latest",
        launcher=("python3", "-m", MODULE),
        shared_memory=True,
    ),
    create=_create,
    reserved_env=RESERVED_ENV,
    context_parameter="context-length",
    hub_ids=True,
    served_name=served_name,
)
SglangEngine.descriptor = DESCRIPTOR
