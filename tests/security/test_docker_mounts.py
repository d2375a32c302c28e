"""Issue 14, case 5b: a spec cannot make the Docker engine bind-mount a host path of its choice.

First release: the Docker engine bind-mounted whatever absolute path a spec named as its model
when it existed on the host: `/run` (which holds docker.sock on most hosts) gave the container
the Docker daemon. Now only paths below the model roots the host declares
(RECONCILER_MODEL_ROOTS) are mounted, read-only, and never the Docker socket or a system path,
even through a symlink or a root that is itself a system path: the start is an engine error that
names the path, and no container is left behind. The refusals come before the Docker daemon
is contacted (DOCKER_HOST points at a tripwire socket that counts connections), so they are
checked on every machine; a model below a root is mounted read-only, against a real daemon.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from components import missing, require_file
from docker.errors import DockerException
from docker_support import BUSYBOX, ensure_test_image, free_port, remove_containers
from requests.exceptions import RequestException

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EngineError, EnginePlacement
from reconciler.engines.registry import engines

ROOTS = "RECONCILER_MODEL_ROOTS"
LABEL_NAMESPACE = "reconciler.namespace"


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, RequestException):
        missing("a Docker daemon", "bash .ci/dockerd.sh start")
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(client: docker.DockerClient) -> str:
    require_file(BUSYBOX, "apt-get install -y busybox-static (the test image is built from it)")
    return ensure_test_image(client)


@pytest.fixture
def namespace(client: docker.DockerClient) -> Iterator[str]:
    namespace = f"sec-{uuid.uuid4().hex[:8]}"
    yield namespace
    remove_containers(client, f"{LABEL_NAMESPACE}={namespace}")


def start(namespace: str, tmp_path: Path, image: str, model_path: str) -> object:
    """Start a Docker model named m with `model_path`, in its own namespace."""
    engine = engines(tmp_path / "state", namespace)["docker"]
    spec = ModelSpec(
        id="m",
        framework="docker",
        image=image,
        model_path=model_path,
        resource_requirements={"gpu_count": 0},
    )
    return engine.start(spec, EnginePlacement(gpus=(), port=free_port()))


def containers(client: docker.DockerClient, namespace: str) -> list[object]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_NAMESPACE}={namespace}"})


class Tripwire:
    """A Unix socket where DOCKER_HOST points that only counts who connects: a start that is
    refused for its mount must be refused before it asks any Docker daemon anything, so the
    refusals are checked the same way on every machine, with a daemon or without one."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tripwire-")  # short: a socket path has a limit
        self.path = os.path.join(self.dir, "docker.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tripwire]:
    wire = Tripwire()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{wire.path}")
    yield wire
    wire.close()


def refused(tmp_path: Path, model_path: str, match: str | None = None) -> None:
    """Starting a Docker model with `model_path` is an engine error (naming `match`), raised
    before the Docker daemon (the tripwire) is contacted."""
    with pytest.raises(EngineError, match=None if match is None else re.escape(match)):
        start(f"sec-{uuid.uuid4().hex[:8]}", tmp_path, "busybox-httpd:test", model_path)


def a_socket(path: Path) -> str:
    """A listening Unix socket at `path` (a stand-in for docker.sock, on every machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.close()  # the socket file stays: what the mount check looks at
    return str(path)


@pytest.mark.parametrize("path", ["/etc", "/proc", "/", "a socket"])
def test_a_host_path_outside_the_model_roots_is_never_mounted(
    tripwire: Tripwire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    if path == "a socket":
        path = a_socket(Path(tripwire.dir) / "engine.sock")
    monkeypatch.setenv(ROOTS, str(tmp_path / "models"))
    refused(tmp_path, path, path.rstrip("/") or "/")
    assert tripwire.connections == 0


@pytest.mark.parametrize(
    ("root", "path"), [("/etc", "/etc/passwd"), ("/proc", "/proc/self/status"), ("/", None)]
)
def test_a_system_path_declared_as_a_root_still_is_not_mounted(
    tripwire: Tripwire,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    root: str,
    path: str | None,
) -> None:
    if path is None:  # below "/", in a directory nothing else forbids
        (tmp_path / "m.gguf").write_text("weights\n")
        path = str(tmp_path / "m.gguf")
    monkeypatch.setenv(ROOTS, root)
    refused(tmp_path, path)
    assert tripwire.connections == 0


def test_a_socket_below_a_declared_root_is_not_mounted(
    tripwire: Tripwire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_path = a_socket(Path(tripwire.dir) / "models" / "docker.sock")
    monkeypatch.setenv(ROOTS, str(Path(socket_path).parent))
    refused(tmp_path, socket_path, "a socket")
    assert tripwire.connections == 0


def test_a_symlink_below_a_root_to_a_system_path_is_not_mounted(
    tripwire: Tripwire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "innocent").symlink_to("/etc")
    monkeypatch.setenv(ROOTS, str(models))
    refused(tmp_path, str(models / "innocent"), "/etc")
    assert tripwire.connections == 0


def test_a_model_below_a_declared_root_is_mounted_read_only(
    client: docker.DockerClient,
    image: str,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.gguf").write_text("weights\n")
    monkeypatch.setenv(ROOTS, str(models))
    start(namespace, tmp_path, image, str(models / "m.gguf"))
    [container] = containers(client, namespace)
    binds = [m for m in container.attrs["Mounts"] if m["Type"] == "bind"]
    assert [(m["Source"], m["RW"]) for m in binds] == [(str(models / "m.gguf"), False)]
