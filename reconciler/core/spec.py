"""What operators write: the pydantic models of a model spec and of cluster.yaml.

These models are the single source of the JSON Schemas in `schemas/` (`reconciler schema export`).
Unknown fields are errors everywhere: a typo must never be silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from reconciler.core.gateway_spec import GatewayConfig
from reconciler.core.strict import ENV_NAME_PATTERN, SECRET_NAME_PATTERN, Strict

# Which engine runs the model. The choices are the engine registry's (reconciler.engines): the
# core does not know them; validation checks the name against the catalog it is handed, and the
# checked-in JSON Schema lists them (reconciler.schemas).
Framework = Annotated[
    str, Field(pattern=r"^[a-z][a-z0-9_]*$", description="the engine that runs the model")
]
Scalar = str | int | float | bool
ParameterValue = Scalar | list[Scalar]

# DNS label (RFC 1123): the id becomes a process marker, a container name and a Kubernetes name.
ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
ModelId = Annotated[str, Field(pattern=ID_PATTERN, description="DNS label, unique across files")]
Port = Annotated[int, Field(ge=1, le=65535)]
# A name clients already use for a model (`gpt-4o-mini`, `llama3.1:8b`, `Qwen/Qwen2-7B-Instruct`):
# wider than an id, since it never becomes a process marker, file name or Kubernetes name.
ALIAS_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?$"
ModelAlias = Annotated[
    str, Field(pattern=ALIAS_PATTERN, description="letters, digits, '.', '_', ':', '/', '-'")
]
MAX_REPLICAS = 64
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]
SecretName = Annotated[str, Field(pattern=SECRET_NAME_PATTERN)]
DAY_S = 86400  # probe timers: a larger value is a mistake, and one past C's timeval raises


class HealthCheck(Strict):
    """HTTP probe of a running engine."""

    # Starts with '/': the URL is http://127.0.0.1:PORT + path, and "@host/" would make the
    # address user info and send the probe to another host.
    path: str = Field(
        "/health", pattern=r"^/", description="HTTP path probed for readiness and liveness"
    )
    interval_s: float = Field(10, gt=0, le=DAY_S, description="seconds between probes")
    timeout_s: float = Field(
        5, gt=0, le=DAY_S, description="seconds before one probe counts as failed"
    )
    failure_threshold: int = Field(3, ge=1, description="failed probes in a row before a restart")
    startup_timeout_s: float = Field(600, gt=0, description="seconds allowed to become ready")


class RetryPolicy(Strict):
    """Restarts of a crashed or unhealthy engine: exponential backoff, then `error`."""

    max_retries: int = Field(5, ge=0, description="restarts in a row before giving up")
    backoff_s: float = Field(5, ge=0, description="first delay; doubles each retry")
    max_backoff_s: float = Field(300, ge=0, description="cap of the delay")


class ResourceRequirements(Strict):
    gpu_count: int = Field(1, ge=0, le=64, description="GPUs the engine needs at once (0 = CPU)")
    gpu_memory_mb: int | None = Field(
        None, ge=1, description="MiB per GPU; null = estimated from the model files"
    )


class ModelSpec(Strict):
    """One inference engine: desired-state/models/<id>.yaml."""

    id: ModelId
    name: str | None = Field(None, description="human-readable name")
    framework: Framework
    model_path: str = Field(
        min_length=1,
        description="a file, a directory, a hub id (vllm), or pkg:<python package> for a "
        "model that a Python package ships",
    )
    image: str | None = Field(None, description="docker only: the image to run")
    priority: int = Field(5, ge=1, le=10, description="1..10, 10 = most important")
    gpu_devices: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="pin to these GPU indexes; empty = scheduler chooses"
    )
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict,
        description="engine flags: `key: value` becomes --key value, true becomes --key, "
        "a list repeats the flag",
    )
    resource_requirements: ResourceRequirements = Field(default_factory=ResourceRequirements)
    port: Port | None = Field(None, description="null = allocated from cluster.yaml port_range")
    env: dict[EnvName, str] = Field(
        default_factory=dict,
        description="extra environment variables; not those an engine reads as its listen "
        "address or port (HOST, PORT, ...): the host decides where engines listen",
        # pydantic writes key patterns as patternProperties, which let other keys through
        json_schema_extra={
            "propertyNames": {"pattern": ENV_NAME_PATTERN},
            "additionalProperties": {"type": "string"},
        },
    )
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    fallback: ModelId | None = Field(
        None, description="id of a lighter model to run while this one cannot be placed"
    )
    enabled: bool = True
    aliases: list[ModelAlias] = Field(
        default_factory=list,
        description="further names clients may send as `model` to the gateway; unique across "
        "files, never another model's id",
    )
    replicas: int = Field(
        1,
        ge=1,
        le=MAX_REPLICAS,
        description="engine instances of this spec, each with its own port and GPUs; instance "
        "0 is <id>, the others <id>.1 ... <id>.N-1",
    )
    activation: Literal["always", "on_demand"] = Field(
        "always", description="on_demand: started by its first request through the gateway"
    )
    idle_timeout_s: Annotated[float, Field(gt=0, le=DAY_S * 365)] | None = Field(
        None, description="on_demand: stop after this long idle; null = until evicted"
    )

    def spec_hash(self) -> str:
        """Hash of the fields that shape the engine: a change of any of them restarts it.

        Priority, name, fallback, enabled, aliases, replicas, activation, idle timeout, health
        and retry settings, the memory reservation and the GPU pin are deliberately left out:
        changing them must not restart a running engine (a pin the current placement violates
        is handled by the planner; more or fewer replicas start or stop instances, never
        restart the others).
        """
        shaping = {
            "framework": self.framework,
            "model_path": self.model_path,
            "image": self.image,
            "parameters": self.parameters,
            "gpu_count": self.resource_requirements.gpu_count,
            "port": self.port,
            "env": self.env,
        }
        blob = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


class ClusterSpec(Strict):
    """desired-state/cluster.yaml: the host as a whole."""

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


def model_json_schema() -> dict:
    return _schema(ModelSpec, "model.schema.json")


def cluster_json_schema() -> dict:
    return _schema(ClusterSpec, "cluster.schema.json")


def _schema(model: type[BaseModel], name: str) -> dict:
    schema = model.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": name,
        **schema,
    }
