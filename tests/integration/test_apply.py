"""`reconciler apply` against real processes, run as a user runs it (the CLI in a subprocess).

Cheap engines are tests/fakes/fake_vllm.py (framework vllm); the real llama.cpp engine serves
the packaged Gemma 3 270M GGUF on the CPU. GPUs are declared in cluster.yaml (simulated), so
placement and preemption are real decisions of the planner while the engines run on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from apply_support import (
    FAKE_ROGUE,
    Host,
    gemma,
    managed_host,
    running,
    stand_in,
    vllm_wrapper,
    wait_gone,
)

from reconciler.core.instance import Status


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        yield host


def complete(port: int, prompt: str = "The capital of France is") -> str:
    """POST /v1/completions (OpenAI-compatible); the generated text."""
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"prompt": prompt, "max_tokens": 8, "temperature": 0},
        timeout=60,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


@pytest.mark.slow
def test_real_llama_cpp_engine_through_apply(host: Host) -> None:
    host.write_model(gemma("gemma"))
    host.write_model(stand_in("sidecar"))

    first = host.apply(timeout=180)
    assert first.actions == ["start gemma: not running yet", "start sidecar: not running yet"]
    running(host, "gemma", "sidecar")
    assert host.model("gemma").gpus == (0,), "placed on the simulated GPU"
    text = complete(host.port("gemma"))
    assert text.strip(), "the real model generated nothing"
    gemma_pid, sidecar_pid = host.pid("gemma"), host.pid("sidecar")

    # a second apply changes nothing
    again = host.apply()
    assert again.actions == [] and "nothing to do" in again.stdout, again
    assert (host.pid("gemma"), host.pid("sidecar")) == (gemma_pid, sidecar_pid)
    assert len(host.events("start")) == 2

    # a changed parameter restarts that engine only, and the engine gets the new value
    host.write_model(gemma("gemma", parameters={"ctx-size": 1024, "threads": 2}))
    changed = host.apply(timeout=180)
    assert changed.actions == ["restart gemma: spec changed"], changed
    assert wait_gone(gemma_pid)
    new_pid = host.pid("gemma")
    assert new_pid != gemma_pid
    assert host.pid("sidecar") == sidecar_pid
    argv = psutil.Process(new_pid).cmdline()
    flag = "--ctx-size" if "--ctx-size" in argv else "--n_ctx"  # llama-server or llama_cpp.server
    assert argv[argv.index(flag) + 1] == "1024", argv
    running(host, "gemma", "sidecar")
    assert complete(host.port("gemma")).strip()

    # a removed spec stops the engine and leaves no process behind
    port = host.port("gemma")
    host.remove_model("gemma")
    removed = host.apply()
    assert removed.actions == ["stop gemma: removed from desired state"], removed
    assert wait_gone(new_pid)
    assert "gemma" not in host.engines()
    assert "gemma" not in host.state().models
    assert host.pid("sidecar") == sidecar_pid
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2, trust_env=False)


def test_killed_engine_is_restarted_with_backoff(host: Host) -> None:
    host.write_model(stand_in("worker", retry_policy={"backoff_s": 1.0, "max_retries": 5}))
    host.apply()
    for round_ in (1, 2):
        pid = host.pid("worker")
        psutil.Process(pid).kill()  # kill -9
        assert wait_gone(pid)
        result = host.apply()
        assert "start worker: restart after error: engine exited" in result.stdout, result
        running(host, "worker")
        assert host.pid("worker") != pid
        model = host.model("worker")
        assert model.restarts_total == round_
        assert model.restarts == 0, "ready again: the next crash starts the backoff afresh"
        crashed = host.events("crashed", "worker")
        assert len(crashed) == round_
        restarted = host.events("start", "worker")[-1]
        waited = restarted["time"] - crashed[-1]["time"]
        # jitter lets the backoff be 0.8 s; the crash event is written a little after the pass's
        # clock reading that the retry time counts from (loading desired state comes between)
        assert waited >= 0.6 * 1.0, f"restarted {waited:.2f}s after the crash: no backoff"


def test_a_hung_engine_is_restarted_after_failure_threshold_one_shot_applies(host: Host) -> None:
    """Failed probes are counted in the state file: one-shot applies add up like a daemon's."""
    host.env["RECONCILER_VLLM"] = str(vllm_wrapper(host.root / "rogue-bin", FAKE_ROGUE))
    hang = host.root / "hang-pid"
    check = {"failure_threshold": 3, "timeout_s": 0.5, "interval_s": 1}
    host.write_model(stand_in("hung", env={"FAKE_ROGUE_HANG_FILE": str(hang)}, health_check=check))
    host.apply()
    pid = host.pid("hung")

    # one failed answer, then an answer: the count starts again
    hang.write_text(str(pid))
    host.apply()
    assert host.model("hung").probe_failures == 1
    hang.write_text("")
    host.apply()
    assert host.model("hung").probe_failures == 0

    hang.write_text(str(pid))
    for misses in (1, 2):
        host.apply()
        model = host.model("hung")
        assert (model.status, model.probe_failures, model.pid) == (Status.running, misses, pid)
        assert host.events("crashed") == []
    restarted = host.apply()
    assert "start hung: restart after error: unhealthy: 3 failed health checks" in restarted.stdout
    assert wait_gone(pid)
    running(host, "hung")
    model = host.model("hung")
    assert (model.restarts_total, model.probe_failures) == (1, 0)
    (crash,) = host.events("crashed", "hung")
    reason = "unhealthy: 3 failed health checks in a row: GET /health: ReadTimeout"
    assert reason in crash["message"], crash


def test_engine_that_exits_at_once_ends_in_error_and_its_fallback_runs(host: Host) -> None:
    broken = host.root / "dependency-missing"
    broken.touch()
    host.write_model(
        stand_in(
            "primary",
            priority=7,
            env={"FAKE_VLLM_EXIT_IF_EXISTS": str(broken)},
            retry_policy={"max_retries": 2, "backoff_s": 0.2},
            fallback="light",
        )
    )
    host.write_model(stand_in("light", priority=3, enabled=False))

    result = host.apply(expect=1)
    assert "start light: fallback for primary" in result.stdout, result
    assert "primary: gave up after 2 restart(s)" in result.output, result
    model = host.model("primary")
    assert (model.status, model.given_up, model.restarts_total) == (Status.error, True, 3)
    assert model.last_error == "engine exited with code 1"
    assert any("cannot start while" in line for line in model.last_log_lines), model
    assert len(host.events("crashed", "primary")) == 2
    assert len(host.events("gave-up", "primary")) == 1
    assert "primary" not in host.engines()
    running(host, "light")
    assert complete(host.port("light")).strip()

    # given up means given up: a new apply starts nothing, the fallback keeps running
    light_pid = host.pid("light")
    again = host.apply(expect=1)
    assert "nothing to do" in again.stdout, again
    assert len(host.events("start", "primary")) == 3
    assert host.model("primary").status == Status.error
    assert host.pid("light") == light_pid


def test_restart_command_clears_a_given_up_error(host: Host) -> None:
    broken = host.root / "dependency-missing"
    broken.touch()
    host.write_model(
        stand_in(
            "flaky",
            env={"FAKE_VLLM_EXIT_IF_EXISTS": str(broken)},
            retry_policy={"max_retries": 0},
        )
    )
    host.apply(expect=1)
    assert host.model("flaky").given_up

    status = host.cli("status")
    assert status.returncode == 0, status
    header = next(line for line in status.stdout.splitlines() if "model" in line)
    for column in ("model", "status", "pid/container", "port", "gpus", "restarts", "error"):
        assert column in header, status
    row = next(line for line in status.stdout.splitlines() if "flaky" in line)
    assert "error" in row and "engine exited with code 1" in row, status

    broken.unlink()  # the operator repairs what was broken
    restarted = host.cli("restart", "flaky", str(host.desired))
    assert restarted.returncode == 0, restarted
    assert "start flaky" in restarted.stdout, restarted
    running(host, "flaky")
    model = host.model("flaky")
    assert not model.given_up and model.restarts_total == 1
    assert host.events("restart-requested", "flaky")

    row = next(line for line in host.cli("status").stdout.splitlines() if "flaky" in line)
    assert "running" in row and str(model.pid) in row and str(model.port) in row


def test_restart_of_an_unknown_model_is_an_error(host: Host) -> None:
    host.write_model(stand_in("known"))
    result = host.cli("restart", "unknown", str(host.desired))
    assert result.returncode == 1, result
    assert "unknown" in result.output and "not in the desired state" in result.output
    assert host.engines() == {}


def test_higher_priority_model_preempts_and_the_lower_one_returns(host: Host) -> None:
    host.write_cluster([{"index": 0, "memory_mb": 8000}])
    host.write_model(stand_in("low", priority=3, resource_requirements={"gpu_memory_mb": 6000}))
    host.apply()
    low_pid = host.pid("low")

    host.write_model(stand_in("high", priority=8, resource_requirements={"gpu_memory_mb": 6000}))
    result = host.apply()
    assert result.actions == [
        "preempt low: preempted by high (priority 8)",
        "start high: not running yet",
    ], result
    assert host.statuses() == {"high": "running", "low": "preempted"}
    assert wait_gone(low_pid)
    assert "low" not in host.engines()
    running(host, "high")
    status = host.cli("status").stdout
    assert "preempted" in next(line for line in status.splitlines() if "low" in line)

    # stays preempted while there is no room ...
    again = host.apply()
    assert "nothing to do" in again.stdout, again
    assert host.statuses() == {"high": "running", "low": "preempted"}

    # ... and comes back by itself when the room returns
    host.remove_model("high")
    back = host.apply()
    assert back.actions == [
        "stop high: removed from desired state",
        "start low: room returned after preemption",
    ], back
    running(host, "low")
    assert set(host.engines()) == {"low"}


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\xff garbage \x13", b"version: 1\nmodels:\n  a: {status: runn"],
    ids=["binary", "torn"],
)
def test_apply_from_a_new_process_adopts_everything(host: Host, garbage: bytes) -> None:
    for model_id in ("a", "b", "c"):
        host.write_model(stand_in(model_id, resource_requirements={"gpu_memory_mb": 2000}))
    host.apply()
    pids = host.engines()
    assert {m: len(p) for m, p in pids.items()} == {"a": 1, "b": 1, "c": 1}

    again = host.apply()
    assert "nothing to do" in again.stdout, again
    assert host.engines() == pids
    assert len(host.events("start")) == 3

    state_file = host.state_dir / "state.yaml"
    state_file.write_bytes(garbage)
    rebuilt = host.apply()
    assert "nothing to do" in rebuilt.stdout, rebuilt
    assert host.engines() == pids, "nothing was started twice or restarted"
    assert len(host.events("start")) == 3
    running(host, "a", "b", "c")
    (aside,) = host.state_dir.glob("state.yaml.corrupt-*")
    assert aside.read_bytes() == garbage, "the corrupt file is kept for a post-mortem"
    assert host.events("state-rebuilt")


def test_crashed_model_without_room_does_not_keep_apply_waiting(host: Host) -> None:
    host.write_model(stand_in("low", priority=3, resource_requirements={"gpu_memory_mb": 6000}))
    host.apply()
    psutil.Process(host.pid("low")).kill()
    host.write_model(stand_in("high", priority=8, resource_requirements={"gpu_memory_mb": 6000}))

    # low is left in error: exit 1, naming it. Had apply waited for a retry that cannot happen
    # (no room while high runs), it would have run into its --timeout ("not settled").
    result = host.apply(timeout=120, expect=1)
    assert "not settled" not in result.stderr, result
    assert "error: low: engine exited" in result.stderr, result
    running(host, "high")
    assert "low" not in host.engines()

    host.remove_model("high")
    back = host.apply()
    assert "start low: restart after error" in back.stdout, back
    running(host, "low")


def test_stop_all_stops_everything_and_the_next_apply_starts_afresh(host: Host) -> None:
    host.write_model(stand_in("a"))
    host.write_model(stand_in("b"))
    host.apply()
    pids = host.engines()

    stopped = host.stop_all()
    assert stopped.returncode == 0, stopped
    assert {line for line in stopped.stdout.splitlines()} == {"stopped a", "stopped b"}
    assert all(wait_gone(pid) for pids_ in pids.values() for pid in pids_)
    assert host.engines() == {}
    assert set(host.statuses().values()) <= {"stopped"}

    again = host.apply()
    assert "start a: not running yet" in again.stdout, again
    running(host, "a", "b")
    assert host.events("crashed") == [], "stopped on purpose is not a crash"


def test_plan_and_dry_run_against_the_live_host_change_nothing(host: Host) -> None:
    host.write_model(stand_in("kept", priority=5))
    host.apply()
    pid = host.pid("kept")
    host.remove_model("kept")
    host.write_model(stand_in("added", priority=5))
    state_file = host.state_dir / "state.yaml"
    before = (state_file.read_bytes(), len(host.events()))

    plan = host.cli("plan", str(host.desired))
    dry = host.cli("apply", str(host.desired), "--dry-run")

    for result in (plan, dry):
        assert result.returncode == 0, result
        assert "stop" in result.stdout and "kept" in result.stdout, result
        assert "start" in result.stdout and "added" in result.stdout, result
    assert host.pid("kept") == pid, "a preview stopped an engine"
    assert "added" not in host.engines(), "a preview started an engine"
    assert (state_file.read_bytes(), len(host.events())) == before, "a preview wrote state"
