"""Issue 14, case 5b: a spec cannot make the Docker engine bind-mount a host path of its choice.

First release: the Docker engine bind-mounted whatever absolute path a spec named as its model
when it existed on the host: `/run` (which holds docker.sock on most hosts) gave the container
the Docker daemon. Now only paths below the model roots the host declares
(RECONCILER_MODEL_ROOTS) are mounted, read-only, and never the Docker socket or a system path,
even through a symlink or a root that is itself a system path: the start is an engine error that
names the path, and no container is left behind. Against a real Docker daemon.
"""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("path", ["/run", "/var/run/docker.sock", "/etc", "/"])
def test_a_host_path_outside_the_model_roots_is_never_mounted(
    client: docker.DockerClient,
    image: str,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this host")
    monkeypatch.setenv(ROOTS, str(tmp_path / "models"))
    with pytest.raises(EngineError, match=path.rstrip("/") or "/"):
        start(namespace, tmp_path, image, path)
    assert containers(client, namespace) == []


@pytest.mark.parametrize("root", ["/run", "/var/run", "/"])
def test_a_system_path_declared_as_a_root_still_is_not_mounted(
    client: docker.DockerClient,
    image: str,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    root: str,
) -> None:
    socket = "/var/run/docker.sock"
    if not os.path.exists(socket):
        pytest.skip(f"{socket} does not exist on this host")
    monkeypatch.setenv(ROOTS, root)
    with pytest.raises(EngineError):
        start(namespace, tmp_path, image, socket)
    assert containers(client, namespace) == []


def test_a_symlink_below_a_root_to_a_system_path_is_not_mounted(
    client: docker.DockerClient,
    image: str,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "innocent").symlink_to("/run")
    monkeypatch.setenv(ROOTS, str(models))
    with pytest.raises(EngineError):
        start(namespace, tmp_path, image, str(models / "innocent"))
    assert containers(client, namespace) == []


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
