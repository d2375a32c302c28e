"""The Docker engine imports the Docker SDK only where a Docker daemon may answer
(engines/docker.py): a host without one pays nothing for it on every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.engines import docker as docker_descriptor

PROBE = """
import json, sys
from pathlib import Path
from reconciler.engines import docker
from reconciler.engines.registry import engines
docker.DEFAULT_SOCKET = Path(sys.argv[2])  # this host's own socket is not the one under test
engine = engines(sys.argv[1])["docker"]
found = engine.observe()
print(json.dumps({"found": len(found), "sdk": "docker" in sys.modules,
                  "reason": engine.unavailable_reason if "docker" in sys.modules else None}))
"""


def observe_in_a_fresh_interpreter(tmp_path: Path, docker_host: str | None) -> dict:
    """observe() in a new interpreter (its sys.modules tells what was imported), with no
    daemon socket at the default place."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), str(tmp_path / "docker.sock")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_without_a_daemon_observe_finds_nothing_and_imports_no_sdk(tmp_path: Path) -> None:
    seen = observe_in_a_fresh_interpreter(tmp_path, None)
    assert seen == {"found": 0, "sdk": False, "reason": None}


def test_a_named_daemon_is_contacted_and_its_absence_explained(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-docker.sock"
    seen = observe_in_a_fresh_interpreter(tmp_path, f"unix://{missing}")
    assert seen["found"] == 0 and seen["sdk"] is True
    assert str(missing) in seen["reason"], seen


def test_the_default_socket_is_what_decides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(docker_descriptor, "DEFAULT_SOCKET", tmp_path / "docker.sock")
    assert not docker_descriptor.daemon_may_exist()
    (tmp_path / "docker.sock").touch()
    assert docker_descriptor.daemon_may_exist()
