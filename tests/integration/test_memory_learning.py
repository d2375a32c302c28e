"""Memory that learns, against real engine processes on declared GPUs.

The engine is the vLLM stand-in holding a known amount of resident memory (FAKE_VLLM_HOLD_MB);
on declared GPUs the reconciler measures the process tree's resident memory in place of NVML's
figure. The model files are a tiny Hugging Face directory, so the planner's first figure is the
estimate from files (vLLM's: 90 % of the GPU by default). What a user notices: a model that was
planned too big makes room once measured, one that was planned too small stops a newcomer from
overbooking the GPU, and what was learned survives a restart of the reconciler.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from apply_support import Host, managed_host, stand_in, wait_for
from daemon_support import running_daemon

from reconciler.loop.memory import read_learned

GPU = [{"index": 0, "name": "Simulated", "memory_mb": 1000}]


def tiny_hf_model(directory: Path) -> str:
    """config.json plus one real safetensors file: enough for the vLLM estimate."""
    directory.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 1024,
        "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config))
    size = 256 * 64 * 2
    header = {"embed.weight": {"dtype": "BF16", "shape": [256, 64], "data_offsets": [0, size]}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(size))
    return str(directory)


def learner(model_id: str, model_path: str, hold_mb: int, **fields) -> dict:
    """A stand-in whose memory the planner has to estimate (no gpu_memory_mb in the spec)."""
    spec = stand_in(model_id, model_path=model_path, env={"FAKE_VLLM_HOLD_MB": str(hold_mb)})
    spec["resource_requirements"] = {"gpu_count": 1, "gpu_memory_mb": None}
    return {**spec, **fields}


@pytest.fixture
def host(tmp_path: Path):
    with managed_host(tmp_path / "host") as h:
        h.write_cluster(GPU)
        yield h


def planned_mb(host: Host, model_id: str) -> int:
    line = next(
        line
        for line in host.cli("plan", str(host.desired)).output.splitlines()
        if line.strip().startswith(f"{model_id}:")
    )
    return int(line.split(":")[1].split()[0])


def test_an_over_estimate_makes_room_once_the_engine_was_measured(host: Host, tmp_path: Path):
    model = tiny_hf_model(tmp_path / "tiny")
    # vLLM's estimate reserves 90 % of the 1000 MiB GPU; the engine holds ~100 MiB
    host.write_model(learner("big-guess", model, hold_mb=100, priority=6))
    host.write_model(
        stand_in("second", priority=4, **{"resource_requirements": {"gpu_memory_mb": 300}})
    )
    before = host.cli("plan", str(host.desired)).output
    assert "second" in before and "unschedulable" in before.lower(), before

    host.apply()
    assert host.statuses() == {"big-guess": "running", "second": "running"}
    figures = read_learned(host.state_dir)["big-guess"]
    (learned,) = figures.values()
    assert learned.measured_by == "rss"
    assert 100 <= learned.peak_mb < 400  # the held memory plus the interpreter's
    assert learned.estimated_mb is None or learned.estimated_mb > learned.peak_mb
    assert host.model("big-guess").memory_mb < 900


def test_an_under_estimate_stops_a_newcomer_from_overbooking(host: Host, tmp_path: Path):
    model = tiny_hf_model(tmp_path / "tiny")
    # the spec says vLLM may use 10 % of the GPU (100 MiB), but the engine holds ~600 MiB
    small_guess = learner(
        "small-guess",
        model,
        hold_mb=600,
        priority=6,
        parameters={"max-model-len": 1024, "gpu-memory-utilization": 0.1},
    )
    host.write_model(small_guess)
    host.apply()
    assert host.statuses() == {"small-guess": "running"}
    assert planned_mb(host, "small-guess") > 600

    # 400 MiB would fit beside the 100 MiB guess; it does not beside what the engine really uses
    host.write_model(
        stand_in("newcomer", priority=4, **{"resource_requirements": {"gpu_memory_mb": 400}})
    )
    plan = host.cli("plan", str(host.desired)).output
    assert "unschedulable" in plan.lower() and "newcomer" in plan, plan


def test_what_was_learned_survives_a_restart_and_feeds_the_plan(host: Host, tmp_path: Path):
    model = tiny_hf_model(tmp_path / "tiny")
    host.write_model(learner("kept", model, hold_mb=150))
    host.apply()
    (learned,) = read_learned(host.state_dir)["kept"].values()
    # a fresh process (the CLI) plans with the measured figure, and says so
    plan = host.cli("plan", str(host.desired)).output
    line = next(line for line in plan.splitlines() if line.strip().startswith("kept:"))
    assert "measured" in line and str(learned.peak_mb) in line, plan


def test_the_api_and_metrics_show_estimate_and_measurement_across_a_restart(tmp_path: Path):
    model = tiny_hf_model(tmp_path / "tiny")
    with running_daemon(tmp_path / "host", [learner("seen", model, hold_mb=120)], gpus=GPU) as d:
        d.wait_statuses({"seen": "running"})

        def measured() -> dict | None:
            memory = d.json("/api/v1/models/seen")["memory"]
            return memory if memory and memory["measured_mb"] else None

        memory = wait_for(measured, 30, 0.2)
        assert memory, d.log()
        assert memory["measured_by"] == "rss"
        assert memory["estimated_mb"] > memory["measured_mb"] >= 120
        metrics = d.get("/metrics").text
        assert 'reconciler_model_gpu_memory_measured_bytes{model="seen"}' in metrics
        assert 'reconciler_model_gpu_memory_estimated_bytes{model="seen"}' in metrics
        d.stop()
        d.start()  # a new daemon process (persistence itself: the plan test above)
        d.wait_ready()  # the API answers 503 until the new daemon's first pass
        again = d.json("/api/v1/models/seen")["memory"]
        assert again["peak_mb"] >= memory["measured_mb"]
