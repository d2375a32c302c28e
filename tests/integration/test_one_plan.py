"""One plan per pass, and the API serves it.

- A pass makes one plan (make_plan once), on-demand models with traffic included: counted
  through the Reconciler's `make_plan` seam, over real passes with real engine processes.
- `GET /api/v1/plan` is the plan the daemon's loop made in its last pass, traffic through the
  gateway included: a model a request waits for is in it (a plan of the API's own would not
  see the gateway's traffic). Real daemon, real gateway, the vLLM stand-in on a declared GPU.

Timeouts are generous; nothing asserts how fast anything is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apply_support import Host, managed_host, running, stand_in, vllm_wrapper, wait_for
from daemon_support import Daemon, running_daemon
from plan_counting import Counting

from reconciler.api.activity_routes import plan_out
from reconciler.core.activation import Traffic
from reconciler.loop.bulletin import Bulletin, decode
from reconciler.loop.controller import converge
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.state.directory import BULLETIN_FILE

GPU = [{"index": 0, "name": "Simulated", "memory_mb": 2000}]
HALF_AND_MORE = {"resource_requirements": {"gpu_count": 1, "gpu_memory_mb": 1500}}
CONVERGE_S = 120.0
WANTED = "on demand: a request waits for it"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        monkeypatch.setenv("RECONCILER_VLLM", str(vllm_wrapper(tmp_path / "bin")))
        yield host


def test_every_pass_makes_one_plan_with_on_demand_models_asked_for(host: Host) -> None:
    """alpha and beta (on demand) share a GPU that holds one. A request for alpha starts it;
    then beta is asked for while alpha is idle: the same pass stops alpha (least recently used)
    and starts beta. Each pass made one plan (the room search took four before)."""
    host.write_cluster(GPU)
    for model_id in ("alpha", "beta"):
        host.write_model(stand_in(model_id, activation="on_demand", **HALF_AND_MORE))
    made = Counting()
    reconciler = Reconciler(Settings(host.desired, host.state_dir, stop_grace_s=5), make_plan=made)
    asked = {"alpha": Traffic(queued=1)}
    reconciler.planning.traffic = lambda: asked

    passes = converge(reconciler, CONVERGE_S)
    running(host, "alpha")
    assert made.calls == len(passes) > 1

    made.calls = 0
    asked = {"alpha": Traffic(last_request_at=time.time() - 60), "beta": Traffic(queued=1)}
    swap = reconciler.pass_once()
    assert made.calls == 1
    assert [(a.action, a.model) for a in swap.plan.actions] == [
        ("stop", "alpha"),
        ("start", "beta"),
    ]
    assert "least recently used" in swap.plan.actions[0].reason
    assert swap.plan.actions[1].reason == WANTED
    assert swap.plan.models["beta"].demand == "wanted"


def bulletin(daemon: Daemon) -> Bulletin | None:
    try:
        return decode((daemon.host.state_dir / BULLETIN_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def ask(daemon: Daemon, model: str) -> None:
    """A request that waits in the gateway's queue (its answer does not matter here)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with contextlib.suppress(httpx.HTTPError):  # the daemon stopped under it
        httpx.post(f"{daemon.gateway_url}/chat/completions", json=body, timeout=600)


def test_the_api_serves_the_plan_the_loop_made_with_the_gateways_traffic(tmp_path: Path) -> None:
    """lazy cannot start (its engine exits at once while `broken` exists) and retries only
    after minutes, so a request for it waits in the gateway's queue, and every pass plans
    its start because of that request. The API's plan is that plan: the one the loop made,
    carried out (its start event) and published."""
    broken = tmp_path / "broken"
    broken.write_text("a dependency the engine needs is missing")
    lazy = stand_in(
        "lazy",
        activation="on_demand",
        env={"FAKE_VLLM_EXIT_IF_EXISTS": str(broken)},
        retry_policy={"max_retries": 5, "backoff_s": 600, "max_backoff_s": 600},
    )
    with running_daemon(tmp_path / "host", [lazy], gpus=GPU, extra_args=("--resync", "1")) as d:
        d.wait_ready()
        threading.Thread(target=ask, args=(d, "lazy"), daemon=True).start()

        def crashed_once() -> bool:
            return d.statuses().get("lazy") == "error" and bool(d.host.events("start", "lazy"))

        assert wait_for(crashed_once, 60, 0.2), d.log()
        (start,) = d.host.events("start", "lazy")
        assert start["message"] == WANTED  # the loop started it because of the request

        def same_pass() -> tuple[Bulletin, dict[str, Any]] | None:
            """The API's plan, and the bulletin of the pass it was read in."""
            before = bulletin(d)
            served = d.json("/api/v1/plan")
            after = bulletin(d)
            if before is None or after is None or before.passes != after.passes:
                return None  # a pass ended in between: look again
            return after, served

        found = wait_for(same_pass, 30, 0.1)
        assert found, d.log()
        loop, served = found
        assert {"action": "start", "model": "lazy", "reason": WANTED} in [
            {k: a[k] for k in ("action", "model", "reason")} for a in served["actions"]
        ], served
        assert loop.plan is not None
        assert served == plan_out(loop.plan).model_dump(mode="json")
        assert loop.plan.models["lazy"].demand == "wanted"
