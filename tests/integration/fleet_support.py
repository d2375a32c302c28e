"""A fleet on this machine: real `reconciler run` processes as the hosts of one repository.

`running_fleet()` writes one git repository whose desired-state/ declares each host
(hosts/<name>.yaml: a simulated GPU, a port range that was free when the test began, the URL of
that host's gateway) and the fleet's settings (cluster.yaml: the fleet key and the client keys),
commits the given model specs, and starts one daemon per host (`--host-name <name>`, its own
state directory, API port and gateway port) with the stand-in vLLM engine of apply_support.py.
Each host's operator sets its own client key (RECONCILER_SECRET_CLIENTS differs per host) and
the same fleet key, bound to the hosts' gateways (RECONCILER_SECRET_FLEET_HOSTS).

Afterwards every daemon is stopped (SIGTERM) and each host's engines with `stop-all`, and no
engine may survive (managed_host's check). Used by tests/integration/test_fleet.py and
tests/bench/fleet_forward.py.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from apply_support import Host, managed_host
from daemon_support import Daemon, free_port, git

FLEET_KEY_ENV = "RECONCILER_SECRET_FLEET"
FLEET_KEY = "sk-fleet-0123456789abcdefghijklmnopqrstu"
CLIENT_KEY_ENV = "RECONCILER_SECRET_CLIENTS"
GPU = [{"index": 0, "name": "Simulated L4", "memory_mb": 8000}]
FLEET_CLUSTER = {
    "gateway": {
        "fleet_key_env": FLEET_KEY_ENV,
        "api_keys": [{"name": "clients", "key_env": CLIENT_KEY_ENV}],
    }
}


def client_key(host: str) -> str:
    """What clients of `host`'s gateway send: another key on every host (32+ characters)."""
    return f"sk-client-of-{host}-".ljust(40, "x")


@dataclass
class Member(Host):
    """One host of the fleet: its own root (state directory, engine wrapper, daemon.log) and the
    fleet's one repository as its desired state."""

    repo: Path = field(default_factory=Path)

    @property
    def desired(self) -> Path:
        return self.repo / "desired-state"


@dataclass
class FleetHost:
    name: str
    daemon: Daemon

    @property
    def host(self) -> Host:
        return self.daemon.host

    @property
    def gateway(self) -> str:
        """The gateway's base URL, as hosts/<name>.yaml names it (no /v1)."""
        return self.daemon.gateway_url.removesuffix("/v1")

    @property
    def key(self) -> str:
        return client_key(self.name)

    def post(
        self, model: str, content: str = "hello", *, key: str | None = None, **headers: str
    ) -> httpx.Response:
        """A chat request to this host's gateway, with this host's client key."""
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        auth = {"Authorization": f"Bearer {key or self.key}"}
        url = f"{self.gateway}/v1/chat/completions"
        return httpx.post(url, json={**body, "max_tokens": 4}, headers=auth | headers, timeout=60)

    def models(self) -> dict[str, dict[str, Any]]:
        """GET /v1/models of this host's gateway, by id."""
        auth = {"Authorization": f"Bearer {self.key}"}
        listed = httpx.get(f"{self.gateway}/v1/models", headers=auth, timeout=10)
        assert listed.status_code == 200, listed.text
        return {m["id"]: m for m in listed.json()["data"]}

    def metrics(self) -> str:
        return httpx.get(f"{self.gateway}/metrics", timeout=10).text


@dataclass
class Fleet:
    repo: Path
    hosts: dict[str, FleetHost]

    def __getitem__(self, name: str) -> FleetHost:
        return self.hosts[name]


def host_file(gateway: str, port_range: tuple[int, int]) -> dict[str, Any]:
    return {"gpus": GPU, "port_range": list(port_range), "gateway": gateway}


@contextlib.contextmanager
def running_fleet(
    root: Path,
    names: Sequence[str],
    models: list[dict[str, Any]],
    *,
    resync_s: float = 3600,
    env: Mapping[str, str] | None = None,
) -> Iterator[Fleet]:
    """Hosts `names` of one repository holding `models`, each with its daemon; all stopped after.

    `resync_s` 3600 keeps the loops quiet: passes happen on triggers (a change, an engine's exit).
    `env`: more of every host's environment (e.g. another RECONCILER_VLLM).
    """
    repo = root / "repo"
    desired = repo / "desired-state"
    with contextlib.ExitStack() as stack:
        fleet = Fleet(repo, {})
        for name in names:
            # managed_host gives the host a free port range and, at the end, its stop-all and
            # the check that no engine survives (its own desired-state/ beside it goes unused)
            base = stack.enter_context(managed_host(root / name))
            member = Member(
                base.root,
                base.port_range,
                env={
                    "RECONCILER_HOST_NAME": name,  # for the CLI commands a test runs as this host
                    FLEET_KEY_ENV: FLEET_KEY,
                    f"{FLEET_KEY_ENV}_HOSTS": "127.0.0.1",
                    CLIENT_KEY_ENV: client_key(name),
                    **(env or {}),
                },
                repo=repo,
            )
            extra = ("--resync", f"{resync_s:g}", "--host-name", name)
            daemon = Daemon(member, free_port(), None, None, extra_args=extra)
            fleet.hosts[name] = FleetHost(name, daemon)
        (desired / "hosts").mkdir(parents=True)
        (desired / "models").mkdir()
        write_yaml(desired / "cluster.yaml", FLEET_CLUSTER)
        for name, member in fleet.hosts.items():
            write_yaml(
                desired / "hosts" / f"{name}.yaml",
                host_file(member.gateway, member.host.port_range),
            )
        for spec in models:
            write_yaml(desired / "models" / f"{spec['id']}.yaml", spec)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "a fleet of " + ", ".join(names))
        for member in fleet.hosts.values():
            stack.callback(member.daemon.stop)
            member.daemon.start()
        yield fleet


def write_yaml(path: Path, document: dict[str, Any]) -> None:
    """JSON is YAML."""
    path.write_text(json.dumps(document, indent=2) + "\n")
