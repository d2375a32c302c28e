"""What operators write: the pydantic models of a model spec and of cluster.yaml.

These models are the single source of the JSON Schemas in `schemas/` (`reconciler schema export`).
Unknown fields are errors everywhere: a typo must never be silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Framework = Literal["llama_cpp", "vllm", "docker"]
Scalar = str | int | float | bool
ParameterValue = Scalar | list[Scalar]

# DNS label (RFC 1123): the id becomes a process marker, a container name and a Kubernetes name.
ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
ModelId = Annotated[str, Field(pattern=ID_PATTERN, description="DNS label, unique across files")]
Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheck(Strict):
    """HTTP probe of a running engine."""

    path: str = Field("/health", description="HTTP path probed for readiness and liveness")
    interval_s: float = Field(10, gt=0, description="seconds between probes")
    timeout_s: float = Field(5, gt=0, description="seconds before one probe counts as failed")
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
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    fallback: ModelId | None = Field(
        None, description="id of a lighter model to run while this one cannot be placed"
    )
    enabled: bool = True

    def spec_hash(self) -> str:
        """Hash of the fields that shape the engine: a change of any of them restarts it.

        Priority, name, fallback, enabled, health and retry settings, the memory reservation and
        the GPU pin are deliberately left out: changing them must not restart a running engine
        (a pin the current placement violates is handled by the planner).
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
