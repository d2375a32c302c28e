"""Docker as an engine: containers of an image the spec names, labelled as ours.

This module is the descriptor; what a container looks like (labels, environment, mounts, argv)
is reconciler/engines/docker_container.py, and the code that talks to the Docker daemon
(docker_runtime.py) is imported only when a Docker model runs: the Docker SDK costs start-up time
that hosts without Docker should not pay.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reconciler.engines.base import Engine, EngineDescriptor, Handle, KubernetesContainer
from reconciler.engines.docker_container import RESERVED_ENV, docker_argv, own_env

DEFAULT_SOCKET = Path("/var/run/docker.sock")


def daemon_may_exist() -> bool:
    """Whether a Docker daemon could answer here: DOCKER_HOST names one, or the default socket
    is there. Neither: no container of ours can exist on this host."""
    return bool(os.environ.get("DOCKER_HOST")) or DEFAULT_SOCKET.exists()


class LazyDockerEngine:
    """The Docker engine, with the Docker SDK imported on first need. On a host without a
    Docker daemon observe() finds no container without importing it: every command that runs
    a pass (an `apply` before it launches its engines) would pay ~40 ms for nothing. Looked at
    again on every pass, so a daemon that starts after the reconciler is found."""

    framework = "docker"

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._engine: Engine | None = None

    def observe(self) -> list[Handle]:
        if self._engine is None and not daemon_may_exist():
            return []
        return self._runtime().observe()

    def __getattr__(self, name: str) -> Any:
        # command, start, stop, logs, available, unavailable_reason: the runtime engine's
        return getattr(self._runtime(), name)

    def _runtime(self) -> Engine:
        if self._engine is None:
            from reconciler.engines.docker_runtime import DockerEngine  # the SDK, on first need

            self._engine = DockerEngine(self.namespace)
        return self._engine


def _create(state_dir: str | os.PathLike[str], namespace: str) -> Engine:
    del state_dir  # containers keep their state in the daemon (labels)
    return LazyDockerEngine(namespace)


DESCRIPTOR = EngineDescriptor(
    framework="docker",
    parameters=None,
    argv=docker_argv,
    estimate=None,
    model_files="none",
    kubernetes=KubernetesContainer(image="", launcher=(), argv_is_command=False),
    create=_create,
    reserved_env=RESERVED_ENV,
    needs_image=True,
    extra_env=own_env,
)
