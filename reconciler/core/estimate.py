"""GPU memory a model needs, in MiB per GPU: the arithmetic shared by every engine, and what the
planner reserves once an engine has run (the learned peak plus a margin). PURE.
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
class Derivation:
    """How one part of an estimate was computed (`reconciler estimate --explain`)."""

    formula: str
    """the arithmetic with its numbers, as an operator would redo it by hand"""
    factors: dict[str, float] = field(default_factory=dict)
    """the same numbers by name"""
    size_bytes: float = 0
    """what the formula comes to, per GPU, before rounding up to whole MiB"""


@dataclass(frozen=True)
class Estimate:
    """MiB per GPU, how they add up, and a sentence saying why (or why unknown)."""

    per_gpu_mb: int | None
    breakdown: dict[str, int] = field(default_factory=dict)
    """MiB per GPU by part; sums to per_gpu_mb unless the note says otherwise"""
    note: str = ""
    gpu_count: int = 1
    derivations: dict[str, Derivation] = field(default_factory=dict, compare=False)
    """per part of the breakdown, how it was computed (explanation only: not compared)"""


class CannotEstimate(Exception):
    """A parameter or fact the arithmetic cannot interpret; the hook turns it into a note."""


# ---- shared constants -----------------------------------------------------------------------

CUDA_CONTEXT_MB = 400
"""Per process and GPU before any model memory: the CUDA context, cuBLAS workspaces and kernel
images. nvidia-smi shows ~300-500 MiB for an idle CUDA process depending on driver, GPU and
lazy module loading; the upper-middle of that range."""


def cuda_context() -> Derivation:
    """The runtime_overhead part every CUDA engine reserves."""
    formula = (
        f"CUDA context, cuBLAS workspaces and kernel images: {CUDA_CONTEXT_MB} MiB per process "
        "and GPU (a constant; nothing of it exists on a CPU)"
    )
    return Derivation(formula, {"cuda_context_mb": CUDA_CONTEXT_MB}, CUDA_CONTEXT_MB * MIB)


F32_BYTES = 4
"""Engines compute logits (and llama.cpp its attention scores) in f32."""

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
        how = Derivation(f"declared in the spec: {note}", {"declared_mb": declared}, declared * MIB)
        return Estimate(declared, {"declared": declared}, note, count, {"declared": how})
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


def render_explain(estimate: Estimate) -> str:
    """The breakdown with how each part was computed, then the per-GPU total and the note."""
    if estimate.per_gpu_mb is None and not estimate.breakdown:
        return render_estimate(estimate)
    rows = [
        (part.replace("_", " "), f"{mb:,}", _how(estimate.derivations.get(part)))
        for part, mb in estimate.breakdown.items()
    ]
    total = "unknown" if estimate.per_gpu_mb is None else f"{estimate.per_gpu_mb:,}"
    gpus = "GPU" if estimate.gpu_count == 1 else "GPUs"
    added = " + ".join(f"{mb:,}" for mb in estimate.breakdown.values())
    rows.append((f"per GPU (x{estimate.gpu_count} {gpus})", total, f"= {added}"))
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len("MiB"), *(len(value) for _, value, _ in rows))
    lines = [f"{'part':<{width}}  {'MiB':>{value_width}}  how"]
    for i, (name, value, how) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * (width + 2 + value_width))
        lines.append(f"{name:<{width}}  {value:>{value_width}}  {how}".rstrip())
    lines.append("(each part is rounded up to whole MiB)")
    if estimate.note:
        lines.append(estimate.note)
    return "\n".join(lines)


def _how(derivation: Derivation | None) -> str:
    return "" if derivation is None else derivation.formula


def number(value: float) -> str:
    """2,048 for whole numbers, 1.0625 for fractions: how factors are written in formulas."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


def mib_text(size_bytes: float) -> str:
    return f"{size_bytes / MIB:,.1f} MiB"


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
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError  # a list or mapping from YAML, or a YAML boolean
        return float(value)
    except ValueError:
        raise CannotEstimate(f"{key} '{value}' is not a number") from None


def check_gpu_count(gpu_count: int) -> None:
    if gpu_count < 1:  # requirement_mb answers 0 for CPU models before getting here
        raise ValueError(f"gpu_count must be at least 1, not {gpu_count}")


def mib(size_bytes: float) -> int:
    return math.ceil(size_bytes / MIB)


LEARNED_MARGIN = 0.10
"""Reserved on top of the measured peak, as a fraction of it. One run's peak is a sample, not a
bound: llama.cpp's compute buffers and vLLM's activations grow with batch size and prompt length,
and a later run can hit a larger batch than the one measured; allocator fragmentation adds a few
per cent on long-running engines. 10 % covers what we saw between idle and loaded runs."""

LEARNED_MARGIN_MIN_MB = 64
"""At least this much margin: small models' peaks move by tens of MiB between runs (thread-local
buffers, tokenizer caches), which a percentage of a few hundred MiB does not cover."""

Basis = Literal["declared", "measured", "estimated", "unknown"]


@dataclass(frozen=True)
class MemoryFigures:
    """What is known of one model's memory for one spec hash, in MiB per GPU."""

    estimated_mb: int | None = None
    measured_mb: int | None = None
    """the latest measurement of a running engine"""
    peak_mb: int | None = None
    """the largest measurement since this spec hash first ran"""
    measured_by: str | None = None
    """"nvml" (GPU memory of the engine's process tree) or "rss" (resident memory standing in on
    declared GPUs)"""


@dataclass(frozen=True)
class Reservation:
    """What the planner reserves per GPU, which figure that is, and why."""

    mb: int | None
    basis: Basis
    reason: str


def with_margin(peak_mb: int) -> int:
    return peak_mb + max(math.ceil(peak_mb * LEARNED_MARGIN), LEARNED_MARGIN_MIN_MB)


def reservation(declared_mb: int | None, figures: MemoryFigures | None) -> Reservation:
    """The operator's number wins; else the learned peak plus margin; else the estimate.

    A declared `gpu_memory_mb` is the operator's decision (they may know of load we never saw),
    so learning never overrides it; `grown_past` still reports when an engine outgrows it.
    """
    if declared_mb is not None:
        return Reservation(declared_mb, "declared", "resource_requirements.gpu_memory_mb")
    figures = figures or MemoryFigures()
    if figures.peak_mb is not None:
        reserved = with_margin(figures.peak_mb)
        how = "GPU memory" if figures.measured_by == "nvml" else "resident memory"
        estimate = (
            f"; the estimate was {figures.estimated_mb} MiB"
            if figures.estimated_mb is not None
            else ""
        )
        return Reservation(
            reserved,
            "measured",
            f"measured peak {figures.peak_mb} MiB ({how}) + margin{estimate}",
        )
    if figures.estimated_mb is not None:
        return Reservation(figures.estimated_mb, "estimated", "estimated from the model's files")
    return Reservation(None, "unknown", "no estimate and no measurement")


def record_measurement(
    figures: MemoryFigures | None, measured_mb: int, measured_by: str
) -> MemoryFigures:
    """A new measurement of a running engine: the latest figure, and the peak so far."""
    figures = figures or MemoryFigures()
    peak = measured_mb if figures.peak_mb is None else max(figures.peak_mb, measured_mb)
    return MemoryFigures(figures.estimated_mb, measured_mb, peak, measured_by)


def grown_past(reserved_mb: int | None, measured_mb: int | None) -> bool:
    """True when an engine uses more than the planner reserved for it: the host is overbooked."""
    return reserved_mb is not None and measured_mb is not None and measured_mb > reserved_mb
