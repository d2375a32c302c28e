"""GPU memory a model needs, in MiB per GPU. PURE: no I/O, no clock.

The facts (what the model files say) are plain values that `reconciler.models.facts` reads; this
module turns facts + spec parameters into an `Estimate` with a breakdown an operator can check
against the engine's own log. Every constant says where its number comes from. The figures are
deliberately on the high side: a reservation that is too small makes an engine fail to start
or get killed out of memory, one that is too large only leaves room unused, and an operator
can always override with `resource_requirements.gpu_memory_mb`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.core.spec import ModelSpec

MIB = 1024 * 1024

# ---- facts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFFacts:
    """What a GGUF header says (llama.cpp)."""

    path: str
    architecture: str
    weights_bytes: int
    """all tensors of the file (every split of a split GGUF)"""
    layer_weights_bytes: int
    """tensors of the repeating blocks (`blk.N.*`), which n-gpu-layers offloads one by one"""
    output_weights_bytes: int
    """the output layer llama.cpp offloads once every block is on the GPU: `output.weight`,
    or the token embeddings when the output is tied to them (llama.cpp then copies them)"""
    n_layer: int
    n_ctx_train: int | None
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int


@dataclass(frozen=True)
class HFFacts:
    """What a Hugging Face model directory says (vLLM): config.json and safetensors headers."""

    path: str
    tensor_bytes: Mapping[str, int]
    """bytes of the tensors per safetensors dtype ("BF16", "F32", "I32", "F8_E4M3"...)"""
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None
    kv_lora_rank: int | None = None
    """Multi-head latent attention (DeepSeek): the cache holds one compressed vector per token
    and layer instead of per-head keys and values."""
    qk_rope_head_dim: int | None = None


ModelFacts = GGUFFacts | HFFacts


@dataclass(frozen=True)
class Estimate:
    """MiB per GPU, how they add up, and a sentence saying why (or why unknown)."""

    per_gpu_mb: int | None
    breakdown: dict[str, int] = field(default_factory=dict)
    """MiB per GPU by part; sums to per_gpu_mb unless the note says otherwise"""
    note: str = ""
    gpu_count: int = 1


class _CannotEstimate(Exception):
    """Raised inside this module for a parameter it cannot interpret; becomes a note."""


# ---- shared constants -----------------------------------------------------------------------

CUDA_CONTEXT_MB = 400
"""Per process and GPU before any model memory: the CUDA context, cuBLAS workspaces and kernel
images. nvidia-smi shows ~300-500 MiB for an idle CUDA process depending on driver, GPU and
lazy module loading; the upper-middle of that range."""

# ---- llama.cpp ------------------------------------------------------------------------------

DEFAULT_CTX = 4096
"""Context assumed when the spec sets no ctx-size. Not the training context: that is 32k-128k
for recent models and would reserve many GiB of KV cache the engine does not allocate by
default. 4096 is llama.cpp's long-standing common default (llama-cpp-python's is 2048; recent
llama-server builds read the model's). Engines should pass ctx-size explicitly so that engine
and estimate agree."""

LLAMA_UBATCH = 512
"""llama.cpp's default physical batch (n_ubatch = 512, logged as `n_ubatch`); the compute
buffer is reserved for a batch of this many tokens."""

F32_BYTES = 4
"""llama.cpp computes logits and attention scores in f32."""

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
    _check_gpu_count(gpu_count)
    try:
        n_ctx = _llama_ctx(facts, parameters)
        bytes_k = _cache_type_bytes(parameters, "cache-type-k")
        bytes_v = _cache_type_bytes(parameters, "cache-type-v")
        gpu_layers, output_on_gpu = _gpu_layers(facts, parameters)
        ubatch = min(_int_param(parameters, "ubatch-size") or LLAMA_UBATCH, n_ctx)
    except _CannotEstimate as exc:
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
        "weights": _mib(weights),
        "kv_cache": _mib(kv_cache / gpu_count),
        "compute_buffer": _mib(compute),
        "runtime_overhead": CUDA_CONTEXT_MB,
    }
    note = (
        f"llama.cpp: {gpu_layers}/{facts.n_layer} layers on GPU, ctx {n_ctx}, "
        f"KV cache k={_cache_name(parameters, 'cache-type-k')} "
        f"v={_cache_name(parameters, 'cache-type-v')}"
    )
    if gpu_count > 1:
        note += f", split over {gpu_count} GPUs"
    return Estimate(sum(breakdown.values()), breakdown, note, gpu_count)


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


def _llama_ctx(facts: GGUFFacts, parameters: Mapping[str, object]) -> int:
    ctx = _int_param(parameters, "ctx-size")
    if ctx is not None and ctx < 0:
        raise _CannotEstimate(f"ctx-size {ctx} is negative")
    if ctx:
        return ctx
    if ctx == 0:  # llama.cpp: 0 = the model's training context
        if facts.n_ctx_train is None:
            raise _CannotEstimate("ctx-size 0 means the model's context, which the file lacks")
        return facts.n_ctx_train
    return min(facts.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)


def _gpu_layers(facts: GGUFFacts, parameters: Mapping[str, object]) -> tuple[int, bool]:
    """(blocks on the GPU, whether the output layer is too)."""
    raw = parameters.get("n-gpu-layers")
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("all", "auto")):
        return facts.n_layer, True
    requested = _int_param(parameters, "n-gpu-layers") or 0
    if requested < 0:  # llama.cpp: -1 = all layers
        return facts.n_layer, True
    return min(requested, facts.n_layer), requested > facts.n_layer


def _cache_type_bytes(parameters: Mapping[str, object], key: str) -> float:
    name = _cache_name(parameters, key)
    if name not in CACHE_TYPE_BYTES:
        known = ", ".join(CACHE_TYPE_BYTES)
        raise _CannotEstimate(f"unknown {key} '{name}' (llama.cpp knows {known})")
    return CACHE_TYPE_BYTES[name]


def _cache_name(parameters: Mapping[str, object], key: str) -> str:
    return str(parameters.get(key, "f16")).strip().lower()


def _flash_attention(parameters: Mapping[str, object]) -> bool:
    """Only an explicit on counts: `auto` may fall back to the path that needs the scores."""
    value = parameters.get("flash-attn", False)
    if isinstance(value, str):
        return value.strip().lower() in ("on", "true", "1", "yes")
    return value is True


# ---- vLLM -----------------------------------------------------------------------------------

VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default --gpu-memory-utilization: without it, vLLM claims 90% of each GPU."""

VLLM_CUDA_GRAPHS_MB = 512
"""CUDA graphs vLLM captures at start-up: its log says `Graph capturing finished ... took`
~0.3-1 GiB for 1-70B models at the default capture sizes; 0 with --enforce-eager."""

VLLM_MAX_NUM_BATCHED_TOKENS = 8192
"""Tokens of vLLM's start-up profiling forward pass (V1's default max_num_batched_tokens for
`vllm serve` on data-centre GPUs; older versions used 2048): sets the activation peak."""

VLLM_MAX_NUM_SEQS = 256
"""vLLM's default max_num_seqs: one row of f32 logits per sequence in the sampler."""

# Bits per element of safetensors dtypes (F4/F6 are packed sub-byte formats).
SAFETENSORS_BITS: dict[str, int] = {
    **dict.fromkeys(("F64", "I64", "U64"), 64),
    **dict.fromkeys(("F32", "I32", "U32"), 32),
    **dict.fromkeys(("F16", "BF16", "I16", "U16"), 16),
    **dict.fromkeys(("F8_E4M3", "F8_E5M2", "F8_E8M0", "E8M0", "I8", "U8", "BOOL"), 8),
    **dict.fromkeys(("F6_E2M3", "F6_E3M2"), 6),
    "F4": 4,
}
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})
"""Checkpoint dtypes vLLM casts to the serving dtype on load; others are kept as stored."""

# --dtype / torch_dtype / --kv-cache-dtype names -> bytes per element.
TORCH_DTYPE_BYTES: dict[str, int] = {
    **dict.fromkeys(("float32", "float"), 4),
    **dict.fromkeys(("float16", "half", "bfloat16"), 2),
    **dict.fromkeys(("fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"), 1),
}


def vllm_estimate(
    facts: HFFacts,
    parameters: Mapping[str, object],
    gpu_count: int = 1,
    gpu_total_mb: int | None = None,
) -> Estimate:
    """vLLM: the fraction of the GPU it is told to claim, or the minimum it needs to start.

    vLLM does not allocate what the model needs: it claims gpu-memory-utilization x the GPU's
    memory and fills what the weights leave with KV cache. With the parameter set, that claim is
    the requirement (it needs the GPU's size). Without it, the figure is the minimum vLLM starts
    with (weights, KV cache for one sequence of max-model-len, activations, CUDA graphs): the
    engine must then pass gpu-memory-utilization = reservation / GPU size, or vLLM claims 90%.
    """
    _check_gpu_count(gpu_count)
    try:
        minimum = _vllm_minimum(facts, parameters, gpu_count)
        fraction = _float_param(parameters, "gpu-memory-utilization")
    except _CannotEstimate as exc:
        return Estimate(None, {}, str(exc), gpu_count)
    needed = sum(minimum.values())
    if fraction is None:
        note = (
            f"vLLM minimum at max-model-len {_vllm_max_len(facts, parameters)}; without "
            f"gpu-memory-utilization vLLM claims {VLLM_DEFAULT_GPU_MEMORY_UTILIZATION:.0%} of "
            "each GPU, so the engine must pass reservation / GPU size"
        )
        return Estimate(needed, minimum, note, gpu_count)
    if not 0 < fraction <= 1:
        note = f"gpu-memory-utilization {fraction} is not in (0, 1]"
        return Estimate(None, minimum, note, gpu_count)
    if gpu_total_mb is None:
        note = (
            f"gpu-memory-utilization {fraction} is a share of the GPU: the requirement needs "
            f"the GPU's memory size (the model alone needs at least {needed} MiB per GPU)"
        )
        return Estimate(None, minimum, note, gpu_count)
    claimed = math.floor(fraction * gpu_total_mb)
    if claimed < needed:
        note = (
            f"gpu-memory-utilization {fraction} of {gpu_total_mb} MiB = {claimed} MiB is less "
            f"than the {needed} MiB the model needs per GPU: vLLM will fail to start"
        )
        return Estimate(claimed, minimum, note, gpu_count)
    breakdown = {**minimum, "kv_cache_headroom": claimed - needed}
    note = f"vLLM claims gpu-memory-utilization {fraction} of {gpu_total_mb} MiB"
    return Estimate(claimed, breakdown, note, gpu_count)


def _vllm_minimum(
    facts: HFFacts, parameters: Mapping[str, object], gpu_count: int
) -> dict[str, int]:
    """MiB per GPU with tensor parallelism over the model's GPUs (pipeline stages split layers)."""
    pipeline = max(1, _int_param(parameters, "pipeline-parallel-size") or 1)
    tensor_parallel = max(1, gpu_count // pipeline)
    act_bytes = _vllm_dtype_bytes(parameters)
    weights = _vllm_weight_bytes(facts, act_bytes) / (tensor_parallel * pipeline)
    layers = math.ceil(facts.num_hidden_layers / pipeline)
    kv_cache = (
        layers
        * _vllm_max_len(facts, parameters)
        * _vllm_kv_bytes_per_token_layer(facts, parameters, tensor_parallel, act_bytes)
    )
    tokens = _int_param(parameters, "max-num-batched-tokens") or VLLM_MAX_NUM_BATCHED_TOKENS
    seqs = _int_param(parameters, "max-num-seqs") or VLLM_MAX_NUM_SEQS
    # The profiling pass's peak: MLP gate+up output and a few hidden-wide buffers per token
    # (sharded by tensor parallelism), and the sampler's f32 logits for every sequence.
    hidden_widths = (2 * facts.intermediate_size + 4 * facts.hidden_size) / tensor_parallel
    activations = tokens * hidden_widths * act_bytes + seqs * facts.vocab_size * F32_BYTES
    eager = parameters.get("enforce-eager") in (True, "true", "True")
    return {
        "weights": _mib(weights),
        "kv_cache": _mib(kv_cache),
        "activations": _mib(activations),
        "cuda_graphs": 0 if eager else VLLM_CUDA_GRAPHS_MB,
        "runtime_overhead": CUDA_CONTEXT_MB,
    }


def _vllm_dtype_bytes(parameters: Mapping[str, object]) -> int:
    """Serving dtype: --dtype, else vLLM's `auto`, which serves every float checkpoint (f32
    included) in 16 bits: bf16 stays bf16, f32 and f16 become f16."""
    name = str(parameters.get("dtype", "auto")).strip().lower()
    if name == "auto":
        return 2
    if name not in TORCH_DTYPE_BYTES or TORCH_DTYPE_BYTES[name] < 2:
        raise _CannotEstimate(f"unknown vLLM dtype '{name}'")
    return TORCH_DTYPE_BYTES[name]


def _vllm_weight_bytes(facts: HFFacts, float_bytes: int) -> float:
    """Checkpoint bytes, with float tensors re-sized to the serving dtype."""
    total = 0.0
    for dtype, size in facts.tensor_bytes.items():
        if dtype not in SAFETENSORS_BITS:
            raise _CannotEstimate(f"unknown safetensors dtype '{dtype}' in {facts.path}")
        if dtype in FLOAT_DTYPES:
            total += size / (SAFETENSORS_BITS[dtype] // 8) * float_bytes
        else:
            total += size
    return total


def _vllm_kv_bytes_per_token_layer(
    facts: HFFacts, parameters: Mapping[str, object], tensor_parallel: int, act_bytes: int
) -> float:
    name = str(parameters.get("kv-cache-dtype", "auto")).strip().lower()
    if name == "auto":
        element = act_bytes
    elif name in TORCH_DTYPE_BYTES:
        element = TORCH_DTYPE_BYTES[name]
    else:
        raise _CannotEstimate(f"unknown kv-cache-dtype '{name}'")
    if facts.kv_lora_rank is not None:
        # MLA caches one latent vector + rope key per token and layer, replicated per rank.
        return (facts.kv_lora_rank + (facts.qk_rope_head_dim or 0)) * element
    # vLLM shards KV heads over tensor-parallel ranks, replicating them when there are fewer.
    heads_per_rank = max(1, facts.num_key_value_heads // tensor_parallel)
    return 2 * heads_per_rank * facts.head_dim * element


def _vllm_max_len(facts: HFFacts, parameters: Mapping[str, object]) -> int:
    length = _int_param(parameters, "max-model-len")
    if length is not None and length > 0:
        return length
    if facts.max_position_embeddings is None:
        raise _CannotEstimate(
            "config.json has no max_position_embeddings: set parameters.max-model-len"
        )
    return facts.max_position_embeddings


# ---- the spec-level entry point -------------------------------------------------------------

OVERRIDE_HINT = "set resource_requirements.gpu_memory_mb"


def requirement_mb(
    spec: ModelSpec, facts: ModelFacts | None, gpu_total_mb: int | None = None
) -> Estimate:
    """MiB per GPU the spec's engine needs; `gpu_memory_mb` in the spec wins when set.

    `facts` is None when there are no files to read (docker, a vLLM hub id not on this host).
    `gpu_total_mb` is the size of the GPU the model would run on (for gpu-memory-utilization).
    """
    resources = spec.resource_requirements
    count = resources.gpu_count
    if resources.gpu_memory_mb is not None:
        declared = resources.gpu_memory_mb
        note = "resource_requirements.gpu_memory_mb"
        return Estimate(declared, {"declared": declared}, note, count)
    if count == 0:
        return Estimate(0, {}, "gpu_count is 0: runs on the CPU, no GPU memory", count)
    if spec.framework == "docker":
        note = (
            "docker: cannot estimate a container's needs; set resource_requirements.gpu_memory_mb"
        )
        return Estimate(None, {}, note, count)
    if facts is None:
        note = (
            f"no model files on this host for '{spec.model_path}' (a hub id vLLM would download?)"
            f": cannot estimate; download it or {OVERRIDE_HINT}"
        )
        return Estimate(None, {}, note, count)
    if spec.framework == "llama_cpp" and isinstance(facts, GGUFFacts):
        return llama_cpp_estimate(facts, spec.parameters, count)
    if spec.framework == "vllm" and isinstance(facts, HFFacts):
        return vllm_estimate(facts, spec.parameters, count, gpu_total_mb)
    kind = "a GGUF file" if isinstance(facts, GGUFFacts) else "a Hugging Face directory"
    note = (
        f"{spec.framework} with {kind} cannot be estimated; set resource_requirements.gpu_memory_mb"
    )
    return Estimate(None, {}, note, count)


def render_estimate(estimate: Estimate) -> str:
    """A small table of the breakdown, the per-GPU total and the note."""
    if estimate.per_gpu_mb is None and not estimate.breakdown:
        return f"per GPU: unknown\n{estimate.note}"
    rows = [(part.replace("_", " "), f"{mib:,}") for part, mib in estimate.breakdown.items()]
    total = "unknown" if estimate.per_gpu_mb is None else f"{estimate.per_gpu_mb:,}"
    gpus = "GPU" if estimate.gpu_count == 1 else "GPUs"
    rows.append((f"per GPU (x{estimate.gpu_count} {gpus})", total))
    width = max(len(name) for name, _ in rows)
    value_width = max(len("MiB"), *(len(value) for _, value in rows))
    lines = [f"{'part':<{width}}  {'MiB':>{value_width}}"]
    for i, (name, value) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * (width + 2 + value_width))
        lines.append(f"{name:<{width}}  {value:>{value_width}}")
    if estimate.note:
        lines.append(estimate.note)
    return "\n".join(lines)


# ---- parameter parsing ----------------------------------------------------------------------

_HUMAN_INT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
# vLLM accepts max-model-len like 32k (x1000) or 32K (x1024).
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}


def _int_param(parameters: Mapping[str, object], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _CannotEstimate(f"{key} must be a number, not {value}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value)
    if text.strip().lstrip("-").isdigit():
        return int(text)
    match = _HUMAN_INT.match(text)
    if match:
        return int(float(match.group(1)) * _SUFFIX[match.group(2)])
    raise _CannotEstimate(f"{key} '{value}' is not a whole number")


def _float_param(parameters: Mapping[str, object], key: str) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _CannotEstimate(f"{key} '{value}' is not a number") from None


def _check_gpu_count(gpu_count: int) -> None:
    if gpu_count < 1:  # requirement_mb answers 0 for CPU models before getting here
        raise ValueError(f"gpu_count must be at least 1, not {gpu_count}")


def _mib(size_bytes: float) -> int:
    return math.ceil(size_bytes / MIB)
