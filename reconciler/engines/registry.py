"""The engines of one reconciler, by framework."""

from __future__ import annotations

import logging
import os

from reconciler.engines.base import Engine
from reconciler.engines.llamacpp import LlamaCppEngine
from reconciler.engines.process import ProcessSupervisor
from reconciler.engines.vllm import VllmEngine

log = logging.getLogger(__name__)


def engines(state_dir: str | os.PathLike[str], namespace: str | None = None) -> dict[str, Engine]:
    """llama_cpp and vllm (local processes), and docker when its module is importable.

    One namespace for all of them (default: derived from the state directory), so one
    reconciler adopts exactly the engines it started, whatever their framework.
    """
    namespace = namespace or ProcessSupervisor(state_dir).namespace
    found: dict[str, Engine] = {
        "llama_cpp": LlamaCppEngine(state_dir, namespace),
        "vllm": VllmEngine(state_dir, namespace),
    }
    docker = _docker_engine(namespace)
    if docker is not None:
        found["docker"] = docker
    return found


def _docker_engine(namespace: str) -> Engine | None:
    try:
        from reconciler.engines.docker import DockerEngine
    except ImportError as exc:
        log.info("docker engine unavailable: %s", exc)
        return None
    try:
        return DockerEngine(namespace)
    except Exception as exc:  # a broken Docker setup must not take the process engines down
        log.warning("docker engine unavailable: %s", exc)
        return None
