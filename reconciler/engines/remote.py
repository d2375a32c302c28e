"""`framework: remote`: a model someone else serves behind an OpenAI-compatible endpoint.

A hosted API, a colleague's server, the office's big box: nothing of it runs on this host. The
descriptor says so (`remote=True`), and its runtime engine is inert: it finds nothing, starts
nothing, stops nothing. The gateway relays requests to the spec's `endpoint`
(reconciler.gateway.relay), the daemon probes `GET <endpoint>/models`, and the key
goes only where reconciler.core.secrets.remote_key_refusal allows.
"""

from __future__ import annotations

import os

from reconciler.core.spec import REMOTE_FRAMEWORK, ModelSpec
from reconciler.engines.base import (
    Command,
    Engine,
    EngineDescriptor,
    EngineError,
    EnginePlacement,
    Handle,
    KubernetesContainer,
    Launcher,
)

_NO_PROCESS = "a remote model has no engine process: the gateway relays to its endpoint"


class RemoteEngine:
    """The runtime engine of remote models: there is never anything of theirs to find here."""

    framework = REMOTE_FRAMEWORK

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace  # like every engine of this reconciler, though it marks nothing

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        raise EngineError(f"{spec.id}: {_NO_PROCESS}")

    def start(self, spec: ModelSpec, placement: EnginePlacement) -> Handle:
        raise EngineError(f"{spec.id}: {_NO_PROCESS}")

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        return None  # nothing was started, so nothing is left behind

    def observe(self) -> list[Handle]:
        return []

    def logs(self, handle: Handle, lines: int = 20) -> list[str]:
        return []

    def health_path(self, spec: ModelSpec) -> str:
        """Relative to the endpoint (GET <endpoint>/models by default), not to a local port."""
        return spec.health_check.path


def _argv(spec: ModelSpec, placement: EnginePlacement, launcher: Launcher) -> list[str]:
    raise EngineError(f"{spec.id}: {_NO_PROCESS}")


def _create(state_dir: str | os.PathLike[str], namespace: str) -> Engine:
    del state_dir  # no process, so no log of it
    return RemoteEngine(namespace)


DESCRIPTOR = EngineDescriptor(
    framework=REMOTE_FRAMEWORK,
    parameters=frozenset(),
    argv=_argv,
    estimate=None,
    model_files="none",
    kubernetes=KubernetesContainer(image="", launcher=()),
    create=_create,
    remote=True,
)
