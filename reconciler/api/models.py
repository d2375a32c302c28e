"""GET /api/v1/models and /api/v1/models/{id}: every model desired or running, and one in full."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from reconciler.core.observed import OCCUPYING, Status
from reconciler.core.replicas import group, model_of
from reconciler.core.spec import ModelSpec
from reconciler.loop.bulletin import OutcomeDigest, PlanDigest
from reconciler.state.statefile import ModelState, State

from .readiness import UNAVAILABLE, require_first_pass
from .responses import InstanceOut, MemoryOut, ModelDetail, ModelSummary, Placement, errors
from .views import Views

MODEL_LIST = TypeAdapter(list[ModelSummary])


MemoryOf = Callable[[str, ModelSpec | None, ModelState | None], MemoryOut | None]


def model_summary(
    model_id: str,
    spec: ModelSpec | None,
    state: ModelState | None,
    outcome: OutcomeDigest | None,
    now: float,
    memory: MemoryOf | None = None,
) -> ModelSummary:
    status = state.status if state else Status.stopped
    holds_gpus = state is not None and state.status in OCCUPYING
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
        gpus=list(state.gpus) if holds_gpus else [],
        memory_mb=state.memory_mb if holds_gpus else requested,
        port=state.port if holds_gpus else (spec.port if spec else None),
        restarts=state.restarts_total if state else 0,
        uptime_s=uptime,
        last_error=state.last_error if state else None,
        given_up=bool(state and state.given_up),
        reason=outcome.reason if outcome is not None else None,
        memory=memory(model_id, spec, state) if memory is not None else None,
        replica_of=replica_of(model_id, spec),
        activation=spec.activation if spec else None,
        demand=outcome.demand if outcome is not None else None,
    )


def replica_of(model_id: str, spec: ModelSpec | None) -> str | None:
    """The model an instance belongs to; None for a model of one instance. Instance 0 keeps the
    model's id, so only its siblings' existence (or its own '.') tells."""
    model = model_of(model_id)
    return model if model != model_id or (spec is not None and spec.replicas > 1) else None


def instances_of(
    model: str, specs: Mapping[str, ModelSpec], records: Mapping[str, ModelState]
) -> list[InstanceOut]:
    """Every instance of `model`, desired or still running, instance 0 first."""
    ids = group(i for i in {*specs, *records} if model_of(i) == model).get(model, [])
    found = []
    for iid in ids:
        state = records.get(iid)
        holds_gpus = state is not None and state.status in OCCUPYING
        found.append(
            InstanceOut(
                id=iid,
                status=state.status if state else Status.stopped,
                port=state.port if holds_gpus else None,
                gpus=list(state.gpus) if holds_gpus else [],
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


def router(views: Views) -> APIRouter:
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
