"""What separates a remote model from an engine in a spec, and where overflow may go. Pure.

A remote model (framework remote) is an endpoint someone else serves: the fields that shape an
engine (files, image, flags, GPUs, port, environment, replicas, on-demand activation) mean
nothing for it, and the fields that describe an endpoint mean nothing for an engine. Either
mistake would be silently ignored, so validation refuses each offending field where it is
written.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from urllib.parse import urlsplit

from reconciler.core.desired import FieldPath
from reconciler.core.engine_args import FrameworkRules
from reconciler.core.spec import ModelSpec

REMOTE_ONLY = ("endpoint", "upstream_model", "api_key_env", "max_concurrency")
"""Fields that describe an endpoint: refused on an engine."""

ENGINE_ONLY = (
    "model_path",
    "image",
    "parameters",
    "gpu_devices",
    "resource_requirements",
    "port",
    "env",
    "replicas",
    "activation",
    "idle_timeout_s",
    "overflow",
)
"""Fields that shape or place an engine (or, overflow, relieve its queue): refused on a remote
model when they differ from their defaults (`replicas: 1` and `activation: always` say
nothing a remote model contradicts)."""

_WHY_NOT_REMOTE = {
    "replicas": "an endpoint is one instance; its provider scales it",
    "activation": "an endpoint is not started on demand",
    "overflow": "overflow relieves a local engine's queue; a remote model has max_concurrency",
}


def kind_problems(spec: ModelSpec, rules: FrameworkRules) -> Iterator[tuple[FieldPath, str]]:
    """One problem per field that does not belong to the spec's kind (endpoint or engine)."""
    if rules.remote:
        yield from _remote_problems(spec)
        return
    for name in REMOTE_ONLY:
        if getattr(spec, name) is not None:
            yield (name,), f"{name} is for framework remote only, not {spec.framework}"


def _remote_problems(spec: ModelSpec) -> Iterator[tuple[FieldPath, str]]:
    if spec.endpoint is None:
        yield ("endpoint",), "framework remote needs an endpoint (its OpenAI-compatible base URL)"
    else:
        reason = endpoint_problem(spec.endpoint)
        if reason is not None:
            yield ("endpoint",), reason
    for name in ENGINE_ONLY:
        if getattr(spec, name) != _default(name):
            why = _WHY_NOT_REMOTE.get(name, "a remote model has no engine, files, GPU or port")
            yield (name,), f"{name} does not apply to framework remote: {why}"


def _default(name: str) -> object:
    return ModelSpec.model_fields[name].get_default(call_default_factory=True)


def endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be a remote model's base URL, or None (the schema checked its shape)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number, a broken IPv6 address
        return f"endpoint {url!r} is not a URL: {exc}"
    if not parts.hostname:
        return f"endpoint {url!r} names no host"
    if port == 0:
        return f"endpoint {url!r}: port 0 cannot be reached"
    return None


def endpoint_host(url: str) -> str:
    """The host name an endpoint's requests (and its key) go to, as the key's _HOSTS names it."""
    return (urlsplit(url).hostname or "").rstrip(".")


def overflow_problems(spec: ModelSpec, named: Collection[str]) -> Iterator[str]:
    """Why the spec's overflow target cannot take its requests (file:line is the caller's). A
    disabled target is not refused: the gateway then queues as if there were no overflow."""
    if spec.overflow is None:
        return
    target = spec.overflow.model
    if target == spec.id:
        yield "a model cannot overflow to itself"
    elif target not in named:
        yield f"overflow model '{target}' is not a model in desired-state"
