"""Engine parameters the spec may set, per framework. Pure data, shared by validate and engines.

Spec parameters use llama-server's and `vllm serve`'s own long flag names (without `--`). The
engine modules map them to the executable actually used (llama-server, or llama-cpp-python's
server, which spells them differently). A key outside these sets is rejected at validate time
with the list of known ones, so a typo never reaches an engine.
"""

from __future__ import annotations

# llama.cpp `llama-server --help` (long names). Flags the reconciler sets itself (--host, --port,
# --model) are not parameters.
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
        "seed",
        "alias",
        "chat-template",
        "jinja",
        "embedding",
        "n-predict",
        "cont-batching",
        "api-key",
        "timeout",
        "metrics",
        "cache-reuse",
        "lora",
        "mmproj",
        "verbose",
    }
)

# `vllm serve --help` (engine and frontend arguments); --host, --port and
# --tensor-parallel-size are set by the reconciler from the placement.
VLLM = frozenset(
    {
        "gpu-memory-utilization",
        "max-model-len",
        "dtype",
        "quantization",
        "kv-cache-dtype",
        "max-num-seqs",
        "max-num-batched-tokens",
        "pipeline-parallel-size",
        "served-model-name",
        "tokenizer",
        "revision",
        "trust-remote-code",
        "enforce-eager",
        "enable-prefix-caching",
        "enable-chunked-prefill",
        "swap-space",
        "cpu-offload-gb",
        "seed",
        "download-dir",
        "load-format",
        "max-logprobs",
        "chat-template",
        "api-key",
        "enable-lora",
        "lora-modules",
        "max-lora-rank",
        "generation-config",
        "tool-call-parser",
        "enable-auto-tool-choice",
        "reasoning-parser",
        "limit-mm-per-prompt",
        "disable-log-requests",
        "uvicorn-log-level",
    }
)

KNOWN_PARAMETERS: dict[str, frozenset[str]] = {"llama_cpp": LLAMA_CPP, "vllm": VLLM}
"""Docker containers take their own arguments: any key is passed through."""
