"""Docker as an engine: containers of an image the spec names, labelled as ours.

This module is the descriptor; what a container looks like (labels, environment, mounts, argv)
is reconciler/engines/docker_container.py, and the code that talks to the Docker daemon
(docker_runtime.py) is imported only when a Docker model runs: the Docker SDK costs start-up time
that hosts without Docker should not pay.
"""

from __future__ import annotations

import os

from reconciler.engines.base import Engine, EngineDescriptor, KubernetesContainer
from reconciler.engines.docker_container import RESERVED_ENV, docker_argv, own_env


def _create(state_dir: str | os.PathLike[str], namespace: str) -> Engine:
    """The runtime engine; the Docker SDK is imported only here."""
    del state_dir  # containers keep their state in the daemon (labels)
    from reconciler.engines.docker_runtime import DockerEngine

    return DockerEngine(namespace)


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
