"""The loop's bulletin: what the last pass left, for readers in other processes (the HTTP API).

After every pass the daemon replaces `loop.json` in the state directory: loop progress, the
pass's plan (the one the loop made and carried out: `GET /api/v1/plan` serves it, and the model
views show each model's reason and demand from it), the memory figures it knows, the engines it
observed, and the state it wrote (as JSON: readers parse it several times faster than the YAML
of state.yaml, which stays the durable record). Readers never ask the loop anything to answer a
request, so no amount of traffic takes CPU from it; the price is that what they show is as old
as the last pass.

A bulletin carries the daemon's run id: one left by an earlier run is not the loop of this one
(its pass count would make a fresh daemon look ready before its first pass).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.desired import Problem
from reconciler.core.estimate import MemoryFigures
from reconciler.core.instance import Status
from reconciler.core.plan import Action, GpuUsage, Outcome, Plan, RemoteModel, Unschedulable
from reconciler.core.secrets import SecretUse
from reconciler.engines.base import Handle
from reconciler.state.directory import atomic_write
from reconciler.state.reading import state_from_document
from reconciler.state.statefile import State, state_document


@dataclass(frozen=True)
class OutcomeDigest:
    """What readers show of a model's outcome in the last plan."""

    reason: str | None = None
    demand: str | None = None


@dataclass(frozen=True)
class PlanDigest:
    valid: bool
    summary: str
    models: Mapping[str, OutcomeDigest] = field(default_factory=dict)


@dataclass(frozen=True)
class Bulletin:
    run_id: str
    pid: int
    passes: int = 0
    last_pass_at: float | None = None
    last_reasons: tuple[str, ...] = ()
    plan: Plan | None = None
    """the last pass's plan, exactly as the loop made it"""
    memory: Mapping[str, MemoryFigures] = field(default_factory=dict)
    handles: Mapping[str, tuple[Handle, ...]] = field(default_factory=dict)
    state: State | None = None


def digest(plan: Plan) -> PlanDigest:
    models = {
        mid: OutcomeDigest(o.reason, o.demand)
        for mid, o in plan.models.items()
        if o.reason is not None or o.demand is not None
    }
    return PlanDigest(plan.valid, plan.summary() if plan.valid else "", models)


def encode(bulletin: Bulletin) -> bytes:
    doc: dict[str, Any] = {
        "run_id": bulletin.run_id,
        "pid": bulletin.pid,
        "passes": bulletin.passes,
        "last_pass_at": bulletin.last_pass_at,
        "last_reasons": list(bulletin.last_reasons),
        "plan": plan_document(bulletin.plan) if bulletin.plan is not None else None,
        "memory": {mid: dataclasses.asdict(f) for mid, f in bulletin.memory.items()},
        "handles": {
            mid: [dataclasses.asdict(h) for h in hs] for mid, hs in bulletin.handles.items()
        },
        "state": state_document(bulletin.state) if bulletin.state is not None else None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> Bulletin:
    """ValueError (or KeyError, TypeError) for what is not a bulletin."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("a bulletin is a JSON object")
    plan = doc.get("plan")
    return Bulletin(
        run_id=str(doc["run_id"]),
        pid=int(doc["pid"]),
        passes=int(doc["passes"]),
        last_pass_at=doc.get("last_pass_at"),
        last_reasons=tuple(doc.get("last_reasons") or ()),
        plan=plan_from_document(plan) if plan is not None else None,
        memory={m: MemoryFigures(**f) for m, f in doc.get("memory", {}).items()},
        handles={
            m: tuple(Handle(**{**h, "gpus": tuple(h["gpus"])}) for h in hs)
            for m, hs in doc.get("handles", {}).items()
        },
        state=state_from_document(doc["state"], "loop.json") if doc.get("state") else None,
    )


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as JSON values, every field (`plan_from_document` reads it back equal)."""
    return {
        "revision": plan.revision,
        "valid": plan.valid,
        "problems": [dataclasses.asdict(p) for p in plan.problems],
        "actions": [dataclasses.asdict(a) for a in plan.actions],
        "unschedulable": [list(u) for u in plan.unschedulable],
        "gpus": [dataclasses.asdict(g) for g in plan.gpus],
        "models": {m: dataclasses.asdict(o) for m, o in plan.models.items()},
        "secrets": [dataclasses.asdict(s) for s in plan.secrets],
        "remote": [dataclasses.asdict(r) for r in plan.remote],
    }


def plan_from_document(doc: Mapping[str, Any]) -> Plan:
    """KeyError or TypeError for what plan_document did not write."""
    return Plan(
        revision=doc["revision"],
        valid=bool(doc["valid"]),
        problems=tuple(Problem(**p) for p in doc["problems"]),
        actions=tuple(Action(**{**a, "gpus": tuple(a["gpus"])}) for a in doc["actions"]),
        unschedulable=tuple(Unschedulable(m, r) for m, r in doc["unschedulable"]),
        gpus=tuple(GpuUsage(**g) for g in doc["gpus"]),
        models={
            m: Outcome(**{**o, "status": Status(o["status"]), "gpus": tuple(o["gpus"])})
            for m, o in doc["models"].items()
        },
        secrets=tuple(SecretUse(**s) for s in doc["secrets"]),
        remote=tuple(
            RemoteModel(**{**r, "serves_for": tuple(r["serves_for"])}) for r in doc["remote"]
        ),
    )


def publish(path: Path, bulletin: Bulletin) -> None:
    """Replace the bulletin atomically. Not fsynced: it is rewritten after every pass and a
    lost one only means readers wait for the next pass (the durable record is the state file)."""
    atomic_write(path, encode(bulletin), durable=False)
