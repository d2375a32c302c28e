"""What operators write for the host: the pydantic model of cluster.yaml (GPUs, notifications,
the gateway, Kubernetes rendering). Unknown fields are errors, as in a model spec."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from reconciler.core.spec import (
    SECRET_NAME_PATTERN,
    JSONSchema,
    ModelId,
    Port,
    SecretName,
    Strict,
    json_schema,
)

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
    fleet_key_env: SecretName | None = Field(
        None,
        description="a fleet (hosts/): the RECONCILER_SECRET_* variable holding the key the "
        "hosts' gateways send each other with a forwarded request; it goes only to the hosts "
        "its _HOSTS variable lists",
    )


class DeclaredGPU(Strict):
    index: int = Field(ge=0)
    name: str = "Simulated GPU"
    memory_mb: int = Field(ge=1, description="total memory in MiB")


NotificationKind = Literal["error", "preempted", "unschedulable", "invalid", "recovered"]
NOTIFICATION_KINDS: tuple[NotificationKind, ...] = (
    "error",
    "preempted",
    "unschedulable",
    "invalid",
    "recovered",
)

# Which fields each target type reads; a field set for another type is an error, not ignored.
_TARGET_FIELDS = {
    "webhook": {"url", "url_env"},
    "slack": {"url", "url_env"},
    "email": {"url_env", "host", "port", "from_", "to", "username_env", "password_env", "starttls"},
}
_COMMON_TARGET_FIELDS = {"type", "name", "events", "timeout_s"}


class NotificationTarget(Strict):
    """Where important events are sent: a JSON webhook, a Slack incoming webhook, or e-mail.

    One flat model rather than a union per type: the JSON Schema then names a mistyped field
    ("did you mean 'url'?") instead of "not valid under any of the given schemas"; the rules per
    type are checked below. Secrets never live in git: webhook URLs that embed a token (Slack's
    do) and SMTP credentials are read from RECONCILER_SECRET_* variables named here, and go
    only where the host binds them (reconciler.core.secrets).
    """

    # `from` is a Python keyword: the field is from_, written `from` in YAML and in dumps.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    type: Literal["webhook", "slack", "email"]
    name: str | None = Field(
        None, min_length=1, description="label in logs and metrics; default <type>-<position>"
    )
    events: list[NotificationKind] = Field(
        default_factory=lambda: list(NOTIFICATION_KINDS),
        min_length=1,
        description="which notifications this target receives (default: all)",
    )
    timeout_s: float = Field(10, gt=0, le=300, description="seconds per delivery attempt")
    url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="webhook/slack: the URL; prefer url_env when the URL carries a token",
    )
    url_env: SecretName | None = Field(
        None,
        description="RECONCILER_SECRET_* variable that holds the URL: webhook/slack https://..., "
        "email smtp://user:password@host:port (STARTTLS) or smtps://... (TLS)",
    )
    host: str | None = Field(None, min_length=1, description="email: SMTP server")
    port: Port | None = Field(None, description="email: SMTP port (default 587, or 25 without TLS)")
    from_: str | None = Field(None, alias="from", pattern=r"@", description="email: sender")
    to: list[Annotated[str, Field(pattern=r"@")]] = Field(
        default_factory=list, description="email: recipients"
    )
    username_env: SecretName | None = Field(
        None,
        description="email: RECONCILER_SECRET_* variable that holds the SMTP user name; the host "
        "lists the servers it may go to in <name>_HOSTS",
    )
    password_env: SecretName | None = Field(
        None,
        description="email: RECONCILER_SECRET_* variable that holds the SMTP password; the host "
        "lists the servers it may go to in <name>_HOSTS",
    )
    starttls: bool | None = Field(None, description="email: upgrade with STARTTLS (default true)")

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> NotificationTarget:
        allowed = _TARGET_FIELDS[self.type] | _COMMON_TARGET_FIELDS
        # null or empty counts as unset: a dump of this model (the last valid state) has them all
        foreign = sorted(
            f for f in self.model_fields_set - allowed if getattr(self, f) not in (None, [])
        )
        if foreign:
            names = ", ".join("from" if f == "from_" else f for f in foreign)
            raise _target_error(f"{names}: not a field of a {self.type} target")
        if self.type in ("webhook", "slack") and (self.url is None) == (self.url_env is None):
            raise _target_error(f"a {self.type} target needs exactly one of url or url_env")
        if self.type == "email" and self.url_env is not None:
            held = [n for n in ("host", "port", "username_env", "password_env") if getattr(self, n)]
            if held:
                raise _target_error(
                    f"{', '.join(held)}: url_env holds the server and its credentials (one "
                    "smtp:// or smtps:// URL), so these stay unset"
                )
        if self.type == "email":
            needed = (("host (or url_env)", self.host or self.url_env), ("from", self.from_))
            missing = [n for n, v in needed if v is None]
            if not self.to:
                missing.append("to")
            if missing:
                raise _target_error(f"an email target needs {', '.join(missing)}")
            if (self.username_env is None) != (self.password_env is None):
                raise _target_error("username_env and password_env go together")
        return self

    def smtp_port(self) -> int:
        """email with `host`: the port it is sent to (587 with STARTTLS, 25 without)."""
        return self.port or (587 if self.starttls is not False else 25)


def _target_error(message: str) -> PydanticCustomError:
    # A custom error type keeps the message as written (a ValueError gets "Value error, " in front)
    return PydanticCustomError("notification_target", message)


# DNS subdomain (RFC 1123): names of Kubernetes objects such as a PersistentVolumeClaim.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
AbsolutePath = Annotated[str, Field(pattern=r"^/")]


class LlamaCppContainer(Strict):
    """The llama.cpp container on Kubernetes: an image whose server is llama-server."""

    image: str = Field(
        "ghcr.io/ggml-org/llama.cpp:server-cuda",
        min_length=1,
        description="image with llama-server (`:server` is the CPU-only build); pin a tag or "
        "digest for reproducible rollouts",
    )
    executable: str = Field(
        "/app/llama-server",
        min_length=1,
        description="llama-server inside the image: the container runs it with the flags the "
        "reconciler builds",
    )


class VllmContainer(Strict):
    """The vLLM container on Kubernetes: an image with the `vllm` command."""

    image: str = Field(
        "vllm/vllm-openai:latest",
        min_length=1,
        description="vLLM's OpenAI-compatible server image; pin a tag or digest for "
        "reproducible rollouts",
    )
    executable: str = Field(
        "vllm",
        min_length=1,
        description="the vllm command inside the image: the container runs `vllm serve ...`",
    )


class ModelVolume(Strict):
    """Where pods find the model files: a directory on every GPU node, or a shared claim."""

    type: Literal["hostPath", "persistentVolumeClaim"] = Field(
        "hostPath", description="hostPath = a directory on each node; persistentVolumeClaim"
    )
    host_path: AbsolutePath = Field("/models", description="hostPath: the directory on the nodes")
    claim_name: str = Field(
        "models",
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="persistentVolumeClaim: the claim's name (ReadOnlyMany) in the namespace",
    )
    mount_path: AbsolutePath = Field("/models", description="where containers see the volume")
    models_root: AbsolutePath = Field(
        "/models",
        description="where the specs' absolute model_path values live on a single host: a "
        "model_path below it is found at the same place below mount_path",
    )


GATEWAY_IMAGE_PLACEHOLDER = "ghcr.io/example/reconciler:latest"
"""no reconciler image is published: an operator builds deploy/Dockerfile and names it"""


class KubernetesGateway(Strict):
    """The gateway on Kubernetes: one endpoint in front of every model's pods (aliases,
    fallbacks, remote models, overflow, keys, request metrics), read from a routes ConfigMap."""

    image: str = Field(
        GATEWAY_IMAGE_PLACEHOLDER,
        min_length=1,
        description="the reconciler's own image, built from deploy/Dockerfile and pushed to a "
        "registry the cluster pulls from; the default is a placeholder: set it, and pin a tag "
        "or digest for reproducible rollouts",
    )
    replicas: int = Field(
        2, ge=0, le=100, description="gateway pods (each balances over every model's pods)"
    )
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP", description="type of the Service reconciler-gateway"
    )
    port: Port = Field(8000, description="port of the gateway's container and Service")
    keys_secret: str = Field(
        "reconciler-gateway-keys",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="the Secret the operator creates (never rendered): gateway.api_keys' and "
        "remote models' RECONCILER_SECRET_* variables, and each remote key's _HOSTS binding",
    )


class KubernetesSpec(Strict):
    """`reconciler render kubernetes`: how the same specs run on a Kubernetes cluster."""

    namespace: ModelId = Field("default", description="namespace of the rendered objects")
    llama_cpp: LlamaCppContainer = Field(default_factory=LlamaCppContainer)
    vllm: VllmContainer = Field(default_factory=VllmContainer)
    model_volume: ModelVolume = Field(default_factory=ModelVolume)
    model_paths: dict[ModelId, Annotated[str, Field(pattern=r"^[^/]")]] = Field(
        default_factory=dict,
        description="model id -> path of its model inside the volume, where the rule of "
        "models_root does not fit (packaged models, files elsewhere)",
    )
    container_port: Port = Field(8080, description="container port of models without a port")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP", description="type of each model's Service"
    )
    gateway: KubernetesGateway = Field(
        default_factory=KubernetesGateway,
        description="the gateway's Deployment and Service (reconciler-gateway)",
    )


class HostFields(Strict):
    """What one GPU host is: the fields cluster.yaml has in a one-host repository, and each
    hosts/<name>.yaml has in a fleet."""

    gpus: Literal["auto"] | list[DeclaredGPU] = Field(
        "auto", description="`auto` = read through NVML; a list = declared (simulated) GPUs"
    )
    reserved_memory_mb: int = Field(0, ge=0, description="MiB per GPU kept free for others")
    placement: Literal["spread", "pack"] = Field(
        "spread", description="spread = most free memory first; pack = best fit"
    )
    port_range: tuple[Port, Port] = Field(
        (8100, 8199), description="[first, last] ports allocated to models without a fixed port"
    )


HostGatewayURL = Annotated[
    str, Field(pattern=r"^https?://[^/?#@\s]+/?$", description="http(s)://HOST:PORT, no path")
]


class HostSpec(HostFields):
    """desired-state/hosts/<name>.yaml: one host of a fleet (its name is the file's name)."""

    gateway: HostGatewayURL = Field(
        description="where this host's gateway answers the other hosts, e.g. "
        "http://10.0.0.5:8000: requests for the models it runs are forwarded there"
    )


class ClusterSpec(HostFields):
    """desired-state/cluster.yaml: the host as a whole (in a fleet: the fleet's settings; the
    host fields then come from hosts/<name>.yaml)."""

    kubernetes: KubernetesSpec = Field(
        default_factory=KubernetesSpec,
        description="`reconciler render kubernetes`: images, model volume, namespace",
    )
    notifications: list[NotificationTarget] = Field(
        default_factory=list, description="where important events are sent (webhook, slack, email)"
    )
    gateway: GatewayConfig = Field(
        default_factory=GatewayConfig, description="the OpenAI-compatible gateway of `run`"
    )


def cluster_json_schema() -> JSONSchema:
    return json_schema(ClusterSpec, "cluster.schema.json")


def host_json_schema() -> JSONSchema:
    return json_schema(HostSpec, "host.schema.json")
