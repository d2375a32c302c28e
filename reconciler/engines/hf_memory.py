"""The memory of servers of Hugging Face checkpoints (vLLM and the like): their share of each GPU.

These servers load config.json + safetensors (or download a hub id), shard the model over
tensor-parallel ranks, and claim a share of each GPU for weights + KV cache. Each engine module
names its own flags with an `HFFlags`; the arithmetic is the same. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.core.estimate import (
    CUDA_CONTEXT_MB,
    F32_BYTES,
    MIB,
    CannotEstimate,
    Derivation,
    Estimate,
    HFFacts,
    Hook,
    ModelFacts,
    check_gpu_count,
    cuda_context,
    float_param,
    int_param,
    mib,
    mib_text,
    mismatched_facts,
    number,
)
from reconciler.core.spec import ModelSpec

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
class HFFlags:
    """How one HF-checkpoint server names the settings its memory depends on, and its defaults."""

    engine: str
    """the engine's name in notes ("vLLM", ...)"""
    max_len: str
    batched_tokens: str
    """the tokens of one forward pass (start-up profiling, a prefill chunk): the activation peak"""
    seqs: str
    """the sequences sampled at once: one row of f32 logits each in the sampler"""
    eager: str
    """the switch that turns CUDA graphs off"""
    fraction: str
    """the share of each GPU the server claims"""
    pipeline: str = "pipeline-parallel-size"
    # What the servers do when the spec does not set these: alike in every server today (each
    # engine module says where its figures come from).
    batched_tokens_default: int = 8192
    seqs_default: int = 256
    fraction_default: float = 0.9


@dataclass(frozen=True)
class HFServing:
    """The server's settings for one spec, read through its HFFlags."""

    flags: HFFlags
    max_len: int
    dtype: str
    kv_cache_dtype: str
    pipeline: int
    batched_tokens: int
    seqs: int
    eager: bool
    fraction: float | None


def hf_serving(facts: HFFacts, parameters: Mapping[str, object], flags: HFFlags) -> HFServing:
    """CannotEstimate for a value the arithmetic cannot read."""
    batched = int_param(parameters, flags.batched_tokens)
    return HFServing(
        flags=flags,
        max_len=hf_max_len(facts, int_param(parameters, flags.max_len), flags.max_len),
        dtype=str(parameters.get("dtype", "auto")),
        kv_cache_dtype=str(parameters.get("kv-cache-dtype", "auto")),
        pipeline=int_param(parameters, flags.pipeline) or 1,
        batched_tokens=batched if batched and batched > 0 else flags.batched_tokens_default,
        seqs=int_param(parameters, flags.seqs) or flags.seqs_default,
        eager=parameters.get(flags.eager) in (True, "true", "True"),
        fraction=float_param(parameters, flags.fraction),
    )


def hf_estimate(
    flags: HFFlags,
    facts: HFFacts,
    parameters: Mapping[str, object],
    gpu_count: int = 1,
    gpu_total_mb: int | None = None,
) -> Estimate:
    """The server's share of the GPU, or the minimum it needs to start (see hf_serving_estimate)."""
    try:
        serving = hf_serving(facts, parameters, flags)
    except CannotEstimate as exc:
        return Estimate(None, {}, str(exc), gpu_count)
    return hf_serving_estimate(facts, serving, gpu_count, gpu_total_mb)


def hf_hook(flags: HFFlags) -> Hook:
    """The estimate hook of an HF-checkpoint server named by `flags`."""

    def hook(spec: ModelSpec, facts: ModelFacts, gpu_total_mb: int | None) -> Estimate:
        if not isinstance(facts, HFFacts):
            return mismatched_facts(spec, facts)
        count = spec.resource_requirements.gpu_count
        return hf_estimate(flags, facts, spec.parameters, count, gpu_total_mb)

    return hook


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
        minimum, how = _hf_minimum(facts, serving, gpu_count)
    except CannotEstimate as exc:
        return Estimate(None, {}, str(exc), gpu_count)
    needed = sum(minimum.values())
    fraction, flag, engine = serving.fraction, serving.flags.fraction, serving.flags.engine
    if fraction is None:
        note = (
            f"{engine} minimum at {serving.flags.max_len} {serving.max_len}; without {flag} "
            f"{engine} claims {serving.flags.fraction_default:.0%} of each GPU, so the engine "
            "must pass reservation / GPU size"
        )
        return Estimate(needed, minimum, note, gpu_count, how)
    if not 0 < fraction <= 1:
        return Estimate(None, minimum, f"{flag} {fraction} is not in (0, 1]", gpu_count, how)
    if gpu_total_mb is None:
        note = (
            f"{flag} {fraction} is a share of the GPU: the requirement needs the GPU's memory "
            f"size (the model alone needs at least {needed} MiB per GPU)"
        )
        return Estimate(None, minimum, note, gpu_count, how)
    claimed = math.floor(fraction * gpu_total_mb)
    if claimed < needed:
        note = (
            f"{flag} {fraction} of {gpu_total_mb} MiB = {claimed} MiB is less than the "
            f"{needed} MiB the model needs per GPU: {engine} will fail to start"
        )
        return Estimate(claimed, minimum, note, gpu_count, how)
    breakdown = {**minimum, "kv_cache_headroom": claimed - needed}
    note = f"{engine} claims {flag} {fraction} of {gpu_total_mb} MiB"
    headroom = Derivation(
        f"{flag} {fraction} x {gpu_total_mb:,} MiB = {claimed:,} MiB, less the {needed:,} MiB "
        f"above: {engine} fills it with more KV cache",
        {"fraction": fraction, "gpu_total_mb": gpu_total_mb, "needed_mb": needed},
        (claimed - needed) * MIB,
    )
    return Estimate(claimed, breakdown, note, gpu_count, {**how, "kv_cache_headroom": headroom})


def _hf_minimum(
    facts: HFFacts, serving: HFServing, gpu_count: int
) -> tuple[dict[str, int], dict[str, Derivation]]:
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
    breakdown = {
        "weights": mib(weights),
        "kv_cache": mib(kv_cache),
        "activations": mib(activations),
        "cuda_graphs": 0 if serving.eager else HF_CUDA_GRAPHS_MB,
        "runtime_overhead": CUDA_CONTEXT_MB,
    }
    shards = f"/ {tensor_parallel} tensor-parallel x {pipeline} pipeline"
    graphs = breakdown["cuda_graphs"]
    how = {
        "weights": Derivation(
            f"checkpoint {mib_text(_hf_weight_bytes(facts, act_bytes))} (floats as "
            f"{act_bytes} B) {shards}",
            {"tensor_parallel": tensor_parallel, "pipeline": pipeline, "dtype_bytes": act_bytes},
            weights,
        ),
        "kv_cache": Derivation(
            f"{number(serving.max_len)} {serving.flags.max_len} (one sequence) x {layers} layers"
            f" x {number(kv_token_layer)} B per token and layer"
            f" ({_kv_shape(facts, tensor_parallel)})",
            {
                "context": serving.max_len,
                "layers": layers,
                "bytes_per_token_layer": kv_token_layer,
                "parallel_slots": 1,
            },
            kv_cache,
        ),
        "activations": Derivation(
            f"{number(serving.batched_tokens)} batched tokens x (2 x "
            f"{number(facts.intermediate_size)} + 4 x {number(facts.hidden_size)})"
            f" / {tensor_parallel} x {act_bytes} B"
            f" + logits {serving.seqs} seqs x {number(facts.vocab_size)} vocab x 4 B",
            {"batched_tokens": serving.batched_tokens, "seqs": serving.seqs},
            activations,
        ),
        "cuda_graphs": Derivation(
            f"CUDA graphs captured at start-up: {graphs} MiB"
            + (f" ({serving.flags.eager} is set)" if serving.eager else ""),
            {"cuda_graphs_mb": graphs},
            graphs * MIB,
        ),
        "runtime_overhead": cuda_context(),
    }
    return breakdown, how


def _kv_shape(facts: HFFacts, tensor_parallel: int) -> str:
    if facts.kv_lora_rank is not None:
        return f"latent {facts.kv_lora_rank} + rope {facts.qk_rope_head_dim or 0}, per rank"
    heads = max(1, facts.num_key_value_heads // tensor_parallel)
    return f"2 (K and V) x {heads} KV heads per rank x {facts.head_dim} head size x dtype bytes"


def _hf_dtype_bytes(serving: HFServing) -> int:
    """Serving dtype: the flag, else `auto`, which serves every float checkpoint (f32 included)
    in 16 bits: bf16 stays bf16, f32 and f16 become f16."""
    name = serving.dtype.strip().lower()
    if name == "auto":
        return 2
    if name not in TORCH_DTYPE_BYTES or TORCH_DTYPE_BYTES[name] < 2:
        raise CannotEstimate(f"unknown {serving.flags.engine} dtype '{name}'")
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
