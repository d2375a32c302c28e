"""Issue 14, case 2 (the pass isolates each model): a hostile spec committed beside normal ones
in a live daemon does not stop the others from converging.

First release: one model whose start, probe or estimate raised took the whole pass down ("reconcile
pass failed" about once a second at 80 % CPU) and no other model was started or stopped again.
Here specs that pass validation but cannot run (a model file of garbage, /dev/zero as a model,
an engine flag value the engine rejects, absurd numbers for the estimate) are committed together
with changes to the normal models: the normal ones must still converge (a new one starts, a
changed one restarts), each hostile one ends in `error` with a reason, and the loop keeps
passing. Then a spec that validation refuses is committed: nothing that runs changes and the
problem is shown with file:line; fixing it converges again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apply_support import managed_host, stand_in, wait_for
from daemon_support import Daemon, commit, free_port, init_repo

GPUS = [{"index": 0, "memory_mb": 8000}, {"index": 1, "memory_mb": 8000}]
CPU = {"gpu_count": 0}


def hostile_specs(root: Path) -> list[dict[str, object]]:
    """Valid specs that cannot run, each failing in another place of the pass."""
    garbage = root / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 4096)  # the magic, then nonsense lengths
    once = {"retry_policy": {"max_retries": 1, "backoff_s": 0.2, "max_backoff_s": 0.5}}
    on_cpu = {"resource_requirements": CPU, **once}
    return [
        {"id": "garbage", "framework": "llama_cpp", "model_path": str(garbage), **on_cpu},
        {"id": "zeros", "framework": "llama_cpp", "model_path": "/dev/zero", **on_cpu},
        {  # numbers the estimate chokes on, a list where the engine takes one value
            "id": "absurd",
            "framework": "llama_cpp",
            "model_path": str(garbage),
            "parameters": {"ctx-size": 2**62, "tensor-split": [1e308, 1e308], "flash-attn": [1, 2]},
            "resource_requirements": {"gpu_count": 1},
            **once,
        },
        stand_in("rejected", parameters={"enforce-eager": "yes"}, **once),  # argparse says no
        stand_in("crashing", env={"FAKE_VLLM_EXIT_IF_EXISTS": "/"}, **once),  # exits at once
    ]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with managed_host(tmp_path / "site") as host:
        host.write_cluster(GPUS)
        host.write_model(stand_in("alpha"))
        host.write_model(stand_in("beta"))
        init_repo(host)
        daemon = Daemon(host, free_port(), "t0ken", None, extra_args=("--resync", "1"))
        try:
            daemon.start()
            daemon.wait_statuses({"alpha": "running", "beta": "running"}, timeout_s=60)
            yield daemon
        finally:
            daemon.stop()


def kick(daemon: Daemon) -> None:
    response = httpx.post(daemon.url + "/api/v1/reconcile", headers=daemon.auth(), timeout=10)
    assert response.status_code in (200, 202), response.text


def test_hostile_specs_beside_normal_ones_leave_the_others_converging(daemon: Daemon) -> None:
    host = daemon.host
    alpha_pid = host.pid("alpha")
    beta_pid = host.pid("beta")
    hostile = hostile_specs(host.root)
    for spec in hostile:
        host.write_model(spec)
    host.write_model(stand_in("gamma"))  # a new normal model
    host.write_model(stand_in("beta", parameters={"max-model-len": 2048}))  # a changed one
    head = commit(host, "hostile specs beside normal changes")
    kick(daemon)

    daemon.wait_statuses({"alpha": "running", "beta": "running", "gamma": "running"}, 120)
    assert host.pid("alpha") == alpha_pid  # untouched
    assert wait_for(lambda: host.pid("beta") != beta_pid, timeout_s=30)  # restarted for its change

    def settled() -> dict[str, dict[str, object]]:
        """Each hostile model once it is in `error` or, when its estimate cannot be placed,
        `stopped` as unschedulable; each says why."""
        models = {m["id"]: m for m in daemon.json("/api/v1/models")}
        out = {str(spec["id"]): models.get(str(spec["id"]), {}) for spec in hostile}
        done = all(
            m.get("status") in ("error", "stopped") and not host.engines().get(i)
            for i, m in out.items()
        )
        return out if done else {}

    final = wait_for(settled, timeout_s=120)
    assert final, f"{daemon.statuses()}\n{daemon.log()}"
    for model_id, model in final.items():
        assert model.get("last_error") or model.get("reason"), (model_id, model)
    assert final["crashing"]["status"] == "error" and final["rejected"]["status"] == "error"
    status = daemon.json("/api/v1/status")
    assert status["valid"] is True
    assert status["revision"]["sha"] == head  # the commit with the hostile specs is applied
    passes = daemon.passes()
    assert wait_for(lambda: daemon.passes() > passes + 2, timeout_s=30)  # the loop goes on
    assert daemon.log().count("reconcile pass failed") == 0, daemon.log()


def test_a_refused_spec_changes_nothing_that_runs_and_is_shown(daemon: Daemon) -> None:
    host = daemon.host
    pids = {m: host.pid(m) for m in ("alpha", "beta")}
    (host.desired / "models" / "evil.yaml").write_text(
        'id: evil\nframework: llama_cpp\nmodel_path: /m.gguf\nenv: {"A=B": x, HOST: 0.0.0.0}\n'
    )
    host.write_model(stand_in("gamma"))  # held back with the invalid commit
    commit(host, "an invalid spec")
    kick(daemon)

    def shown() -> list[dict[str, object]]:
        return daemon.json("/api/v1/status").get("problems") or []

    problems = wait_for(shown, timeout_s=30)
    assert problems, daemon.json("/api/v1/status")
    assert {(p["file"].rsplit("/", 1)[-1], p["line"]) for p in problems} == {("evil.yaml", 4)}
    assert {m: host.pid(m) for m in ("alpha", "beta")} == pids
    assert "gamma" not in host.engines()

    (host.desired / "models" / "evil.yaml").unlink()
    commit(host, "remove the invalid spec")
    kick(daemon)
    daemon.wait_statuses({"alpha": "running", "beta": "running", "gamma": "running"}, 60)
    assert {m: host.pid(m) for m in ("alpha", "beta")} == pids
