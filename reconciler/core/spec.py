"""What operators write for one model: the pydantic model of a model spec (cluster.yaml's is
reconciler.core.cluster), and the strict base both share.

These models are the single source of the JSON Schemas in `schemas/` (`reconciler schema export`).
Unknown fields are errors everywhere: a typo must never be silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""What a POSIX shell and every engine accept as an environment variable name."""

SECRET_NAME_PATTERN = r"^RECONCILER_SECRET_[A-Z0-9_]+$"
"""The only variables git may name as a credential (reconciler.core.secrets says why)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Which engine runs the model. The choices are the engine registry's (reconciler.engines): the
# core does not know them; validation checks the name against the catalog it is handed, and the
# checked-in JSON Schema lists them (reconciler.cli.validate).
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
# No user info, query or fragment: the endpoint is a base URL, and "user@" could hide a
# different host than the one an operator binds a key to. The rest is checked by validate.
ENDPOINT_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
EndpointURL = Annotated[
    str, Field(pattern=ENDPOINT_PATTERN, max_length=2048, description="http(s) base URL")
]
REMOTE_FRAMEWORK = "remote"
"""The framework of a model someone else serves (reconciler.engines.remote describes it)."""
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


REMOTE_HEALTH_CHECK = {"path": "/models", "interval_s": 30, "timeout_s": 5}
"""A remote model's probe when its spec sets none: GET <endpoint>/models."""


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


class Overflow(Strict):
    """Cloud bursting: where a local model's requests go instead of queueing past a depth."""

    model: ModelId = Field(description="the model that takes the overflow (often remote)")
    queue_over: int = Field(
        ge=0, description="requests already waiting for this model before one overflows"
    )


class ModelSpec(Strict):
    """One model: desired-state/models/<id>.yaml. An engine this host runs, or (framework
    remote) an endpoint someone else serves."""

    # model_path is required of every framework but remote; written into the schema so that
    # editors and `validate` say so at once (a missing framework counts as an engine).
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "properties": {"framework": {"const": REMOTE_FRAMEWORK}},
                "required": ["framework"],
            },
            "else": {
                "required": ["model_path"],
                "properties": {"model_path": {"minLength": 1}},
            },
        }
    )

    id: ModelId
    name: str | None = Field(None, description="human-readable name")
    framework: Framework
    # Typed str, not str | None: every engine reads it, and validate refuses an engine spec
    # without it (file:line); "" stands only for a remote model, which has no files (no
    # min_length here: a remote spec's dump, in the state directory, must read back).
    model_path: str = Field(
        "",
        description="a file, a directory, a hub id (vllm), or pkg:<python package> for a "
        "model that a Python package ships; required by every framework but remote",
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
    endpoint: EndpointURL | None = Field(
        None,
        description="remote only: the OpenAI-compatible base URL the gateway relays to, "
        "e.g. https://api.example.com/v1",
    )
    upstream_model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00-\x1f]+$",
        description="remote only: the model name the endpoint knows; null = the id",
    )
    api_key_env: SecretName | None = Field(
        None,
        description="remote only: the RECONCILER_SECRET_* variable holding the endpoint's "
        "key, sent as a Bearer token to hosts its _HOSTS variable lists",
    )
    max_concurrency: int | None = Field(
        None, ge=1, description="remote only: requests in flight to it at most; more queue"
    )
    overflow: Overflow | None = Field(
        None,
        description="local models: requests beyond queue_over waiting go to this model",
    )
    hosts: list[ModelId] | None = Field(
        None,
        min_length=1,
        description="where it runs, once the repository declares hosts/: each listed host runs "
        "it (with its replicas there); a remote model lists none (every host's gateway reaches "
        "its endpoint itself)",
    )
    routing: Literal["prefix", "least_outstanding"] = Field(
        "prefix",
        description="how the gateway spreads requests over the model's instances: prefix sends "
        "a prompt's prefix to the instance that served it last (its cache holds it) unless "
        "that one is overloaded; least_outstanding to the least loaded",
    )

    @model_validator(mode="before")
    @classmethod
    def _remote_probe_default(cls, data: object) -> object:
        # An endpoint is probed at its /models (relative to the endpoint), less often than a
        # local engine: a hosted API is someone else's, and a probe may count against a quota.
        if (
            isinstance(data, dict)
            and data.get("framework") == REMOTE_FRAMEWORK
            and "health_check" not in data
        ):
            return {**data, "health_check": REMOTE_HEALTH_CHECK}
        return data

    @model_validator(mode="after")
    def _engine_has_files(self) -> ModelSpec:
        # what the schema's if/else says, so that pydantic accepts no less than the schema
        if not self.is_remote and not self.model_path:
            raise ValueError("an engine needs a model_path")
        return self

    @property
    def is_remote(self) -> bool:
        """An endpoint someone else serves: no process, GPU or port of this host."""
        return self.framework == REMOTE_FRAMEWORK

    @property
    def served_upstream(self) -> str:
        """The name a remote endpoint knows the model by."""
        return self.upstream_model or self.id

    def spec_hash(self) -> str:
        """Hash of the fields that shape the engine: a change of any of them restarts it.

        Priority, name, fallback, enabled, aliases, replicas, activation, idle timeout, health
        and retry settings, routing, hosts, the memory reservation and the GPU pin are
        deliberately left out: changing them must not restart a running engine (a pin the
        current placement violates is handled by the planner; more or fewer replicas start or
        stop instances, never restart the others).
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
        if self.is_remote:  # only then: engines' hashes (and so their engines) stay as they were
            shaping |= {"endpoint": self.endpoint, "upstream_model": self.served_upstream}
        blob = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


JSONSchema = dict[str, Any]
"""A JSON Schema document as pydantic makes it: JSON Schema's shape, which no type here holds."""


def model_json_schema() -> JSONSchema:
    return json_schema(ModelSpec, "model.schema.json")


def json_schema(model: type[BaseModel], name: str) -> JSONSchema:
    schema = model.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": name,
        **schema,
    }
