"""A daemon killed with SIGKILL leaves no gateway behind: the next daemon needs its port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
from apply_support import wait_for
from daemon_support import free_port

REPO = Path(__file__).resolve().parents[2]

DAEMON = textwrap.dedent(
    """
    import sys, time
    from reconciler.gateway.service import GatewayService
    gateway = GatewayService(sys.argv[1], sys.argv[2])
    gateway.start()
    print(gateway.process.pid, flush=True)
    time.sleep(120)
    """
)


def test_the_gateway_exits_when_its_daemon_is_killed(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"version": 1, "generation": 1, "settings": {}, "models": {}}))
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, listen, str(routes)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    gateway_pid = int(daemon.stdout.readline())
    gateway = psutil.Process(gateway_pid)
    try:
        assert gateway.is_running()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)

        def gone() -> bool:
            return not gateway.is_running() or gateway.status() == psutil.STATUS_ZOMBIE

        assert wait_for(gone, 15, 0.1), "the gateway outlived its daemon"
    finally:
        if gateway.is_running():
            gateway.kill()
