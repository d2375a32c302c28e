"""Engine parameters the spec may set, per framework. Pure data, shared by validate and engines.

Spec parameters use llama-server's and `vllm serve`'s own long flag names (without `--`). The
engine modules map them to the executable actually used (llama-server, or llama-cpp-python's
server, which spells them differently). A key outside these sets is rejected at validate time
with the list of known ones, so a typo never reaches an engine.

Rendering rules (engines/llamacpp.py, engines/vllm.py): `key: value` becomes `--key value`;
`true` becomes `--key` for a switch (false: omitted, or `--no-key` where listed as negatable);
a list repeats the flag, except where listed below as comma-joined or as one multi-value flag.
"""

from __future__ import annotations

# llama.cpp `llama-server --help` (long names). Flags the reconciler sets itself (--host, --port,
# --model) are not parameters. GPU indexes (main-gpu, tensor-split) count the GPUs the engine
# sees: CUDA_VISIBLE_DEVICES is set to the placed GPUs, so they are renumbered from 0.
LLAMA_CPP = frozenset(
    {
        "ctx-size",
        "n-gpu-layers",
        "threads",
        "threads-batch",
        "parallel",
        "batch-size",
        "ubatch-size",
        "cache-type-k",
        "cache-type-v",
        "flash-attn",
        "main-gpu",
        "split-mode",
        "tensor-split",
        "rope-scaling",
        "rope-freq-base",
        "rope-freq-scale",
        "mlock",
        "no-mmap",
        "no-kv-offload",
        "n-cpu-moe",
        "seed",
        "alias",
        "chat-template",
        "jinja",
        "reasoning-format",
        "embedding",
        "n-predict",
        "cont-batching",
        "api-key",
        "timeout",
        "metrics",
        "slots",
        "cache-reuse",
        "lora",
        "mmproj",
        "verbose",
    }
)

# llama-server switches: `true` -> `--key`, `false` -> omitted.
LLAMA_CPP_SWITCHES = frozenset(
    {
        "mlock",
        "no-mmap",
        "no-kv-offload",
        "jinja",
        "embedding",
        "cont-batching",
        "metrics",
        "slots",
        "verbose",
    }
)

# Switches whose `false` must be said out loud because the engine's default is on.
LLAMA_CPP_NEGATABLE = frozenset({"cont-batching"})

# `-fa, --flash-attn [on|off|auto]` takes a value in current llama.cpp (a bare `--flash-attn`
# would swallow the next argument): true/false are rendered as on/off.
LLAMA_CPP_ON_OFF = frozenset({"flash-attn"})

# `--tensor-split 3,1`: one comma-separated value, not a repeated flag.
LLAMA_CPP_COMMA_LISTS = frozenset({"tensor-split"})

# `vllm serve --help` (engine and frontend arguments, vLLM >= 0.12); --host, --port and
# --tensor-parallel-size are set by the reconciler from the placement (tensor-parallel size =
# placed GPUs / pipeline-parallel-size, so that vLLM uses exactly the placed GPUs). Not accepted
# on purpose: --data-parallel-size (it multiplies the GPUs beyond the placement),
# --disable-log-requests (removed in vLLM 0.12: use enable-log-requests) and --swap-space
# (removed in vLLM 0.18).
VLLM = frozenset(
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

# vLLM switches (store_true or BooleanOptionalAction): `true` -> `--key`, `false` -> omitted.
VLLM_SWITCHES = frozenset(
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
)

# On by default in vLLM's V1 engine: `false` becomes `--no-key` (argparse BooleanOptionalAction).
VLLM_NEGATABLE = frozenset({"enable-prefix-caching", "enable-chunked-prefill"})

# nargs="+" options: a list is one flag followed by every value (repeating the flag would keep
# only the last list).
VLLM_MULTI_VALUE = frozenset({"served-model-name", "lora-modules"})

KNOWN_PARAMETERS: dict[str, frozenset[str]] = {"llama_cpp": LLAMA_CPP, "vllm": VLLM}
"""Docker containers take their own arguments: any key is passed through."""
