"""The API serves from a process of its own beside the loop (reconciler/api/server.py): it is
restarted when it dies, it leaves with its daemon, and what it shows comes from the daemon of
this run only."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from apply_support import stand_in, wait_for
from daemon_support import Daemon, running_daemon

from reconciler.state.directory import BULLETIN_FILE

TOKEN = "api-process-token"
QUIET = {"health_check": {"interval_s": 3600}}


def api_process(daemon: Daemon) -> psutil.Process:
    assert daemon.process is not None
    found = [
        p for p in psutil.Process(daemon.process.pid).children() if "reconciler.api" in p.cmdline()
    ]
    assert len(found) == 1, [p.cmdline() for p in found]
    return found[0]


@pytest.fixture
def daemon(tmp_path) -> Iterator[Daemon]:
    with running_daemon(tmp_path, [stand_in("alpha", **QUIET)], token=TOKEN) as d:
        d.wait_ready()
        d.wait_statuses({"alpha": "running"})
        yield d


def test_the_api_is_a_process_of_its_own_that_comes_back_when_killed(daemon: Daemon) -> None:
    api = api_process(daemon)
    assert api.pid != daemon.process.pid
    os.kill(api.pid, signal.SIGKILL)
    back = wait_for(lambda: _answers(daemon) and daemon.get("/readyz").status_code == 200, 30, 0.1)
    assert back, daemon.log()
    assert api_process(daemon).pid != api.pid
    # a new API process still reaches the loop: an action runs a pass, metrics are the daemon's
    before = daemon.passes()
    r = httpx.post(f"{daemon.url}/api/v1/reconcile", headers=daemon.auth(), timeout=10)
    assert r.status_code == 202, r.text
    assert wait_for(lambda: daemon.passes() > before, 20, 0.1)
    assert "reconciler_reconcile_duration_seconds_count" in daemon.get("/metrics").text
    assert daemon.statuses() == {"alpha": "running"}


def test_the_api_leaves_with_its_daemon(daemon: Daemon) -> None:
    api = api_process(daemon)
    os.kill(daemon.process.pid, signal.SIGKILL)  # no chance to stop its services
    daemon.process.wait(10)
    assert wait_for(lambda: not api.is_running() or api.status() == "zombie", 10, 0.1)
    assert not _answers(daemon)


def test_a_bulletin_of_an_earlier_run_is_not_this_run(daemon: Daemon) -> None:
    """What the loop reports (passes, readiness) is the bulletin of this run's daemon: one from
    an earlier run, with more passes, is not read as this one's."""
    path = daemon.host.state_dir / BULLETIN_FILE
    mine = json.loads(path.read_text())
    stale = {**mine, "run_id": "an-earlier-run", "passes": 10_000}
    path.write_text(json.dumps(stale))
    time.sleep(0.3)  # longer than the API's state cache
    assert daemon.get("/readyz").json()["passes"] < 10_000
    r = httpx.post(f"{daemon.url}/api/v1/reconcile", headers=daemon.auth(), timeout=10)
    assert r.status_code == 202, r.text
    assert wait_for(lambda: daemon.get("/readyz").json()["passes"] == mine["passes"] + 1, 20, 0.1)


def _answers(daemon: Daemon) -> bool:
    try:
        return httpx.get(f"{daemon.url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
