"""llama.cpp's GPU memory: weights + KV cache + compute buffer + CUDA context, from GGUF facts.

The estimate hook of the llama_cpp descriptor. Pure arithmetic; the shared parts (facts,
CUDA context, parameter parsing) are reconciler.core.estimate's.

The prompt cache (PROMPT_CACHE_MIB) is not counted: it is host RAM, not GPU memory. Both
servers keep a cached prompt as a copy of its KV state that they read out of the context into
ordinary process memory (llama-server's host-memory prompt cache, llama-cpp-python's
`LlamaRAMCache` of `save_state()` copies) and copy back in on a hit, so it never grows the
GPU's share; the GPU keeps only the one context counted below. Parallel slots share that
context (see _kv_derivation).
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.estimate import (
    CUDA_CONTEXT_MB,
    F32_BYTES,
    CannotEstimate,
    Derivation,
    Estimate,
    GGUFFacts,
    ModelFacts,
    check_gpu_count,
    cuda_context,
    int_param,
    mib,
    mib_text,
    mismatched_facts,
    number,
)
from reconciler.core.spec import ModelSpec

DEFAULT_CTX = 4096
"""Context assumed when the spec sets no ctx-size. Not the training context: that is 32k-128k
for recent models and would reserve many GiB of KV cache the engine does not allocate by
default. 4096 is llama.cpp's long-standing common default (llama-cpp-python's is 2048; recent
llama-server builds read the model's). Engines should pass ctx-size explicitly so that engine
and estimate agree."""

PROMPT_CACHE_MIB = 1024
"""The host RAM bound (MiB) of a llama.cpp engine's prompt cache when a spec sets no `cache-ram`.

llama-server keeps prompts beyond its slots in host RAM by default, up to 8192 MiB per engine;
on a host running several engines that is many GiB nobody planned, so the engine module passes
this smaller bound (1 GiB: a few dozen long prompts of a small model, a handful of a 7B one).
A spec's `cache-ram` overrides it (0 turns the cache off). Not GPU memory: see above."""

LLAMA_UBATCH = 512
"""llama.cpp's default physical batch (n_ubatch = 512, logged as `n_ubatch`); the compute
buffer is reserved for a batch of this many tokens."""

ACTIVATION_WIDTHS = 4
"""Hidden-state-wide f32 tensors alive next to the largest one in llama.cpp's graph (residual,
norm output, attention output, FFN input)."""

# Bytes per element of llama.cpp's KV cache types (ggml block size / elements per block):
# q8_0 is 32 int8 + one f16 scale = 34 bytes per 32 values, q4_0 16 + 2 = 18, and so on.
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4,
    "f16": 2,
    "bf16": 2,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}


def llama_cpp_estimate(
    facts: GGUFFacts, parameters: Mapping[str, object], gpu_count: int = 1
) -> Estimate:
    """Weights + KV cache + compute buffer + CUDA context, per GPU, for llama.cpp.

    - n-gpu-layers unset means every layer on the GPU (why the spec asks for GPUs). With fewer
      layers, only that share of the block weights and of the KV cache is on the GPU; the
      output layer goes there only when n-gpu-layers exceeds the block count (llama.cpp's rule).
    - n-gpu-layers 0 still reserves the compute buffer and the CUDA context: a CUDA build of
      llama.cpp initialises every visible GPU and offloads large prompt batches to it.
    - Over several GPUs (llama.cpp's default split-mode layer), blocks and their KV cache are
      split evenly, the output layer sits on the last GPU, and every GPU reserves a compute
      buffer (each runs its layers' graph).
    - Models with sliding-window layers (Gemma 2/3...) are counted with a full-size cache on
      every layer: what llama-cpp-python allocates, an upper bound for llama-server.
    """
    check_gpu_count(gpu_count)
    try:
        n_ctx = _llama_ctx(facts, parameters)
        bytes_k = _cache_type_bytes(parameters, "cache-type-k")
        bytes_v = _cache_type_bytes(parameters, "cache-type-v")
        gpu_layers, output_on_gpu = _gpu_layers(facts, parameters)
        ubatch = min(int_param(parameters, "ubatch-size") or LLAMA_UBATCH, n_ctx)
    except CannotEstimate as exc:
        return Estimate(None, {}, str(exc), gpu_count)

    # Blocks are spread evenly; the output layer is whole on the last GPU, and the reservation
    # is the same on every GPU, so each one is sized like that last one.
    weights = facts.layer_weights_bytes * gpu_layers / facts.n_layer / gpu_count
    if output_on_gpu:
        weights += facts.output_weights_bytes
    kv_per_token_layer = facts.n_head_kv * (facts.head_dim_k * bytes_k + facts.head_dim_v * bytes_v)
    kv_cache = gpu_layers * n_ctx * kv_per_token_layer
    compute = _llama_compute_bytes(facts, n_ctx, ubatch, _flash_attention(parameters))

    breakdown = {
        "weights": mib(weights),
        "kv_cache": mib(kv_cache / gpu_count),
        "compute_buffer": mib(compute),
        "runtime_overhead": CUDA_CONTEXT_MB,
    }
    derivations = {
        "weights": _weights_derivation(facts, gpu_layers, output_on_gpu, gpu_count, weights),
        "kv_cache": _kv_derivation(
            facts, parameters, n_ctx, gpu_layers, gpu_count, kv_cache / gpu_count
        ),
        "compute_buffer": _compute_derivation(facts, parameters, n_ctx, ubatch, compute),
        "runtime_overhead": cuda_context(),
    }
    note = (
        f"llama.cpp: {gpu_layers}/{facts.n_layer} layers on GPU, ctx {n_ctx}, "
        f"KV cache k={_cache_name(parameters, 'cache-type-k')} "
        f"v={_cache_name(parameters, 'cache-type-v')}"
    )
    if gpu_count > 1:
        note += f", split over {gpu_count} GPUs"
    return Estimate(sum(breakdown.values()), breakdown, note, gpu_count, derivations)


def _llama_compute_bytes(facts: GGUFFacts, n_ctx: int, ubatch: int, flash_attn: bool) -> int:
    """llama.cpp's compute buffer: the largest tensors of the graph for one ubatch.

    ggml reuses memory between tensors that are not alive together, so the buffer is about
    the largest of the logits (ubatch x n_vocab, f32) and one layer's attention scores
    (ubatch x n_ctx x n_head, f32; not materialised with flash attention), plus a few
    hidden-state-wide activations. Checked against llama.cpp's own `compute buffer size` log:
    Gemma 3 270M at ctx 2048 logs 514.5 MiB, this gives 517 MiB.
    """
    logits = ubatch * facts.n_vocab * F32_BYTES
    scores = 0 if flash_attn else ubatch * n_ctx * facts.n_head * F32_BYTES
    activations = ubatch * facts.n_embd * F32_BYTES * ACTIVATION_WIDTHS
    return max(logits, scores) + activations


def _weights_derivation(
    facts: GGUFFacts, gpu_layers: int, output_on_gpu: bool, gpu_count: int, size: float
) -> Derivation:
    output = facts.output_weights_bytes if output_on_gpu else 0
    formula = (
        f"blocks {mib_text(facts.layer_weights_bytes)} x {gpu_layers}/{facts.n_layer} on the GPU"
        f" / {gpu_count} GPU(s) + output layer {mib_text(output)}"
    )
    factors: dict[str, float] = {
        "block_bytes": facts.layer_weights_bytes,
        "layers_on_gpu": gpu_layers,
        "layers": facts.n_layer,
        "gpus": gpu_count,
        "output_bytes": output,
    }
    return Derivation(formula, factors, size)


def _kv_derivation(
    facts: GGUFFacts,
    parameters: Mapping[str, object],
    n_ctx: int,
    layers: int,
    gpu_count: int,
    size: float,
) -> Derivation:
    """context x layers x KV heads x (K + V head size x cache-type bytes), split over the GPUs.

    Parallel slots do not multiply it: llama-server divides ctx-size among its slots (or shares
    it, with a unified cache), so the cache holds ctx-size tokens in all.
    """
    k_name, v_name = (
        _cache_name(parameters, "cache-type-k"),
        _cache_name(parameters, "cache-type-v"),
    )
    bytes_k, bytes_v = CACHE_TYPE_BYTES[k_name], CACHE_TYPE_BYTES[v_name]
    factors: dict[str, float] = {
        "context": n_ctx,
        "layers": layers,
        "kv_heads": facts.n_head_kv,
        "head_size_k": facts.head_dim_k,
        "head_size_v": facts.head_dim_v,
        "cache_type_bytes_k": bytes_k,
        "cache_type_bytes_v": bytes_v,
        "parallel_slots": _slots(parameters),
        "gpus": gpu_count,
    }
    if (facts.head_dim_k, bytes_k) == (facts.head_dim_v, bytes_v):
        per_head = f"2 (K and V) x {facts.head_dim_k} head size x {number(bytes_k)} B ({k_name})"
    else:
        per_head = (
            f"(K {facts.head_dim_k} x {number(bytes_k)} B ({k_name}) + "
            f"V {facts.head_dim_v} x {number(bytes_v)} B ({v_name}))"
        )
    slots = factors["parallel_slots"]
    formula = (
        f"{number(n_ctx)} ctx x {layers} layers x {facts.n_head_kv} KV heads x {per_head}"
        f" / {gpu_count} GPU(s); parallel slots: {slots}, sharing the ctx (x1)"
    )
    return Derivation(formula, factors, size)


def _slots(parameters: Mapping[str, object]) -> int:
    try:
        return max(1, int_param(parameters, "parallel") or 1)
    except CannotEstimate:
        return 1  # explanation only: a bad value is the engine's to reject


def _compute_derivation(
    facts: GGUFFacts, parameters: Mapping[str, object], n_ctx: int, ubatch: int, size: float
) -> Derivation:
    flash = _flash_attention(parameters)
    scores = (
        "0 (flash attention)"
        if flash
        else f"{ubatch} x {number(n_ctx)} x {facts.n_head} heads x 4 B"
    )
    formula = (
        f"max(logits {ubatch} ubatch x {number(facts.n_vocab)} vocab x 4 B, scores {scores})"
        f" + activations {ubatch} x {number(facts.n_embd)} x 4 B x {ACTIVATION_WIDTHS}"
    )
    factors: dict[str, float] = {
        "ubatch": ubatch,
        "vocab": facts.n_vocab,
        "context": n_ctx,
        "heads": facts.n_head,
        "embedding": facts.n_embd,
        "flash_attention": int(flash),
        "activation_widths": ACTIVATION_WIDTHS,
    }
    return Derivation(formula, factors, size)


def _llama_ctx(facts: GGUFFacts, parameters: Mapping[str, object]) -> int:
    ctx = int_param(parameters, "ctx-size")
    if ctx is not None and ctx < 0:
        raise CannotEstimate(f"ctx-size {ctx} is negative")
    if ctx:
        return ctx
    if ctx == 0:  # llama.cpp: 0 = the model's training context
        if facts.n_ctx_train is None:
            raise CannotEstimate("ctx-size 0 means the model's context, which the file lacks")
        return facts.n_ctx_train
    return min(facts.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)


def _gpu_layers(facts: GGUFFacts, parameters: Mapping[str, object]) -> tuple[int, bool]:
    """(blocks on the GPU, whether the output layer is too)."""
    raw = parameters.get("n-gpu-layers")
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("all", "auto")):
        return facts.n_layer, True
    requested = int_param(parameters, "n-gpu-layers") or 0
    if requested < 0:  # llama.cpp: -1 = all layers
        return facts.n_layer, True
    return min(requested, facts.n_layer), requested > facts.n_layer


def _cache_type_bytes(parameters: Mapping[str, object], key: str) -> float:
    name = _cache_name(parameters, key)
    if name not in CACHE_TYPE_BYTES:
        known = ", ".join(CACHE_TYPE_BYTES)
        raise CannotEstimate(f"unknown {key} '{name}' (llama.cpp knows {known})")
    return CACHE_TYPE_BYTES[name]


def _cache_name(parameters: Mapping[str, object], key: str) -> str:
    return str(parameters.get(key, "f16")).strip().lower()


def _flash_attention(parameters: Mapping[str, object]) -> bool:
    """Only an explicit on counts: `auto` may fall back to the path that needs the scores."""
    value = parameters.get("flash-attn", False)
    if isinstance(value, str):
        return value.strip().lower() in ("on", "true", "1", "yes")
    return value is True


def estimate_hook(spec: ModelSpec, facts: ModelFacts, gpu_total_mb: int | None) -> Estimate:
    """The llama_cpp descriptor's hook: a GGUF file, the spec's parameters and GPU count."""
    if not isinstance(facts, GGUFFacts):
        return mismatched_facts(spec, facts)
    return llama_cpp_estimate(facts, spec.parameters, spec.resource_requirements.gpu_count)
