"""GPU memory a model needs, in MiB per GPU: the arithmetic shared by every engine. PURE.

The facts (what the model files say) are plain values that `reconciler.models.facts` reads; each
engine's estimate hook (its descriptor in reconciler/engines) turns facts + the spec's parameters
into an `Estimate` with a breakdown an operator can check against the engine's own log. This
module holds what the hooks share: the facts and result types, the CUDA context, the arithmetic
of servers that load a Hugging Face checkpoint and claim a share of the GPU (vLLM and alike),
the spec-level rules (declared memory wins, CPU models need none) and parameter parsing.

Every constant says where its number comes from. The figures are deliberately on the high
side: a reservation that is too small makes an engine fail to start or get killed out of
memory, one that is too large only leaves room unused, and an operator can always override
with `resource_requirements.gpu_memory_mb`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

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

ModelFiles = Literal["gguf", "hf", "none"]
"""What an engine loads: a GGUF file, a Hugging Face directory (config.json + safetensors; a
hub id is looked up in the hub cache), or nothing readable here (a container's image)."""


@dataclass(frozen=True)
class Estimate:
    """MiB per GPU, how they add up, and a sentence saying why (or why unknown)."""

    per_gpu_mb: int | None
    breakdown: dict[str, int] = field(default_factory=dict)
    """MiB per GPU by part; sums to per_gpu_mb unless the note says otherwise"""
    note: str = ""
    gpu_count: int = 1


class CannotEstimate(Exception):
    """A parameter or fact the arithmetic cannot interpret; the hook turns it into a note."""


# ---- shared constants -----------------------------------------------------------------------

CUDA_CONTEXT_MB = 400
"""Per process and GPU before any model memory: the CUDA context, cuBLAS workspaces and kernel
images. nvidia-smi shows ~300-500 MiB for an idle CUDA process depending on driver, GPU and
lazy module loading; the upper-middle of that range."""

F32_BYTES = 4
"""Engines compute logits (and llama.cpp its attention scores) in f32."""

# ---- servers of Hugging Face checkpoints that claim a share of the GPU (vLLM and alike) ------

HF_CUDA_GRAPHS_MB = 512
"""CUDA graphs captured at start-up: vLLM's log says `Graph capturing finished ... took`
~0.3-1 GiB for 1-70B models at the default capture sizes (alike in similar servers); 0 when the
engine runs eagerly."""

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
"""Checkpoint dtypes the servers cast to the serving dtype on load; others are kept as stored."""

# --dtype / torch_dtype / --kv-cache-dtype names -> bytes per element.
TORCH_DTYPE_BYTES: dict[str, int] = {
    **dict.fromkeys(("float32", "float"), 4),
    **dict.fromkeys(("float16", "half", "bfloat16", "bf16"), 2),
    **dict.fromkeys(
        ("fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"),
        1,
    ),
}


@dataclass(frozen=True)
class HFServing:
    """An HF-checkpoint server's settings, read from the spec by the engine's hook."""

    engine: str
    """the engine's name in notes ("vLLM", ...)"""
    max_len: int
    max_len_flag: str
    dtype: str
    kv_cache_dtype: str
    pipeline: int
    batched_tokens: int
    seqs: int
    eager: bool
    fraction: float | None
    fraction_flag: str
    default_fraction: float


def hf_max_len(facts: HFFacts, length: int | None, flag: str) -> int:
    """The context the KV cache must hold: the spec's flag, else the model's config."""
    if length is not None and length > 0:
        return length
    if facts.max_position_embeddings is None:
        raise CannotEstimate(f"config.json has no max_position_embeddings: set parameters.{flag}")
    return facts.max_position_embeddings


def hf_serving_estimate(
    facts: HFFacts, serving: HFServing, gpu_count: int = 1, gpu_total_mb: int | None = None
) -> Estimate:
    """The fraction of the GPU the server is told to claim, or the minimum it needs to start.

    These servers do not allocate what the model needs: they claim fraction x the GPU's memory
    and fill what the weights leave with KV cache. With the fraction set, that claim is the
    requirement (it needs the GPU's size). Without it, the figure is the minimum the server
    starts with (weights, KV cache for one sequence of the maximum length, activations, CUDA
    graphs): the engine must then be given reservation / GPU size, or it claims its default.
    """
    check_gpu_count(gpu_count)
    try:
        minimum = _hf_minimum(facts, serving, gpu_count)
    except CannotEstimate as exc:
        return Estimate(None, {}, str(exc), gpu_count)
    needed = sum(minimum.values())
    fraction, flag, engine = serving.fraction, serving.fraction_flag, serving.engine
    if fraction is None:
        note = (
            f"{engine} minimum at {serving.max_len_flag} {serving.max_len}; without {flag} "
            f"{engine} claims {serving.default_fraction:.0%} of each GPU, so the engine must "
            "pass reservation / GPU size"
        )
        return Estimate(needed, minimum, note, gpu_count)
    if not 0 < fraction <= 1:
        return Estimate(None, minimum, f"{flag} {fraction} is not in (0, 1]", gpu_count)
    if gpu_total_mb is None:
        note = (
            f"{flag} {fraction} is a share of the GPU: the requirement needs the GPU's memory "
            f"size (the model alone needs at least {needed} MiB per GPU)"
        )
        return Estimate(None, minimum, note, gpu_count)
    claimed = math.floor(fraction * gpu_total_mb)
    if claimed < needed:
        note = (
            f"{flag} {fraction} of {gpu_total_mb} MiB = {claimed} MiB is less than the "
            f"{needed} MiB the model needs per GPU: {engine} will fail to start"
        )
        return Estimate(claimed, minimum, note, gpu_count)
    breakdown = {**minimum, "kv_cache_headroom": claimed - needed}
    note = f"{engine} claims {flag} {fraction} of {gpu_total_mb} MiB"
    return Estimate(claimed, breakdown, note, gpu_count)


def _hf_minimum(facts: HFFacts, serving: HFServing, gpu_count: int) -> dict[str, int]:
    """MiB per GPU with tensor parallelism over the model's GPUs (pipeline stages split layers)."""
    pipeline = max(1, serving.pipeline)
    tensor_parallel = max(1, gpu_count // pipeline)
    act_bytes = _hf_dtype_bytes(serving)
    weights = _hf_weight_bytes(facts, act_bytes) / (tensor_parallel * pipeline)
    layers = math.ceil(facts.num_hidden_layers / pipeline)
    kv_token_layer = _hf_kv_bytes_per_token_layer(facts, serving, tensor_parallel, act_bytes)
    kv_cache = layers * serving.max_len * kv_token_layer
    # The profiling pass's peak: MLP gate+up output and a few hidden-wide buffers per token
    # (sharded by tensor parallelism), and the sampler's f32 logits for every sequence.
    hidden_widths = (2 * facts.intermediate_size + 4 * facts.hidden_size) / tensor_parallel
    activations = (
        serving.batched_tokens * hidden_widths * act_bytes
        + serving.seqs * facts.vocab_size * F32_BYTES
    )
    return {
        "weights": mib(weights),
        "kv_cache": mib(kv_cache),
        "activations": mib(activations),
        "cuda_graphs": 0 if serving.eager else HF_CUDA_GRAPHS_MB,
        "runtime_overhead": CUDA_CONTEXT_MB,
    }


def _hf_dtype_bytes(serving: HFServing) -> int:
    """Serving dtype: the flag, else `auto`, which serves every float checkpoint (f32 included)
    in 16 bits: bf16 stays bf16, f32 and f16 become f16."""
    name = serving.dtype.strip().lower()
    if name == "auto":
        return 2
    if name not in TORCH_DTYPE_BYTES or TORCH_DTYPE_BYTES[name] < 2:
        raise CannotEstimate(f"unknown {serving.engine} dtype '{name}'")
    return TORCH_DTYPE_BYTES[name]


def _hf_weight_bytes(facts: HFFacts, float_bytes: int) -> float:
    """Checkpoint bytes, with float tensors re-sized to the serving dtype."""
    total = 0.0
    for dtype, size in facts.tensor_bytes.items():
        if dtype not in SAFETENSORS_BITS:
            raise CannotEstimate(f"unknown safetensors dtype '{dtype}' in {facts.path}")
        if dtype in FLOAT_DTYPES:
            total += size / (SAFETENSORS_BITS[dtype] // 8) * float_bytes
        else:
            total += size
    return total


def _hf_kv_bytes_per_token_layer(
    facts: HFFacts, serving: HFServing, tensor_parallel: int, act_bytes: int
) -> float:
    name = serving.kv_cache_dtype.strip().lower()
    if name == "auto":
        element = act_bytes
    elif name in TORCH_DTYPE_BYTES:
        element = TORCH_DTYPE_BYTES[name]
    else:
        raise CannotEstimate(f"unknown kv-cache-dtype '{name}'")
    if facts.kv_lora_rank is not None:
        # MLA caches one latent vector + rope key per token and layer, replicated per rank.
        return (facts.kv_lora_rank + (facts.qk_rope_head_dim or 0)) * element
    # KV heads are sharded over tensor-parallel ranks, replicated when there are fewer.
    heads_per_rank = max(1, facts.num_key_value_heads // tensor_parallel)
    return 2 * heads_per_rank * facts.head_dim * element


# ---- the spec-level entry point -------------------------------------------------------------

OVERRIDE_HINT = "set resource_requirements.gpu_memory_mb"


Hook = Callable[[ModelSpec, ModelFacts, int | None], Estimate]
"""An engine's estimate: (spec, facts, the GPU's MiB or None) -> Estimate."""


def requirement_mb(
    spec: ModelSpec,
    facts: ModelFacts | None,
    hook: Hook | None,
    gpu_total_mb: int | None = None,
) -> Estimate:
    """MiB per GPU the spec's engine needs; `gpu_memory_mb` in the spec wins when set.

    `hook` is the engine's estimate (None: a container, whose needs nobody can know). `facts` is
    None when there are no files to read (a hub id not on this host). `gpu_total_mb` is the size
    of the GPU the model would run on (for a share-of-the-GPU setting).
    """
    resources = spec.resource_requirements
    count = resources.gpu_count
    if resources.gpu_memory_mb is not None:
        declared = resources.gpu_memory_mb
        note = "resource_requirements.gpu_memory_mb"
        return Estimate(declared, {"declared": declared}, note, count)
    if count == 0:
        return Estimate(0, {}, "gpu_count is 0: runs on the CPU, no GPU memory", count)
    if hook is None:
        note = (
            f"{spec.framework}: cannot estimate a container's needs; set "
            "resource_requirements.gpu_memory_mb"
        )
        return Estimate(None, {}, note, count)
    if facts is None:
        note = (
            f"no model files on this host for '{spec.model_path}' (a hub id the engine would "
            "download?)"
            f": cannot estimate; download it or {OVERRIDE_HINT}"
        )
        return Estimate(None, {}, note, count)
    return hook(spec, facts, gpu_total_mb)


def mismatched_facts(spec: ModelSpec, facts: ModelFacts) -> Estimate:
    """The answer of a hook handed facts of a format its engine does not load."""
    kind = "a GGUF file" if isinstance(facts, GGUFFacts) else "a Hugging Face directory"
    note = (
        f"{spec.framework} with {kind} cannot be estimated; set resource_requirements.gpu_memory_mb"
    )
    return Estimate(None, {}, note, spec.resource_requirements.gpu_count)


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
# Servers like vLLM accept lengths like 32k (x1000) or 32K (x1024).
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}


def int_param(parameters: Mapping[str, object], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise CannotEstimate(f"{key} must be a number, not {value}")
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
    raise CannotEstimate(f"{key} '{value}' is not a whole number")


def float_param(parameters: Mapping[str, object], key: str) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CannotEstimate(f"{key} '{value}' is not a number") from None


def check_gpu_count(gpu_count: int) -> None:
    if gpu_count < 1:  # requirement_mb answers 0 for CPU models before getting here
        raise ValueError(f"gpu_count must be at least 1, not {gpu_count}")


def mib(size_bytes: float) -> int:
    return math.ceil(size_bytes / MIB)
