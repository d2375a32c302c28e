"""The API's response models: the OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.core.instance import Status


class ErrorOut(BaseModel):
    detail: str


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    ready: bool
    passes: int


class ProblemOut(BaseModel):
    file: str
    line: int
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"


class MemoryOut(BaseModel):
    """GPU memory of one model per GPU, in MiB: what its files suggested, what its engine uses."""

    estimated_mb: int | None = Field(None, description="estimated from the model's files")
    measured_mb: int | None = Field(None, description="its engine's use at the last measurement")
    peak_mb: int | None = Field(None, description="the most measured for this spec")
    measured_by: str | None = Field(
        None, description="nvml (GPU memory) or rss (resident memory, on declared GPUs)"
    )


class ModelSummary(BaseModel):
    id: str
    name: str | None = None
    status: Status
    desired: bool = Field(description="in the desired state in force")
    enabled: bool | None = None
    priority: int | None = None
    framework: str | None = None
    endpoint: str | None = Field(
        None, description="remote models: the host of the endpoint its requests go to"
    )
    gpus: list[int] = []
    memory_mb: int | None = Field(
        None, description="MiB per GPU: the reservation while it holds GPUs, else the request"
    )
    port: int | None = None
    restarts: int = Field(0, description="restarts after crashes or failed health checks, total")
    uptime_s: float | None = Field(None, description="seconds since its engine started")
    last_error: str | None = None
    given_up: bool = False
    reason: str | None = Field(None, description="what the last pass planned for it, and why")
    memory: MemoryOut | None = None
    replica_of: str | None = Field(
        None, description="the model this row is an instance of, when its spec has replicas > 1"
    )
    activation: Literal["always", "on_demand"] | None = None
    routing: Literal["prefix", "least_outstanding"] | None = Field(
        None, description="how the gateway spreads its requests over its instances"
    )
    demand: Literal["idle", "wanted", "running"] | None = Field(
        None, description="on_demand models: nobody asks / a request waits for it / it runs"
    )


class Placement(BaseModel):
    gpus: list[int]
    memory_mb: int
    port: int | None


class InstanceOut(BaseModel):
    """One engine instance of a model (`replicas: N` runs N: <id>, <id>.1 ... <id>.N-1)."""

    id: str
    status: Status
    port: int | None = None
    gpus: list[int] = []
    restarts: int = 0
    last_error: str | None = None


class ModelDetail(ModelSummary):
    spec: dict[str, Any] | None = Field(None, description="the spec in force, as in git")
    placement: Placement | None = None
    pid: int | None = None
    container_id: str | None = None
    restarts_in_a_row: int = 0
    next_retry_at: float | None = None
    started_at: float | None = None
    last_transition: float | None = None
    logs: list[str] = Field([], description="the engine's last log lines")
    instances: list[InstanceOut] = Field(
        [], description="every instance of the model (one unless its spec has replicas > 1)"
    )


class GpuModelOut(BaseModel):
    id: str
    status: Status
    memory_mb: int


class GpuOut(BaseModel):
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    memory_free_mb: int
    reserved_mb: int = Field(description="reserved by this reconciler's engines")
    declared: bool = Field(description="declared in cluster.yaml (simulated), not read by NVML")
    utilization: float | None = None
    temperature: float | None = None
    power: float | None = None
    models: list[GpuModelOut] = []


class ActionOut(BaseModel):
    action: Literal["start", "stop", "restart", "preempt"]
    model: str
    gpus: list[int]
    memory_mb: int
    port: int | None
    reason: str


class UnschedulableOut(BaseModel):
    model: str
    reason: str


class GpuPlanOut(BaseModel):
    index: int
    memory_mb: int
    used_mb_before: int
    used_mb_after: int


class RemoteModelOut(BaseModel):
    model: str
    host: str = Field(description="the endpoint's host: where its requests and its key go")
    enabled: bool
    serves_for: list[str] = Field(
        description="local models not placed by this plan whose requests it answers"
    )


class PlanOut(BaseModel):
    revision: str | None
    valid: bool
    summary: str
    problems: list[ProblemOut]
    actions: list[ActionOut]
    unschedulable: list[UnschedulableOut]
    gpus: list[GpuPlanOut]
    remote: list[RemoteModelOut] = Field(
        default_factory=list, description="models someone else serves: listed, never placed"
    )


class EventOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int = Field(description="cursor: pass it as `after` to the stream to continue from here")
    time: float
    kind: str
    model: str | None = None
    message: str = ""


class HistoryOut(BaseModel):
    sha: str
    author: str = ""
    time: str | None = None
    subject: str = ""
    message: str = ""
    status: str = Field(description="applied | invalid | superseded | pending")
    current: bool = False
    summary: str = ""
    problems: list[ProblemOut] = []


class RevisionOut(BaseModel):
    sha: str | None = Field(None, description="the applied commit; null: not in git")
    short: str | None = None
    dirty: bool = Field(False, description="uncommitted edits were applied on top of it")
    subject: str = ""
    message: str = ""
    author: str = ""
    time: str | None = None


class StatusOut(BaseModel):
    version: str
    ready: bool
    passes: int
    last_pass_at: float | None
    last_pass_reasons: list[str]
    last_plan: str | None = Field(None, description="summary of the last pass's plan")
    revision: RevisionOut
    valid: bool = Field(description="the desired state as last loaded is valid")
    problems: list[ProblemOut]
    models: dict[str, int] = Field(description="number of models by status")


class AcceptedOut(BaseModel):
    status: Literal["accepted", "ignored", "pong"]
    detail: str


class ModelTrafficOut(BaseModel):
    """One model's requests through the gateway over the window."""

    requests: int = Field(description="requests that ended in the window")
    requests_per_s: float
    p50_ms: float = Field(description="median time from arrival to the response's last byte")
    p95_ms: float
    errors_per_s: float = Field(description="responses with a 5xx status")


class TrafficOut(BaseModel):
    """Recent traffic per model, as the gateway measured it (empty, with a reason, without one)."""

    window_s: int = Field(description="the seconds covered (up to the last 60 whole seconds)")
    models: dict[str, ModelTrafficOut] = Field(description="models with requests in the window")
    reason: str | None = Field(None, description="why there are no figures: no gateway, down")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}
