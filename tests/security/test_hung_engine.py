"""Nothing one engine does stalls the others: a hung health probe, beside a change to another model.

A real `reconciler run` follows a git working tree; the engines are fake_rogue.py stand-ins, one
of which stops answering its health probe (it accepts the connection and says nothing) while its
spec grants a probe an hour. Another model's spec then changes in a commit. Before probes ran
beside the loop, the loop waited on the hung probe (as long as the engine kept silent, up to the
spec's `timeout_s`) before it looked at the commit at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
from apply_support import FAKE_ROGUE, Host, managed_host, stand_in, vllm_wrapper, wait_for
from gitops_support import daemon_running, events_since, local_site, spec_hash, wait_running

from reconciler.engines.prober import Prober, probe_client

APPLIED_WITHIN_S = 20.0
"""generous for a busy machine (a pass takes well under a second); the hung probe's engine keeps
silent for 60 s (fake_rogue's limit), and its spec would let the probe wait an hour"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path / "site") as host:
        host.write_cluster([{"index": 0, "memory_mb": 8000}, {"index": 1, "memory_mb": 8000}])
        host.env["RECONCILER_VLLM"] = str(vllm_wrapper(host.root / "rogue-bin", FAKE_ROGUE))
        yield host


def probes_waiting(pid: int, port: int) -> int:
    """Connections to the engine's port that it accepted and has not answered (the daemon's
    probes: nothing else talks to it here)."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
    )


def test_a_hung_probe_does_not_hold_back_another_models_change(host: Host) -> None:
    hang = host.root / "hang-pid"
    hour = {"interval_s": 1, "timeout_s": 3600, "failure_threshold": 1}
    specs = {
        "hung": stand_in("hung", env={"FAKE_ROGUE_HANG_FILE": str(hang)}, health_check=hour),
        "other": stand_in("other"),
    }
    for spec in specs.values():
        host.write_model(spec)
    site = local_site(host)
    hashes = {m: spec_hash(s) for m, s in specs.items()}
    with daemon_running(host, str(host.desired), "--no-api", "--resync", "3600") as run:
        before = wait_running(host, hashes, run).pids()
        hang.write_text(str(before["hung"]))
        port = host.port("hung")
        assert wait_for(lambda: probes_waiting(before["hung"], port), 30, 0.1), (
            f"no probe of the hung engine is waiting\n{run.log()}"
        )

        seen = len(host.events())
        specs["other"] = stand_in("other", parameters={"max-model-len": 2048})
        host.write_model(specs["other"])
        hashes["other"] = spec_hash(specs["other"])
        began = time.monotonic()
        site.commit("other: longer context")
        after = wait_running(host, hashes, run, timeout_s=APPLIED_WITHIN_S)
        took = time.monotonic() - began
        print(f"the change was applied {took:.1f} s after its commit, beside a hung probe")

        assert after.pids()["other"] != before["other"], "other's engine was not replaced"
        assert after.pids()["hung"] == before["hung"], "the hung engine was restarted"
        assert probes_waiting(before["hung"], port), "the hung probe ended: the test proves nothing"
        assert events_since(host, seen, "crashed") == []
        hang.write_text("")  # answers again: stop-all and the daemon's exit see a plain engine


def test_probes_run_beside_each_other_and_a_late_one_is_reported() -> None:
    """The Prober on real sockets: a probe that hangs holds up neither the caller nor the probe
    of another engine; its end, after the caller stopped waiting, is reported."""
    release = threading.Event()

    class Engine(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/hang":
                release.wait(60)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    late = threading.Event()
    prober = Prober(workers=4)
    prober.on_late = late.set
    try:
        with probe_client() as client:
            assert prober.start("hung", 1, f"{base}/hang", 3600, client)
            assert prober.start("fine", 2, f"{base}/health", 3600, client)
            assert not prober.start("hung", 1, f"{base}/hang", 3600, client), "one at a time"
            began = time.monotonic()
            prober.wait(["hung", "fine"], 1.0)
            assert time.monotonic() - began < 30  # not 3600: the wait is the caller's bound
            fine = prober.take("fine", 2)
            assert fine is not None and (fine.ok, fine.status_code) == (True, 200)
            assert prober.take("hung", 1) is None and prober.running("hung")
            assert not late.is_set()
            release.set()
            assert late.wait(30), "the late probe's end was not reported"
            assert prober.take("hung", 99) is None, "a result about another engine is dropped"
    finally:
        server.shutdown()
