"""The Docker engine at run time: containers through the Docker SDK (see docker.py for the rules).

Imported only when a reconciler runs docker models (the SDK costs ~0.1 s to import): the
descriptor in docker.py creates this engine lazily.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount
from requests.exceptions import RequestException

from reconciler.core.engine_args import FlagValueError
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Command, EngineError, EnginePlacement, Handle
from reconciler.engines.docker_container import (
    LABEL_GPU_REQUEST,
    LABEL_GPUS,
    LABEL_HASH,
    LABEL_MANAGED,
    LABEL_MEMORY,
    LABEL_MODEL,
    LABEL_NAMESPACE,
    LABEL_PORT,
    LABEL_STARTED,
    NAMESPACE_PATTERN,
    container_env,
    container_name,
    float_label,
    has_nvidia_runtime,
    int_label,
    model_mounts,
    parse_gpus,
    render_parameters,
)

log = logging.getLogger(__name__)

# Where docker.from_env() connects when DOCKER_HOST is unset; only used in messages.
DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"
ClientFactory = Callable[[], docker.DockerClient]
# A daemon that does not answer shows up as a DockerException (client creation) or as a requests
# error (a call on an existing client); an APIError is the daemon answering "no".
UNREACHABLE = (DockerException, RequestException)


def gpu_device_requests(gpus: tuple[int, ...], nvidia: bool) -> list[DeviceRequest]:
    if not gpus or not nvidia:
        return []
    device_ids = [str(gpu) for gpu in gpus]
    return [DeviceRequest(driver="nvidia", device_ids=device_ids, capabilities=[["gpu"]])]


def handle_from_container(container: Container) -> Handle:
    """The Handle of one of our containers, from its labels and state."""
    labels = container.labels
    state = container.attrs.get("State") or {}
    running = bool(state.get("Running"))
    return Handle(
        model_id=labels[LABEL_MODEL],
        framework="docker",
        spec_hash=labels.get(LABEL_HASH, ""),
        port=int_label(labels, LABEL_PORT),
        gpus=parse_gpus(labels.get(LABEL_GPUS, "")),
        memory_mb=int_label(labels, LABEL_MEMORY),
        started_at=float_label(labels, LABEL_STARTED),
        container_id=container.id,
        alive=running,
        exit_code=None if running else state.get("ExitCode"),
    )


def _default_endpoint(client_factory: ClientFactory) -> str:
    """Where the client will connect, as far as we can tell without connecting."""
    if client_factory is docker.from_env:
        return os.environ.get("DOCKER_HOST") or DEFAULT_ENDPOINT
    return "the client factory's endpoint"


def _explain(exc: BaseException) -> str:
    """The daemon's own words for an APIError; the exception text otherwise."""
    if isinstance(exc, APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


class DockerEngine:
    """Runs models with `framework: docker` as labelled containers of one reconciler namespace."""

    framework = "docker"

    def __init__(
        self,
        namespace: str,
        client_factory: ClientFactory = docker.from_env,
        publish_host: str = "127.0.0.1",
        *,
        endpoint: str | None = None,
        pull_timeout_s: float = 300.0,
    ) -> None:
        """`endpoint` names where `client_factory` connects, for messages only (default for
        docker.from_env: DOCKER_HOST or the default socket). `pull_timeout_s` bounds the pull of
        a missing image."""
        if not NAMESPACE_PATTERN.match(namespace):
            raise ValueError(f"namespace {namespace!r} must be a DNS label (a-z, 0-9, -)")
        self.namespace = namespace
        self.publish_host = publish_host
        self.endpoint = endpoint or _default_endpoint(client_factory)
        self.pull_timeout_s = pull_timeout_s
        self._client_factory = client_factory
        self._client_cache: docker.DockerClient | None = None
        self._reason: str | None = None
        self._pulls: dict[str, tuple[threading.Thread, list[BaseException]]] = {}

    # -- availability ---------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether the daemon answered the latest contact (observe() makes one each pass);
        contacts it when there has been none yet, so it is meaningful before any other call."""
        if self._client_cache is None and self._reason is None:
            with suppress(EngineError):
                self._client()
        return self._reason is None

    @property
    def unavailable_reason(self) -> str | None:
        """Why the latest contact with the daemon failed; None when it succeeded."""
        return self._reason

    # -- the Engine protocol --------------------------------------------------------------------

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        argv = tuple(render_parameters(spec.parameters))
        return Command(argv=argv, env=container_env(spec, placement), image=spec.image)

    def start(self, spec: ModelSpec, placement: EnginePlacement) -> Handle:
        if not spec.image:
            raise EngineError(f"model {spec.id} has framework docker but no image")
        try:
            self.command(spec, placement)  # a value that would become a flag: refused here
            model_mounts(spec.model_path)  # a host path outside the model roots: refused here
        except FlagValueError as exc:
            raise EngineError(str(exc)) from exc
        client = self._client()
        with self._docker_errors(f"cannot start container for model {spec.id}"):
            self._ensure_image(client, spec.image)
            self._clear_name(client, container_name(self.namespace, spec.id))
            container = self._create(client, spec.image, spec, placement)
            self._start_or_remove(container)
            container.reload()
            return handle_from_container(container)

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        client = self._client()
        with self._docker_errors(f"cannot stop container of model {handle.model_id}"):
            container = self._find(client, handle)
            if container is None:
                return  # already gone: nothing is left behind
            self._require_ours(container)
            # Docker sends SIGTERM, then SIGKILL after the timeout (whole seconds).
            with suppress(NotFound):  # removed meanwhile: just as good
                container.stop(timeout=max(0, math.ceil(grace_s)))
            _remove(container)

    def observe(self) -> list[Handle]:
        try:
            client = self._client()
            containers = client.containers.list(
                all=True,
                filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_NAMESPACE}={self.namespace}"]},
                ignore_removed=True,  # one may be removed between the list and its inspection
            )
        except EngineError:
            return []  # unreachable: the reason is recorded
        except APIError as exc:
            self._reason = (
                f"Docker engine at {self.endpoint} failed to list containers: {_explain(exc)}"
            )
            return []
        except UNREACHABLE as exc:
            self._lost(exc)
            return []
        self._reason = None
        # The label filter is the daemon's; checking again keeps "never touch others" local.
        ours = [handle_from_container(c) for c in containers if self._is_ours(c)]
        return sorted(ours, key=lambda handle: handle.model_id)

    def health_path(self, spec: ModelSpec) -> str:
        return spec.health_check.path

    def logs(self, handle: Handle, lines: int = 20) -> list[str]:
        if lines <= 0:
            return []
        try:
            container = self._find(self._client(), handle)
            if container is None or not self._is_ours(container):
                return []
            output = container.logs(stdout=True, stderr=True, tail=lines)
        except (EngineError, APIError):
            return []  # no logs to show; an outage is recorded for `unavailable_reason`
        except UNREACHABLE as exc:
            self._lost(exc)
            return []
        return output.decode("utf-8", errors="replace").splitlines()[-lines:]

    # -- connection -----------------------------------------------------------------------------

    def _client(self) -> docker.DockerClient:
        """The cached client, or a new one that answered a ping; EngineError when unreachable."""
        if self._client_cache is None:
            try:
                client = self._client_factory()
                client.ping()
            except UNREACHABLE as exc:
                raise self._lost(exc) from exc
            self._client_cache = client
            self._reason = None
        return self._client_cache

    def _lost(self, exc: BaseException) -> EngineError:
        """Record that the daemon does not answer; the next call connects afresh."""
        reason = f"Docker engine not reachable at {self.endpoint}: {_explain(exc)}"
        # once per outage, and at info: on a host without Docker that runs no docker model this
        # is no problem; a docker model that needs the daemon goes to `error` with this reason
        if reason != self._reason:
            log.info("%s", reason)
        self._reason = reason
        if self._client_cache is not None:
            with suppress(Exception):
                self._client_cache.close()
            self._client_cache = None
        return EngineError(self._reason)

    @contextmanager
    def _docker_errors(self, what: str) -> Iterator[None]:
        """Daemon refusals become EngineError(`what: reason`); a lost daemon, the unreachable
        EngineError."""
        try:
            yield
        except EngineError:
            raise
        except APIError as exc:
            raise EngineError(f"{what}: {_explain(exc)}") from exc
        except UNREACHABLE as exc:
            raise self._lost(exc) from exc

    # -- containers -----------------------------------------------------------------------------

    def _is_ours(self, container: Container) -> bool:
        labels = container.labels
        return (
            labels.get(LABEL_MANAGED) == "true"
            and labels.get(LABEL_NAMESPACE) == self.namespace
            and LABEL_MODEL in labels
        )

    def _require_ours(self, container: Container) -> None:
        if not self._is_ours(container):
            raise EngineError(
                f"container {container.name} ({container.short_id}) is not managed by reconciler "
                f"namespace {self.namespace}; leaving it alone"
            )

    def _find(self, client: docker.DockerClient, handle: Handle) -> Container | None:
        key = handle.container_id or container_name(self.namespace, handle.model_id)
        try:
            return client.containers.get(key)
        except NotFound:
            return None

    def _clear_name(self, client: docker.DockerClient, name: str) -> None:
        """Make room for a new container named `name`: a dead container of ours (a crash the
        reconciler is now restarting) is removed; anything else blocks the start."""
        try:
            existing = client.containers.get(name)
        except NotFound:
            return
        self._require_ours(existing)
        if (existing.attrs.get("State") or {}).get("Running"):
            raise EngineError(
                f"container {name} ({existing.short_id}) already runs; stop it before starting "
                "the model again"
            )
        _remove(existing)

    def _create(
        self, client: docker.DockerClient, image: str, spec: ModelSpec, placement: EnginePlacement
    ) -> Container:
        command = self.command(spec, placement)
        nvidia = bool(placement.gpus) and has_nvidia_runtime(client.info())
        if placement.gpus and not nvidia:
            log.warning(
                "model %s: GPUs %s placed but the Docker daemon has no nvidia runtime; "
                "starting the container without a GPU device request",
                spec.id,
                list(placement.gpus),
            )
        port = f"{placement.port}/tcp"
        mounts = [
            Mount(target=path, source=path, type="bind", read_only=True)
            for path in model_mounts(spec.model_path)
        ]
        return client.containers.create(
            image,
            command=list(command.argv) or None,  # None keeps the image's CMD
            name=container_name(self.namespace, spec.id),
            labels=self._labels(spec, placement, nvidia),
            environment=command.env,
            ports={port: (self.publish_host, placement.port)},
            mounts=mounts,
            device_requests=gpu_device_requests(placement.gpus, nvidia),
            # the stubs list only "always" and "on-failure"; "no" is the Docker API's own value
            restart_policy={"Name": "no"},  # type: ignore[arg-type]
            init=True,
        )

    def _labels(self, spec: ModelSpec, placement: EnginePlacement, nvidia: bool) -> dict[str, str]:
        if not placement.gpus:
            gpu_request = "none"
        elif nvidia:
            gpu_request = "nvidia"
        else:
            gpu_request = "skipped: no nvidia runtime"
        return {
            LABEL_MANAGED: "true",
            LABEL_NAMESPACE: self.namespace,
            LABEL_MODEL: spec.id,
            LABEL_HASH: spec.spec_hash(),
            LABEL_PORT: str(placement.port),
            LABEL_GPUS: ",".join(str(gpu) for gpu in placement.gpus),
            LABEL_MEMORY: str(placement.memory_mb),
            LABEL_STARTED: f"{time.time():.3f}",
            LABEL_GPU_REQUEST: gpu_request,
        }

    @staticmethod
    def _start_or_remove(container: Container) -> None:
        """Start; a container that cannot start (port taken...) is removed, not left behind."""
        try:
            container.start()
        except Exception:
            with suppress(Exception):
                _remove(container)
            raise

    # -- images ---------------------------------------------------------------------------------

    def _ensure_image(self, client: docker.DockerClient, image: str) -> None:
        try:
            client.images.get(image)
        except ImageNotFound:
            self._pull(client, image)

    def _pull(self, client: docker.DockerClient, image: str) -> None:
        """Pull in a thread so that a registry that never answers cannot hang the reconciler
        (docker-py pulls without a timeout). A pull still running is waited on, not repeated."""
        thread, errors = self._pulls.get(image, (None, []))
        if thread is None or not thread.is_alive():
            errors = []
            thread = threading.Thread(
                target=_pull_into, args=(client, image, errors), daemon=True, name=f"pull {image}"
            )
            self._pulls[image] = (thread, errors)
            thread.start()
        thread.join(self.pull_timeout_s)
        if thread.is_alive():
            raise EngineError(
                f"image {image} is not present locally and pulling it did not finish within "
                f"{self.pull_timeout_s:g}s"
            )
        self._pulls.pop(image, None)
        if errors:
            raise EngineError(
                f"image {image} is not present locally and pulling it failed: {_explain(errors[0])}"
            )


def _pull_into(client: docker.DockerClient, image: str, errors: list[BaseException]) -> None:
    try:
        client.images.pull(image)
    except Exception as exc:  # reported by the waiting thread
        errors.append(exc)


def _remove(container: Container) -> None:
    """Remove with its anonymous volumes; a container already gone is fine."""
    with suppress(NotFound):
        container.remove(v=True, force=True)
