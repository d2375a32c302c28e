"""A gateway that is alive but no longer answers is replaced (issue 18: a gateway spinning on a
rogue engine's reply outlived its daemon and held its port, so the next one could not start).

The daemon calls GatewayService.ensure_running after every pass; here it is called directly on
a real gateway process that the test freezes with SIGSTOP.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
from daemon_support import free_port
from gateway_support import Upstream, model

from reconciler.gateway.routes import GatewaySettings, Routes, write_routes
from reconciler.gateway.service import GatewayService


def test_a_gateway_that_stopped_answering_is_killed_and_replaced(tmp_path: Path) -> None:
    up = Upstream.fast(name="m")
    routes = tmp_path / "routes.json"
    write_routes(routes, Routes({"m": model("m", up.url)}, GatewaySettings(), 1))
    service = GatewayService(
        f"127.0.0.1:{free_port()}",
        routes,
        log_path=tmp_path / "gateway.log",
        unanswered_checks=3,
        unanswered_for_s=1.0,
        check_timeout_s=0.5,
    )
    service.start()
    assert service.process is not None
    hung = service.process
    try:
        assert not service.ensure_running()  # it answers: left alone
        os.kill(hung.pid, signal.SIGSTOP)
        checks, replaced = 0, False
        deadline = time.monotonic() + 60
        while not replaced and time.monotonic() < deadline:
            replaced = service.ensure_running()
            checks += 1
        assert replaced, "the frozen gateway was not replaced within 60 s"
        assert checks >= 3  # one silence is not enough: three checks in a row, over 1 s
        assert hung.poll() == -signal.SIGKILL  # killed by pid, though it could not handle SIGTERM
        assert service.process is not hung and service.alive()
        assert service.inflight()["generation"] == 1  # the new one read the table on disk
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(f"{service.url}/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200 and answer.headers["X-Reconciler-Model"] == "m"
        assert not service.ensure_running()
    finally:
        if psutil.pid_exists(hung.pid) and hung.poll() is None:
            os.kill(hung.pid, signal.SIGCONT)
            hung.kill()
            hung.wait()
        service.stop()
        up.kill()
