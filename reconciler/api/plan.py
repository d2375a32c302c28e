"""GET /api/v1/plan: the plan of the loop's last pass, as the daemon published it (the bulletin).

The API never plans on its own: a plan made here would lack the gateway's traffic (so it could
differ from the loop's for on-demand models) and would cost a planning pass per request.
`reconciler plan` is the preview that plans (from the working tree or git).
"""

from __future__ import annotations

from fastapi import APIRouter

from reconciler.api.probes import UNAVAILABLE, require_first_pass, unavailable
from reconciler.core.plan import Plan

from .responses import ActionOut, GpuPlanOut, PlanOut, ProblemOut, UnschedulableOut
from .views import Views


def plan_out(plan: Plan) -> PlanOut:
    return PlanOut(
        revision=plan.revision,
        valid=plan.valid,
        summary=plan.summary() if plan.valid else "invalid desired state: nothing changes",
        problems=[
            ProblemOut(
                file=p.file, line=p.line, field=p.field, message=p.message, severity=p.severity
            )
            for p in plan.problems
        ],
        actions=[
            ActionOut(
                action=a.action,
                model=a.model,
                gpus=list(a.gpus),
                memory_mb=a.memory_mb,
                port=a.port,
                reason=a.reason,
            )
            for a in plan.actions
        ],
        unschedulable=[UnschedulableOut(model=m, reason=r) for m, r in plan.unschedulable],
        gpus=[
            GpuPlanOut(
                index=g.index,
                memory_mb=g.memory_mb,
                used_mb_before=g.used_mb_before,
                used_mb_after=g.used_mb_after,
            )
            for g in plan.gpus
        ],
    )


def router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])

    @routes.get("/plan", response_model=PlanOut, responses=UNAVAILABLE)
    def plan() -> PlanOut:
        """The plan the loop's last pass made and carried out."""
        require_first_pass(views)
        loop = views.bulletin()
        if loop is None or loop.plan is None:  # every pass of this run has failed so far
            raise unavailable("the loop has made no plan yet: see the daemon's log")
        return plan_out(loop.plan)

    return routes
