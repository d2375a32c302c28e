"""The loop's bulletin: what the last pass left, for readers in other processes (the HTTP API).

After every pass the daemon replaces `loop.json` in the state directory: loop progress, a digest
of the plan (each model's reason and demand), the memory figures it knows, the engines it
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

from reconciler.core.memory import MemoryFigures
from reconciler.core.plan import Plan
from reconciler.engines.base import Handle
from reconciler.state.files import atomic_write
from reconciler.state.statefile import State, state_document, state_from_document


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
    plan: PlanDigest | None = None
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
        "plan": None,
        "memory": {mid: dataclasses.asdict(f) for mid, f in bulletin.memory.items()},
        "handles": {
            mid: [dataclasses.asdict(h) for h in hs] for mid, hs in bulletin.handles.items()
        },
        "state": state_document(bulletin.state) if bulletin.state is not None else None,
    }
    if bulletin.plan is not None:
        doc["plan"] = {
            "valid": bulletin.plan.valid,
            "summary": bulletin.plan.summary,
            "models": {m: dataclasses.asdict(o) for m, o in bulletin.plan.models.items()},
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
        plan=None
        if plan is None
        else PlanDigest(
            bool(plan["valid"]),
            str(plan["summary"]),
            {m: OutcomeDigest(**o) for m, o in plan["models"].items()},
        ),
        memory={m: MemoryFigures(**f) for m, f in doc.get("memory", {}).items()},
        handles={
            m: tuple(Handle(**{**h, "gpus": tuple(h["gpus"])}) for h in hs)
            for m, hs in doc.get("handles", {}).items()
        },
        state=state_from_document(doc["state"], "loop.json") if doc.get("state") else None,
    )


def publish(path: Path, bulletin: Bulletin) -> None:
    """Replace the bulletin atomically. Not fsynced: it is rewritten after every pass and a
    lost one only means readers wait for the next pass (the durable record is the state file)."""
    atomic_write(path, encode(bulletin), durable=False)
