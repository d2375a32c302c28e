"""GET what runs and how the loop is doing: /api/v1/models (every model desired or running) and
/models/{id}, /gpus (the inventory and what each model holds), /traffic (each model's last
minute, as the gateway saw it), /status and /history (loop progress, revision, commits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx
from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from reconciler import __version__
from reconciler.api.probes import UNAVAILABLE, require_first_pass, unavailable
from reconciler.api.responses import (
    GpuModelOut,
    GpuOut,
    HistoryOut,
    InstanceOut,
    MemoryOut,
    ModelDetail,
    ModelSummary,
    Placement,
    ProblemOut,
    StatusOut,
    TrafficOut,
    errors,
)
from reconciler.api.views import Memo, Views
from reconciler.core.engine_args import endpoint_host
from reconciler.core.instance import OCCUPYING, InstanceRecord, Status
from reconciler.core.serving import group, model_of
from reconciler.core.spec import ModelSpec
from reconciler.gpus import InventoryError, inventory
from reconciler.loop.bulletin import OutcomeDigest, PlanDigest
from reconciler.state.statefile import State

MODEL_LIST = TypeAdapter(list[ModelSummary])


MemoryOf = Callable[[str, ModelSpec | None, InstanceRecord | None], MemoryOut | None]


def model_summary(
    model_id: str,
    spec: ModelSpec | None,
    state: InstanceRecord | None,
    outcome: OutcomeDigest | None,
    now: float,
    memory: MemoryOf | None = None,
) -> ModelSummary:
    status = state.status if state else Status.stopped
    holding = state if state is not None and state.status in OCCUPYING else None
    requested = spec.resource_requirements.gpu_memory_mb if spec else None
    uptime = None
    if state and state.started_at and status in (Status.starting, Status.running):
        uptime = round(max(0.0, now - state.started_at), 1)
    return ModelSummary(
        id=model_id,
        name=spec.name if spec else None,
        status=status,
        desired=spec is not None,
        enabled=spec.enabled if spec else None,
        priority=spec.priority if spec else None,
        framework=spec.framework if spec else None,
        endpoint=endpoint_host(spec.endpoint) if spec and spec.endpoint else None,
        gpus=list(holding.gpus) if holding else [],
        memory_mb=holding.memory_mb if holding else requested,
        port=holding.port if holding else (spec.port if spec else None),
        restarts=state.restarts_total if state else 0,
        uptime_s=uptime,
        last_error=state.last_error if state else None,
        given_up=bool(state and state.given_up),
        reason=outcome.reason if outcome is not None else None,
        memory=memory(model_id, spec, state) if memory is not None else None,
        replica_of=replica_of(model_id, spec),
        activation=spec.activation if spec else None,
        routing=spec.routing if spec else None,
        demand=outcome.demand if outcome is not None else None,
    )


def replica_of(model_id: str, spec: ModelSpec | None) -> str | None:
    """The model an instance belongs to; None for a model of one instance. Instance 0 keeps the
    model's id, so only its siblings' existence (or its own '.') tells."""
    model = model_of(model_id)
    return model if model != model_id or (spec is not None and spec.replicas > 1) else None


def instances_of(
    model: str, specs: Mapping[str, ModelSpec], records: Mapping[str, InstanceRecord]
) -> list[InstanceOut]:
    """Every instance of `model`, desired or still running, instance 0 first."""
    ids = group(i for i in {*specs, *records} if model_of(i) == model).get(model, [])
    found = []
    for iid in ids:
        state = records.get(iid)
        holding = state if state is not None and state.status in OCCUPYING else None
        found.append(
            InstanceOut(
                id=iid,
                status=state.status if state else Status.stopped,
                port=holding.port if holding else None,
                gpus=list(holding.gpus) if holding else [],
                restarts=state.restarts_total if state else 0,
                last_error=state.last_error if state else None,
            )
        )
    return found


def written_spec(model_id: str, specs: Mapping[str, ModelSpec]) -> ModelSpec | None:
    """The spec as written in git: instance 0's, with the replicas the loop expanded it into."""
    spec = specs.get(model_of(model_id))
    if spec is None:
        return specs.get(model_id)
    count = sum(1 for i in specs if model_of(i) == spec.id)
    return spec if count == spec.replicas else spec.model_copy(update={"replicas": count})


def list_models(views: Views) -> tuple[list[ModelSummary], bytes]:
    """Every model, and the same as JSON. Built once per change of what it is made of (and per
    second, for uptimes), not per request: a dashboard or a scraper polling a host of hundreds
    of models must not take CPU from the loop."""
    specs, state, plan = views.specs(), views.state(), views.last_plan()
    now = time.time()
    key = (id(specs), id(state), id(plan), int(now))
    return views.models_memo.get(key, lambda: _build_models(specs, state, plan, now, views.memory))


def _build_models(
    specs: Mapping[str, ModelSpec],
    state: State | None,
    plan: PlanDigest | None,
    now: float,
    memory: MemoryOf,
) -> tuple[list[ModelSummary], bytes]:
    models = state.models if state else {}
    outcomes = plan.models if plan is not None else {}
    listed = [
        model_summary(mid, specs.get(mid), models.get(mid), outcomes.get(mid), now, memory)
        for mid in sorted(set(specs) | set(models))
    ]
    return listed, MODEL_LIST.dump_json(listed)


def model_detail(views: Views, model_id: str) -> ModelDetail | None:
    spec = views.specs().get(model_id)
    state = views.state()
    model = state.models.get(model_id) if state else None
    if spec is None and model is None:
        return None
    plan = views.last_plan()
    outcome = plan.models.get(model_id) if plan is not None else None
    summary = model_summary(model_id, spec, model, outcome, time.time(), views.memory)
    written = written_spec(model_id, views.specs())
    placement = None
    if model is not None and model.status in OCCUPYING:
        placement = Placement(gpus=list(model.gpus), memory_mb=model.memory_mb, port=model.port)
    return ModelDetail(
        **summary.model_dump(),
        spec=written.model_dump(mode="json") if written else None,
        placement=placement,
        pid=model.pid if model else None,
        container_id=model.container_id if model else None,
        restarts_in_a_row=model.restarts if model else 0,
        next_retry_at=model.next_retry_at if model else None,
        started_at=model.started_at if model else None,
        last_transition=model.last_transition if model else None,
        logs=views.logs(model_id, model),
        instances=instances_of(model_of(model_id), views.specs(), state.models if state else {}),
    )


def models_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])

    def ready_models() -> bytes:
        require_first_pass(views)
        return list_models(views)[1]

    @routes.get("/models", response_model=list[ModelSummary], responses=UNAVAILABLE)
    async def models() -> Response:
        """Every model desired or running, with its status (503 before the first pass)."""
        # pre-serialized, in a worker thread: the state file may have to be parsed
        body = await run_in_threadpool(ready_models)
        return Response(body, media_type="application/json")

    @routes.get(
        "/models/{model_id}", response_model=ModelDetail, responses={**errors(404), **UNAVAILABLE}
    )
    def model(model_id: str = PathParam(max_length=253)) -> ModelDetail:
        """One model: spec in force, status, placement, restarts, last error, recent logs."""
        require_first_pass(views)
        detail = model_detail(views, model_id)
        if detail is None:
            raise HTTPException(404, f"no model {model_id!r} is desired or running")
        return detail

    return routes


def list_gpus(views: Views) -> list[GpuOut]:
    """The GPU inventory in force, with the memory our engines hold on each GPU."""
    cluster = views.cluster()
    if cluster is None:  # no valid desired state yet: nothing says which GPUs to use
        return []
    state = views.state()
    models = state.models.values() if state else []
    holding = [m for m in models if m.status in OCCUPYING]
    pids = [m.pid for m in holding if m.pid]
    declared = isinstance(cluster.gpus, list)
    gpus = views.gpu_memo.get((id(cluster), tuple(pids)), lambda: inventory(cluster, pids))
    out = []
    for gpu in gpus:
        mine = [m for m in holding if gpu.device_id in m.gpus]
        reserved = sum(m.memory_mb for m in mine)
        used = reserved if declared else gpu.memory_used
        out.append(
            GpuOut(
                index=gpu.device_id,
                name=gpu.name,
                memory_total_mb=gpu.memory_total,
                memory_used_mb=used,
                memory_free_mb=max(0, gpu.memory_total - used),
                reserved_mb=reserved,
                declared=declared,
                utilization=gpu.utilization,
                temperature=gpu.temperature,
                power=gpu.power,
                models=[
                    GpuModelOut(id=m.id, status=m.status, memory_mb=m.memory_mb)
                    for m in sorted(mine, key=lambda m: m.id)
                ],
            )
        )
    return out


def gpus_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])

    @routes.get("/gpus", response_model=list[GpuOut], responses=UNAVAILABLE)
    def gpus() -> list[GpuOut]:
        """The GPU inventory in force and the memory each model holds on each GPU."""
        require_first_pass(views)
        try:
            return list_gpus(views)
        except InventoryError as exc:
            raise unavailable(f"GPU inventory unavailable: {exc}") from exc

    return routes


FETCH_TIMEOUT_S = 1.0
"""a gateway slower than this to say how it is doing is reported as not answering"""
FRESH_S = 1.0
"""dashboards poll: however many there are, the gateway is asked at most once a second"""


def fetch_traffic(gateway_url: str | None) -> TrafficOut:
    """The gateway's report, or an empty one saying why there is none."""
    if gateway_url is None:
        return TrafficOut(window_s=0, models={}, reason="no gateway (reconciler run --no-gateway)")
    try:
        response = httpx.get(f"{gateway_url}/internal/traffic", timeout=FETCH_TIMEOUT_S)
        response.raise_for_status()
        return TrafficOut.model_validate(response.json())
    except (httpx.HTTPError, ValueError, ValidationError) as exc:
        reason = f"the gateway on {gateway_url} does not answer: {type(exc).__name__} {exc}"
        return TrafficOut(window_s=0, models={}, reason=reason.strip())


def traffic_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])
    memo: Memo[TrafficOut] = Memo(FRESH_S)
    gateway_url = views.settings.gateway_url

    @routes.get("/traffic", response_model=TrafficOut)
    def traffic() -> TrafficOut:
        """Requests per second, p50/p95 latency and server errors per second of each model
        over the last minute, as measured by the gateway. Never an error: without a gateway,
        or while it does not answer, the figures are empty and `reason` says why."""
        return memo.get(None, lambda: fetch_traffic(gateway_url))

    return routes


def status_out(views: Views) -> StatusOut:
    state = views.state()
    counts: dict[str, int] = {}
    for model in list_models(views)[0]:
        counts[model.status.value] = counts.get(model.status.value, 0) + 1
    problems = [ProblemOut(**p) for p in (state.problems if state else [])]
    loop = views.bulletin()
    plan = loop.plan if loop is not None else None
    return StatusOut(
        version=__version__,
        ready=loop is not None and loop.passes > 0,
        passes=loop.passes if loop is not None else 0,
        last_pass_at=loop.last_pass_at if loop is not None else None,
        last_pass_reasons=list(loop.last_reasons) if loop is not None else [],
        last_plan=plan.summary() if plan is not None and plan.valid else None,
        revision=views.revision(state),
        valid=not problems,  # from the same record as `problems`, so that the two agree
        problems=problems,
        models=counts,
    )


def status_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])

    @routes.get("/status", response_model=StatusOut, responses=UNAVAILABLE)
    def status() -> StatusOut:
        """Loop progress, the applied revision and its commit, validation problems (503 before
        the first pass: /readyz tells the progress until then)."""
        require_first_pass(views)
        return status_out(views)

    @routes.get("/history", response_model=list[HistoryOut])
    def history(limit: int = Query(20, ge=1, le=200)) -> list[dict[str, object]]:
        """Commits that changed desired state, newest first, and what became of each here."""
        return views.history(limit)

    return routes
