"""GET /api/v1/gpus: the GPU inventory in force and the memory each model holds on each GPU."""

from __future__ import annotations

from fastapi import APIRouter

from reconciler.core.observed import OCCUPYING
from reconciler.gpus import InventoryError, inventory

from .readiness import UNAVAILABLE, require_first_pass, unavailable
from .responses import GpuModelOut, GpuOut
from .views import Views


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


def router(views: Views) -> APIRouter:
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
