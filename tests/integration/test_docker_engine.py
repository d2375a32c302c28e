"""The Docker engine against a real Docker daemon (.ci/dockerd.sh start provides one in CI).

Tests that need the daemon are skipped, with the reason, when none answers; the tests of an
unreachable daemon and of the pure parts run everywhere. Every test works in a namespace of its
own and removes its containers; the test image stays cached between sessions.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import DockerException, NotFound
from docker.models.containers import Container
from docker_support import (
    free_port,
    http_get,
    port_refuses,
    remove_containers,
    wait_until,
)

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EngineError, EnginePlacement, Handle
from reconciler.engines.docker_container import (
    ENV_MODEL_ROOTS,
    LABEL_GPU_REQUEST,
    LABEL_HASH,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_NAMESPACE,
    container_name,
    has_nvidia_runtime,
    model_mounts,
)
from reconciler.engines.docker_runtime import DockerEngine, gpu_device_requests

FOREIGN_LABEL = "reconciler-test.foreign"


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def namespace(client: docker.DockerClient) -> Iterator[str]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    yield namespace
    remove_containers(client, f"{LABEL_NAMESPACE}={namespace}")


@pytest.fixture
def engine(namespace: str) -> DockerEngine:
    return DockerEngine(namespace)


@pytest.fixture
def run_foreign(client: docker.DockerClient, image: str) -> Iterator[Callable[..., Container]]:
    """Start containers the way someone else would (not through the engine); removed after."""
    marker = uuid.uuid4().hex

    def run(name: str, labels: dict[str, str] | None = None) -> Container:
        return client.containers.run(
            image,
            name=name,
            labels={FOREIGN_LABEL: marker, **(labels or {})},
            environment={"PORT": "8080"},
            detach=True,
        )

    yield run
    remove_containers(client, f"{FOREIGN_LABEL}={marker}")


def docker_spec(model_id: str, image: str, **fields: object) -> ModelSpec:
    defaults: dict[str, object] = {
        "model_path": "/models/not-on-this-host",
        "resource_requirements": {"gpu_count": 0},
    }
    return ModelSpec(id=model_id, framework="docker", image=image, **{**defaults, **fields})


def cpu_placement() -> EnginePlacement:
    return EnginePlacement(gpus=(), port=free_port())


def exists(client: docker.DockerClient, container_id: str) -> bool:
    try:
        client.containers.get(container_id)
    except NotFound:
        return False
    return True


# -- a model's life -------------------------------------------------------------------------------


def test_started_model_answers_http_on_its_published_port(
    engine: DockerEngine, image: str, namespace: str, client: docker.DockerClient
) -> None:
    placement = cpu_placement()
    handle = engine.start(docker_spec("web", image), placement)

    response = http_get(placement.port, "/health")
    assert response.status_code == 200
    assert response.text.strip() == "ok"
    assert handle.alive and handle.exit_code is None
    assert (handle.model_id, handle.framework, handle.port) == ("web", "docker", placement.port)
    container = client.containers.get(handle.container_id)
    assert container.name == container_name(namespace, "web")
    # Published on 127.0.0.1 only, never on all interfaces.
    bindings = container.attrs["HostConfig"]["PortBindings"][f"{placement.port}/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(placement.port)}]


def test_container_gets_parameters_as_arguments_and_env_verbatim(
    engine: DockerEngine, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_MODEL_ROOTS, f"/nonexistent:{tmp_path}")
    model = tmp_path / "model.gguf"
    model.write_text("weights\n")
    spec = docker_spec(
        "args",
        image,
        model_path=str(model),
        parameters={"ctx-size": 4096, "flash-attn": True, "no-mmap": False, "lora": ["a", "b"]},
        env={"GREETING": "hello; $(touch /pwned) `id`", "PORT": "1"},
    )
    placement = cpu_placement()
    engine.start(spec, placement)

    args = http_get(placement.port, "/args").text.splitlines()
    assert args == ["--ctx-size", "4096", "--flash-attn", "--lora", "a", "--lora", "b"]
    env = http_get(placement.port, "/env").text.splitlines()
    assert "GREETING=hello; $(touch /pwned) `id`" in env  # no shell expanded it
    assert f"PORT={placement.port}" in env  # the published port wins over the spec's env
    assert f"MODEL_PATH={model}" in env
    # The host's model file is mounted at the same path, read-only.
    assert http_get(placement.port, "/model").text == "weights\n"
    assert http_get(placement.port, "/model-mount").text.strip() == "read-only"


def test_new_engine_in_same_namespace_adopts_running_container(
    engine: DockerEngine, image: str, namespace: str
) -> None:
    placement = EnginePlacement(gpus=(0, 1), port=free_port(), memory_mb=4096)
    before = time.time()
    started = engine.start(docker_spec("adoptee", image), placement)
    http_get(placement.port, "/health")

    adopted = DockerEngine(namespace).observe()

    assert adopted == [started]
    assert adopted[0].gpus == (0, 1) and adopted[0].memory_mb == 4096
    assert before - 1 <= adopted[0].started_at <= time.time()
    assert DockerEngine(f"{namespace}-other").observe() == []


def test_stop_removes_the_container_and_frees_the_port(
    engine: DockerEngine, image: str, client: docker.DockerClient
) -> None:
    placement = cpu_placement()
    handle = engine.start(docker_spec("stopme", image), placement)
    http_get(placement.port, "/health")

    began = time.monotonic()
    engine.stop(handle, grace_s=120)

    # The engine got SIGTERM (forwarded by the container's init): it did not sit out the grace
    # period until SIGKILL (the bound is generous: a loaded machine is slow, not 2 minutes slow)
    assert time.monotonic() - began < 60
    assert not exists(client, handle.container_id)
    assert port_refuses(placement.port)
    assert engine.observe() == []
    engine.stop(handle)  # stopping what is gone is not an error


def test_container_killed_from_outside_is_observed_dead(
    engine: DockerEngine, image: str, client: docker.DockerClient
) -> None:
    placement = cpu_placement()
    handle = engine.start(docker_spec("victim", image), placement)
    http_get(placement.port, "/health")

    client.containers.get(handle.container_id).kill()

    [dead] = wait_until(lambda: [h for h in engine.observe() if not h.alive], what="dead handle")
    assert dead.container_id == handle.container_id
    assert dead.exit_code == 137  # 128 + SIGKILL
    engine.stop(dead, grace_s=1)
    assert not exists(client, handle.container_id)


def test_crashed_engine_shows_exit_code_and_logs_and_is_replaced_on_restart(
    engine: DockerEngine, image: str, client: docker.DockerClient
) -> None:
    placement = cpu_placement()
    crashing = docker_spec("crasher", image, env={"EXIT_WITH": "3"})
    first = engine.start(crashing, placement)

    [dead] = wait_until(lambda: [h for h in engine.observe() if not h.alive], what="the crash")
    assert dead.exit_code == 3
    assert "exiting with 3" in engine.logs(dead)
    assert engine.logs(dead, lines=1) == ["exiting with 3"]

    # The reconciler restarts it: the dead container gives way to a new one.
    second = engine.start(docker_spec("crasher", image), placement)
    assert http_get(placement.port, "/health").status_code == 200
    assert second.container_id != first.container_id
    assert not exists(client, first.container_id)
    assert [h.container_id for h in engine.observe()] == [second.container_id]


def test_running_model_is_never_started_twice(engine: DockerEngine, image: str) -> None:
    spec = docker_spec("once", image)
    first = engine.start(spec, cpu_placement())

    with pytest.raises(EngineError, match="already runs"):
        engine.start(spec, cpu_placement())

    assert [h.container_id for h in engine.observe()] == [first.container_id]


def test_changed_spec_hash_is_visible_in_labels(
    engine: DockerEngine, image: str, client: docker.DockerClient
) -> None:
    old = docker_spec("hashed", image, parameters={"ctx-size": 2048})
    new = old.model_copy(update={"parameters": {"ctx-size": 8192}})
    assert new.spec_hash() != old.spec_hash()
    placement = cpu_placement()
    engine.start(old, placement)

    [running] = engine.observe()
    assert running.spec_hash == old.spec_hash()  # the planner sees it differs from `new`

    engine.stop(running, grace_s=1)
    restarted = engine.start(new, placement)
    assert client.containers.get(restarted.container_id).labels[LABEL_HASH] == new.spec_hash()
    assert [h.spec_hash for h in engine.observe()] == [new.spec_hash()]
    assert http_get(placement.port, "/args").text.split() == ["--ctx-size", "8192"]


# -- what the engine must leave alone ----------------------------------------------------------


def test_containers_without_our_labels_are_never_listed_or_touched(
    engine: DockerEngine,
    image: str,
    namespace: str,
    run_foreign: Callable[..., Container],
) -> None:
    plain = run_foreign(f"reconciler-test-foreign-{uuid.uuid4().hex[:8]}")
    # Our naming scheme without our labels: the name alone proves nothing.
    same_name = run_foreign(container_name(namespace, "clash"))
    other_namespace = run_foreign(
        f"reconciler-test-other-{uuid.uuid4().hex[:8]}",
        labels={LABEL_MANAGED: "true", LABEL_NAMESPACE: "someone-else", LABEL_MODEL: "clash"},
    )

    assert engine.observe() == []
    for container in (plain, same_name, other_namespace):
        forged = Handle(
            model_id="clash",
            framework="docker",
            spec_hash="",
            port=8080,
            gpus=(),
            memory_mb=0,
            started_at=0.0,
            container_id=container.id,
        )
        with pytest.raises(EngineError, match="not managed by reconciler namespace"):
            engine.stop(forged, grace_s=0)
        assert engine.logs(forged) == []
    with pytest.raises(EngineError, match="not managed by reconciler namespace"):
        engine.start(docker_spec("clash", image), cpu_placement())

    for container in (plain, same_name, other_namespace):
        container.reload()
        assert container.status == "running"


# -- failures -------------------------------------------------------------------------------------


def test_missing_image_that_cannot_be_pulled_is_an_engine_error(
    engine: DockerEngine, namespace: str, client: docker.DockerClient
) -> None:
    # Port 1 on localhost: no registry there on any machine, so the pull fails at once.
    spec = docker_spec("ghost", "localhost:1/reconciler-test-missing:never")

    with pytest.raises(EngineError, match="not present locally and pulling it failed"):
        engine.start(spec, cpu_placement())

    assert not exists(client, container_name(namespace, "ghost"))


def test_port_taken_on_the_host_is_an_engine_error_leaving_no_container(
    engine: DockerEngine, image: str, namespace: str, client: docker.DockerClient
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(EngineError, match="cannot start container for model squeezed"):
            engine.start(docker_spec("squeezed", image), EnginePlacement(gpus=(), port=port))

    assert not exists(client, container_name(namespace, "squeezed"))
    assert engine.observe() == []


def test_unreachable_daemon_is_reported_without_raising_from_observe(tmp_path: Path) -> None:
    socket_url = f"unix://{tmp_path}/nonexistent.sock"
    engine = DockerEngine(
        "test",
        client_factory=lambda: docker.DockerClient(base_url=socket_url),
        endpoint=socket_url,
    )
    handle = Handle("m", "docker", "", 8100, (), 0, 0.0, container_id="0" * 64)

    assert engine.observe() == []
    assert not engine.available
    reason = engine.unavailable_reason
    assert reason is not None
    assert reason.startswith(f"Docker engine not reachable at {socket_url}: ")
    with pytest.raises(EngineError) as started:
        engine.start(docker_spec("m", "any:tag"), cpu_placement())
    assert str(started.value).startswith(f"Docker engine not reachable at {socket_url}: ")
    with pytest.raises(EngineError) as stopped:
        engine.stop(handle)
    assert str(stopped.value).startswith(f"Docker engine not reachable at {socket_url}: ")
    assert engine.logs(handle) == []


def test_engine_connects_once_the_daemon_comes_up(client: docker.DockerClient) -> None:
    attempts: list[int] = []

    def factory() -> docker.DockerClient:
        attempts.append(1)
        if len(attempts) == 1:
            raise DockerException("Error while fetching server API version: connection refused")
        return docker.from_env()

    engine = DockerEngine(f"test-{uuid.uuid4().hex[:8]}", client_factory=factory)

    assert engine.observe() == []
    assert not engine.available
    assert "connection refused" in (engine.unavailable_reason or "")
    assert engine.observe() == []
    assert engine.available and engine.unavailable_reason is None


# -- GPUs -----------------------------------------------------------------------------------------


def test_gpus_are_requested_only_from_an_nvidia_runtime(
    engine: DockerEngine, image: str, client: docker.DockerClient
) -> None:
    nvidia = has_nvidia_runtime(client.info())
    placement = EnginePlacement(gpus=(0,), port=free_port(), memory_mb=1024)
    handle = engine.start(docker_spec("gpu", image), placement)

    container = client.containers.get(handle.container_id)
    requests = container.attrs["HostConfig"].get("DeviceRequests") or []
    if nvidia:
        assert [r["DeviceIDs"] for r in requests] == [["0"]]
        assert container.labels[LABEL_GPU_REQUEST] == "nvidia"
    else:
        # This CI host: the container runs on the CPU and says why it has no GPU.
        assert requests == []
        assert container.labels[LABEL_GPU_REQUEST] == "skipped: no nvidia runtime"
        assert http_get(placement.port, "/health").status_code == 200
    assert engine.observe()[0].gpus == (0,)


def test_nvidia_device_request_names_the_placed_gpus() -> None:
    assert gpu_device_requests((0, 2), nvidia=False) == []
    assert gpu_device_requests((), nvidia=True) == []
    [request] = gpu_device_requests((0, 2), nvidia=True)
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == ["0", "2"]
    assert request["Capabilities"] == [["gpu"]]
    assert has_nvidia_runtime({"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-ctr"}}})
    assert not has_nvidia_runtime({"Runtimes": {"runc": {}}})


def test_command_is_pure_data_of_the_spec() -> None:
    engine = DockerEngine("test", client_factory=_never_called)
    spec = ModelSpec(
        id="m",
        framework="docker",
        model_path="org/model",
        image="vllm/vllm-openai:v0.6.0",
        parameters={"max-model-len": 4096, "enforce-eager": True, "trust-remote-code": False},
        env={"HF_HOME": "/cache"},
    )

    command = engine.command(spec, EnginePlacement(gpus=(0,), port=8123))

    assert command.image == "vllm/vllm-openai:v0.6.0"
    assert command.argv == ("--max-model-len", "4096", "--enforce-eager")
    assert command.env == {"HF_HOME": "/cache", "PORT": "8123", "MODEL_PATH": "org/model"}


def _never_called() -> docker.DockerClient:
    raise AssertionError("command() must not contact the Docker daemon")


# -- bind mounts: only below the host's model roots, never system paths ---------------------------


def test_models_below_a_declared_root_are_mounted_read_only(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m.gguf"
    model.parent.mkdir()
    model.write_text("w")
    assert model_mounts(str(model), [str(tmp_path / "models")]) == [str(model)]
    assert model_mounts("/in/the/image", [str(tmp_path)]) == []  # not on this host: no mount
    assert model_mounts("org/hub-id", [str(tmp_path)]) == []


@pytest.mark.parametrize("path", ["/", "/etc", "/etc/hostname", "/proc/self", "/dev/null"])
def test_system_paths_are_never_mounted_even_below_a_root(path: str) -> None:
    with pytest.raises(EngineError, match=f"model_path {re.escape(path)}.*never mounts"):
        model_mounts(path, ["/"])


def test_the_docker_socket_is_never_mounted(tmp_path: Path) -> None:
    import socket

    sock_path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        with pytest.raises(EngineError, match="a socket"):
            model_mounts(str(sock_path), [str(tmp_path)])
    if Path("/var/run/docker.sock").exists():
        with pytest.raises(EngineError, match="system path"):
            model_mounts("/var/run/docker.sock", ["/var"])


def test_a_path_outside_the_roots_names_the_setting_to_change(tmp_path: Path) -> None:
    model = tmp_path / "elsewhere.gguf"
    model.write_text("w")
    with pytest.raises(EngineError) as refused:
        model_mounts(str(model), [str(tmp_path / "models")])
    assert str(model) in str(refused.value) and ENV_MODEL_ROOTS in str(refused.value)
    with pytest.raises(EngineError, match="unset"):
        model_mounts(str(model), [])


def test_a_symlink_below_a_root_is_judged_by_its_target(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    link = tmp_path / "models" / "innocent.gguf"
    link.symlink_to("/etc/passwd")
    with pytest.raises(EngineError, match=r"-> /etc/passwd.*system path"):
        model_mounts(str(link), [str(tmp_path / "models")])


def test_start_refuses_a_hostile_mount_before_contacting_the_daemon(monkeypatch, tmp_path) -> None:
    # a Docker socket below a declared root (a host without Docker has no /var/run/docker.sock)
    monkeypatch.setenv(ENV_MODEL_ROOTS, str(tmp_path))
    engine = DockerEngine("test", client_factory=_never_called)
    spec = docker_spec("sock", "busybox:1", model_path=str(tmp_path / "docker.sock"))
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(spec.model_path)
        with pytest.raises(EngineError, match=r"docker\.sock is a socket"):
            engine.start(spec, cpu_placement())
    hostile = docker_spec("flag", "busybox:1", parameters={"model": "--privileged"})
    with pytest.raises(EngineError, match="would be read as a flag"):
        engine.start(hostile, cpu_placement())
