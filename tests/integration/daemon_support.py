"""A real `reconciler run` for tests of the HTTP API and the dashboard.

`running_daemon()` starts the daemon as a user does (`python -m reconciler run DIR`) in a
subprocess, on a free loopback port, against a `Host` of apply_support.py whose root is a git
repository: desired-state/ is committed there, state/ and bin/ are ignored. Engines are the cheap
stand-in vLLM (tests/fakes/fake_vllm.py through RECONCILER_VLLM). The daemon is stopped with
SIGTERM (the way systemd stops it), and `managed_host` then stops every engine and checks that
none survives.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from apply_support import Host, free_port_range, managed_host, wait_for

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Ada Operator",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Operator",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(root: Path, *args: str) -> str:
    """Run git in the host's repository, with a fixed identity (no global config needed)."""
    env = {**os.environ, **GIT_IDENTITY, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(
        ["git", "-C", str(root), *args], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def init_repo(host: Host, message: str = "initial desired state") -> str:
    """Make the host's root a git repository holding desired-state/; returns HEAD's sha."""
    (host.root / ".gitignore").write_text("state/\nbin/\ndaemon.log\n")
    git(host.root, "init", "-q", "-b", "main")
    return commit(host, message)


def commit(host: Host, message: str) -> str:
    git(host.root, "add", "-A")
    git(host.root, "commit", "-q", "--allow-empty", "-m", message)
    return git(host.root, "rev-parse", "HEAD")


def sign(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 that GitHub (after `sha256=`) and Gitea send."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push_body(branch: str = "main", after: str = "0" * 40) -> bytes:
    return json.dumps(
        {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": after, "commits": []}
    ).encode()


@dataclass
class Daemon:
    host: Host
    port: int
    token: str | None
    secret: str | None
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    gateway_port: int = field(default_factory=lambda: free_port())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        """The OpenAI base URL of the daemon's gateway."""
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    @property
    def log_path(self) -> Path:
        return self.host.root / "daemon.log"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 10.0), **kwargs)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    # lifecycle

    def start(self) -> None:
        env = {**self.host.cli_env(), **self.env}
        env.pop("RECONCILER_API_TOKEN", None)
        env.pop("RECONCILER_WEBHOOK_SECRET", None)
        if self.token:
            env["RECONCILER_API_TOKEN"] = self.token
        if self.secret:
            env["RECONCILER_WEBHOOK_SECRET"] = self.secret
        argv = [
            *self.host.command("run", str(self.host.desired)),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--gateway-listen",
            f"127.0.0.1:{self.gateway_port}",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, env=env, cwd=self.host.root, stdout=log, stderr=subprocess.STDOUT
            )
        if not wait_for(self._healthy, STARTUP_TIMEOUT_S, 0.1):
            self.stop()
            raise AssertionError(f"the daemon did not answer /healthz\n{self.log()}")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the daemon exited ({self.process.returncode})\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        """SIGTERM, as systemd does; SIGKILL only if it hangs (the test then fails)."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise AssertionError(f"the daemon ignored SIGTERM\n{self.log()}") from None

    # asking it

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10.0, **kwargs)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def passes(self) -> int:
        return int(self.get("/readyz").json()["passes"])  # 503 (with 0) before the first pass

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        ok = wait_for(lambda: self.get("/readyz").status_code == 200, timeout_s, 0.1)
        assert ok, f"not ready within {timeout_s}s\n{self.log()}"

    def statuses(self) -> dict[str, str]:
        """Every model's status; none before the first pass (the API answers 503 until then)."""
        response = self.get("/api/v1/models")
        if response.status_code == 503:
            return {}
        assert response.status_code == 200, f"GET /api/v1/models: {response.status_code}"
        return {m["id"]: m["status"] for m in response.json()}

    def wait_statuses(self, expected: dict[str, str], timeout_s: float = 30.0) -> None:
        def reached() -> bool:
            now = self.statuses()
            return all(now.get(k) == v for k, v in expected.items())

        assert wait_for(reached, timeout_s, 0.2), (
            f"wanted {expected}, have {self.statuses()}\n{self.log()}"
        )


@contextlib.contextmanager
def running_daemon(
    root: Path,
    models: list[dict[str, Any]],
    *,
    token: str | None = None,
    secret: str | None = None,
    gpus: list[dict[str, Any]] | None = None,
    ports: int | None = None,
    extra_args: tuple[str, ...] = ("--resync", "3600"),
) -> Iterator[Daemon]:
    """A host with `models` committed in git and a daemon following it; everything stopped after.

    `--resync 3600` keeps the loop quiet: passes happen on triggers only, so that a test can
    tell whether something it did caused one. `ports`: size of the engines' port range.
    """
    with managed_host(root) as host:
        if ports is not None:  # more engines than the default range holds
            host.port_range = free_port_range(ports)
        if gpus is not None or ports is not None:
            host.write_cluster(gpus)
        for spec in models:
            host.write_model(spec)
        init_repo(host)
        daemon = Daemon(host, free_port(), token, secret, extra_args=extra_args)
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.stop()
