"""cluster.yaml's `gateway:` section: how the OpenAI-compatible endpoint queues, drains and
checks keys. Host settings (where it listens) are flags, never git."""

from __future__ import annotations

from pydantic import Field

from reconciler.core.strict import SECRET_NAME_PATTERN, Strict

MIN_KEY_CHARS = 32
"""a shorter gateway key is refused (guessable); the daemon reports it as an error event"""


class GatewayKey(Strict):
    """One client key of the gateway: its name (shown in metrics) and the RECONCILER_SECRET_*
    variable of the reconciler that holds it. Keys never live in git."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="shown in metrics and logs")
    key_env: str = Field(
        pattern=SECRET_NAME_PATTERN,
        description="RECONCILER_SECRET_* variable holding the key (never any other variable)",
    )


class GatewayConfig(Strict):
    """The OpenAI-compatible endpoint `reconciler run` serves in front of every model."""

    queue_timeout_s: float = Field(
        300, gt=0, le=86400, description="a request for a starting model waits this long, then 503"
    )
    max_queue: int = Field(
        256, ge=0, le=100_000, description="waiting requests per model (429 past it)"
    )
    drain_timeout_s: float = Field(
        30, ge=0, le=3600, description="in-flight requests may finish this long before a stop"
    )
    upstream_idle_timeout_s: float = Field(
        600,
        gt=0,
        le=86400,
        description="a request fails (502, or an error event mid-stream) when its engine sends no"
        " byte for this long; the wait for the first byte counts, and a non-streaming answer's"
        " whole generation comes before it",
    )
    max_buffered_mb: int = Field(
        256,
        ge=1,
        le=65536,
        description="request bodies the gateway holds at once (queued and in flight, all"
        " models); past it requests get 503 with Retry-After",
    )
    api_keys: list[GatewayKey] = Field(
        default_factory=list, description="when set, clients need `Authorization: Bearer <key>`"
    )
