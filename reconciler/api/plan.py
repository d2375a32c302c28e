"""GET /api/v1/plan: what the next pass would do now (a dry run: nothing is changed)."""

from __future__ import annotations

from fastapi import APIRouter

from reconciler.core.plan import Plan
from reconciler.gpus import InventoryError
from reconciler.loop.reconcile import Reconciler, Settings

from .readiness import UNAVAILABLE, require_first_pass, unavailable
from .responses import ActionOut, GpuPlanOut, PlanOut, ProblemOut, UnschedulableOut
from .views import Views


def preview_plan(views: Views) -> Plan:
    """What the next pass would do: a dry run in a Reconciler of its own, like `reconciler
    plan` on this host (it reads the memory learned so far afresh)."""
    preview = Reconciler(Settings(views.desired_dir, views.state_dir), engines=views.engines())
    return preview.pass_once(dry_run=True).plan


def plan_out(plan: Plan) -> PlanOut:
    return PlanOut(
        revision=plan.revision,
        valid=plan.valid,
        summary=plan.summary() if plan.valid else "invalid desired state: nothing changes",
        problems=[ProblemOut(**p.to_dict()) for p in plan.problems],
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
        """What the next pass would do now (a dry run: nothing is changed)."""
        require_first_pass(views)
        try:
            result = views.plan_memo.get(None, lambda: preview_plan(views))
        except InventoryError as exc:
            raise unavailable(f"GPU inventory unavailable: {exc}") from exc
        return plan_out(result)

    return routes
