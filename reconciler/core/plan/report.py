"""The plan for people and programs: JSON (byte-stable), terminal text, and markdown."""

from __future__ import annotations

import json
from collections.abc import Sequence

from reconciler.core.desired import Problem
from reconciler.core.plan.actions import Action, Outcome, Plan, RemoteModel, gpu_names


def render_json(plan: Plan) -> str:
    """The plan as JSON: stable keys and order, byte-identical for the same plan."""
    return json.dumps(json_document(plan), indent=2, sort_keys=True, ensure_ascii=False)


def json_document(plan: Plan) -> dict[str, object]:
    """The plan as plain values (render_json's document)."""
    document: dict[str, object] = {
        "revision": plan.revision,
        "valid": plan.valid,
        "problems": [p.to_dict() for p in plan.problems],
        "actions": [
            {
                "action": a.action,
                "model": a.model,
                "gpus": list(a.gpus),
                "memory_mb": a.memory_mb,
                "port": a.port,
                "reason": a.reason,
            }
            for a in plan.actions
        ],
        "unschedulable": [{"model": m, "reason": r} for m, r in plan.unschedulable],
        "gpus": [
            {"index": g.index, "memory_mb": g.memory_mb, "used_mb_after": g.used_mb_after}
            for g in plan.gpus
        ],
    }
    if on_demand := _on_demand(plan):
        document["on_demand"] = [
            {"model": m, "demand": o.demand, "reason": o.reason} for m, o in on_demand
        ]
    if plan.secrets:
        document["secrets"] = [use.to_dict() for use in plan.secrets]
    if plan.remote:
        document["remote"] = [model.to_dict() for model in plan.remote]
    return document


def render_text(plan: Plan) -> str:
    """The plan for a terminal."""
    revision = plan.revision or "the working tree"
    if not plan.valid:
        lines = [
            f"Desired state at {revision} is invalid: nothing changes "
            "(the last valid desired state stays in force).",
        ]
        return "\n".join([*lines, *(f"  {p}" for p in plan.problems)])
    return "\n".join([f"Plan for {revision}: {plan.summary()}", *text_sections(plan)])


def text_sections(plan: Plan) -> list[str]:
    """A valid plan's lines under its title: actions, then each section it has."""
    lines = []
    if not plan.actions:
        lines.append("  nothing to do: what runs matches the desired state")
    width = max((len(a.model) for a in plan.actions), default=0)
    for i, a in enumerate(plan.actions, 1):
        where = f"{gpu_names(a.gpus)}, {a.memory_mb} MiB" if a.gpus else "the CPU"
        port = f", port {a.port}" if a.port is not None else ""
        lines.append(f"  {i}. {a.action:<8} {a.model:<{width}}  [{where}{port}]  {a.reason}")
    if plan.unschedulable:
        lines.append("Unschedulable:")
        lines.extend(f"  {m}: {r}" for m, r in plan.unschedulable)
    if on_demand := _on_demand(plan):
        lines.append("On demand (idle / wanted / running):")
        lines.extend(f"  {m}: {o.demand}: {o.reason or ''}" for m, o in on_demand)
    if plan.remote:
        lines.append("Remote models (served elsewhere, never placed):")
        lines.extend(f"  {model}" for model in plan.remote)
    if plan.gpus:
        lines.append("GPU memory (MiB, before -> after, of capacity):")
        lines.extend(
            f"  GPU {g.index}: {g.used_mb_before} -> {g.used_mb_after} of {g.memory_mb}"
            for g in plan.gpus
        )
    if plan.secrets:
        lines.append("Secrets (where git sends each):")
        lines.extend(f"  {use}" for use in plan.secrets)
    if plan.problems:
        lines.append("Problems:")
        lines.extend(f"  {p}" for p in plan.problems)
    return lines


def render_markdown(plan: Plan, spec_diff: str | None = None) -> str:
    """The plan as a pull-request comment."""
    revision = f"`{plan.revision}`" if plan.revision else "the working tree"
    out = [f"### Reconciler plan for {revision}", ""]
    if not plan.valid:
        out += [
            "**Invalid desired state: nothing changes** (the last valid state stays in force).",
            "",
        ]
    else:
        out += [f"**{plan.summary()}**", ""]
        out += markdown_sections(plan)
    out += markdown_tail(plan.problems, spec_diff)
    return "\n".join(out).rstrip("\n") + "\n"


def markdown_sections(plan: Plan, heading: str = "####") -> list[str]:
    """A valid plan's markdown under its summary: actions, then each section it has."""
    out = _markdown_actions(plan.actions)
    if plan.unschedulable:
        out += [f"{heading} Unschedulable", "", "| Model | Reason |", "|---|---|"]
        out += [f"| `{m}` | {cell(r)} |" for m, r in plan.unschedulable] + [""]
    if on_demand := _on_demand(plan):
        out += [f"{heading} On demand", "", "| Model | Demand | Note |", "|---|---|---|"]
        out += [f"| `{m}` | {o.demand} | {cell(o.reason or '')} |" for m, o in on_demand]
        out += [""]
    if plan.remote:
        out += [f"{heading} Remote models (never placed)", "", "| Model | Endpoint host | Note |"]
        out += ["|---|---|---|"]
        out += [f"| `{r.id}` | {cell(r.host)} | {cell(_remote_note(r))} |" for r in plan.remote]
        out += [""]
    if plan.gpus:
        out += [
            f"{heading} GPU memory",
            "",
            "| GPU | Capacity | Before | After |",
            "|--:|--:|--:|--:|",
        ]
        out += [
            f"| {g.index} | {g.memory_mb} MiB | {g.used_mb_before} MiB | {g.used_mb_after} MiB |"
            for g in plan.gpus
        ] + [""]
    if plan.secrets:
        out += [f"{heading} Secrets", "", "| Secret | Goes to | Use | |", "|---|---|---|---|"]
        out += [
            f"| `{u.name}` | {cell(u.destination)} | {cell(u.use)} | {'**new**' if u.new else ''} |"
            for u in plan.secrets
        ] + [""]
    return out


def markdown_tail(problems: Sequence[Problem], spec_diff: str | None) -> list[str]:
    """The validation problems and the folded spec diff that end a plan's comment."""
    out = []
    if problems:
        out += ["#### Validation problems", ""]
        out += [
            f"- `{p.location()}` {p.severity}"
            + (f" `{p.field}`" if p.field else "")
            + f": {cell(p.message)}"
            for p in problems
        ] + [""]
    if spec_diff:
        fence = "```"
        while fence in spec_diff:
            fence += "`"
        out += ["<details><summary>Spec diff</summary>", "", f"{fence}diff", spec_diff.rstrip("\n")]
        out += [fence, "", "</details>", ""]
    return out


def _markdown_actions(actions: Sequence[Action]) -> list[str]:
    if not actions:
        return ["Nothing to do: what runs matches the desired state.", ""]
    rows = [
        "| # | Action | Model | GPUs | Memory | Port | Reason |",
        "|--:|---|---|---|--:|--:|---|",
    ]
    for i, a in enumerate(actions, 1):
        gpus = ", ".join(map(str, a.gpus)) or "CPU"
        memory = f"{a.memory_mb} MiB" if a.gpus else ""
        port = "" if a.port is None else str(a.port)
        rows.append(
            f"| {i} | {a.action} | `{a.model}` | {gpus} | {memory} | {port} | {cell(a.reason)} |"
        )
    return [*rows, ""]


def _remote_note(model: RemoteModel) -> str:
    notes = [] if model.enabled else ["disabled"]
    if model.serves_for:
        notes.append(f"serves {', '.join(model.serves_for)} while not placed")
    return "; ".join(notes)


def _on_demand(plan: Plan) -> list[tuple[str, Outcome]]:
    return [(m, o) for m, o in plan.models.items() if o.demand is not None]


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
