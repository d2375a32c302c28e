"""`reconciler apply` with framework docker against the real Docker daemon.

The engine is the busybox test image of docker_support (no registry needed): it serves /health
on $PORT and reports its arguments at /args. Skipped, with the reason, when no daemon answers
(CI starts one with .ci/dockerd.sh start).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from apply_support import Host, managed_host, running, stand_in
from docker.errors import NotFound
from docker_support import http_get, port_refuses, remove_containers

from reconciler.core.instance import Status
from reconciler.engines.docker_container import (
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_NAMESPACE,
    container_name,
)


@pytest.fixture
def host(tmp_path: Path, client: docker.DockerClient) -> Iterator[Host]:
    with managed_host(tmp_path) as host:  # then stop-all; no engine process survives
        yield host
    left = client.containers.list(
        all=True, filters={"label": f"{LABEL_NAMESPACE}={host.namespace}"}
    )
    remove_containers(client, f"{LABEL_NAMESPACE}={host.namespace}")
    assert not left, f"stop-all left containers behind: {[c.name for c in left]}"


def container_spec(model_id: str, image: str, **fields: Any) -> dict[str, Any]:
    spec = stand_in(model_id, **fields)
    spec.update(framework="docker", image=image, model_path="/models/in-the-image")
    spec["parameters"] = fields.get("parameters", {})
    return spec


def container(client: docker.DockerClient, container_id: str | None):
    assert container_id, "no container id in the state file"
    try:
        return client.containers.get(container_id)
    except NotFound:
        return None


def test_docker_model_through_apply(host: Host, client: docker.DockerClient, image: str) -> None:
    host.write_model(container_spec("web", image))
    first = host.apply()
    assert "start web: not running yet" in first.stdout, first
    web = host.model("web")
    assert (web.status, web.gpus, web.pid) == (Status.running, (0,), None)
    first_id = web.container_id
    box = container(client, first_id)
    assert box is not None and box.status == "running"
    assert box.labels[LABEL_MANAGED] == "true" and box.labels[LABEL_MODEL] == "web"
    assert host.events("ready", "web"), "running only once its health check answered"
    assert http_get(web.port, "/health").text.strip() == "ok"
    assert first_id and first_id[:12] in host.cli("status").stdout

    # the same spec: the same container
    again = host.apply()
    assert "nothing to do" in again.stdout, again
    assert host.model("web").container_id == first_id

    # a changed spec: a new container with the new arguments, the old one removed
    host.write_model(container_spec("web", image, parameters={"greeting": "hello"}))
    changed = host.apply()
    assert "restart web: spec changed" in changed.stdout, changed
    second_id = host.model("web").container_id
    assert second_id != first_id
    assert container(client, first_id) is None
    assert http_get(host.port("web"), "/args").text.split() == ["--greeting", "hello"]

    # killed from outside: noticed and restarted by the next apply
    client.containers.get(second_id).kill()
    revived = host.apply()
    assert "start web: restart after error: engine exited with code 137" in revived.stdout
    web = host.model("web")
    assert web.status == Status.running and web.restarts_total == 1
    assert web.container_id not in (first_id, second_id)
    assert container(client, second_id) is None, "the dead container is removed, not piled up"
    assert host.events("crashed", "web")
    assert http_get(web.port, "/health").status_code == 200

    # a removed spec: the container is removed
    port = web.port
    host.remove_model("web")
    removed = host.apply()
    assert "stop web: removed from desired state" in removed.stdout, removed
    assert container(client, web.container_id) is None
    assert port_refuses(port)


def test_containers_without_our_label_are_never_touched(
    host: Host, client: docker.DockerClient, image: str
) -> None:
    marker = f"reconciler-test.foreign={uuid.uuid4().hex}"
    key, value = marker.split("=")

    def foreign(name: str, **labels: str):
        return client.containers.run(
            image,
            name=name,
            labels={key: value, **labels},
            environment={"PORT": "8080"},
            detach=True,
        )

    try:
        # one claims our namespace and a model id, but not reconciler.managed; one has the very
        # name our container for model `clash` would get
        lookalike = foreign(
            f"lookalike-{value[:8]}", **{LABEL_NAMESPACE: host.namespace, LABEL_MODEL: "web"}
        )
        squatter = foreign(container_name(host.namespace, "clash"))
        host.write_model(container_spec("web", image))
        host.write_model(container_spec("clash", image))
        host.write_model(stand_in("proc"))

        result = host.apply(expect=1)
        assert "is not managed by reconciler" in result.output, result
        clash = host.model("clash")
        assert clash.status == Status.error and clash.given_up
        running(host, "proc")
        assert host.model("web").status == Status.running
        assert host.model("web").container_id != lookalike.id

        host.remove_model("web")
        host.apply(expect=1)
        assert host.stop_all().returncode == 0
        for box in (lookalike, squatter):
            box.reload()
            assert box.status == "running", f"{box.name} was touched"
    finally:
        remove_containers(client, marker)
