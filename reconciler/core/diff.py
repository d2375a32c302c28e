"""Spec-level diff between two desired states. Pure.

A pull-request reviewer wants "qwen2-7b: priority 8 -> 9, parameters.ctx-size 4096 -> 8192", not a
YAML text diff: this module compares the validated models field by field.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.desired import DesiredState


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: object
    """a JSON value as the spec dumps it; None where the field is absent"""
    after: object


@dataclass(frozen=True)
class ModelChange:
    model: str
    kind: str
    """added | removed | changed"""
    fields: tuple[FieldChange, ...] = ()


def diff_desired(base: DesiredState | None, head: DesiredState | None) -> list[ModelChange]:
    before = base.models if base else {}
    after = head.models if head else {}
    changes = []
    for model_id in sorted(set(before) | set(after)):
        if model_id not in before:
            changes.append(ModelChange(model_id, "added"))
        elif model_id not in after:
            changes.append(ModelChange(model_id, "removed"))
        else:
            old = _flatten(before[model_id].model_dump(mode="json"))
            new = _flatten(after[model_id].model_dump(mode="json"))
            fields = tuple(
                FieldChange(k, old.get(k), new.get(k))
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            )
            if fields:
                changes.append(ModelChange(model_id, "changed", fields))
    return changes


def diff_cluster(base: DesiredState | None, head: DesiredState | None) -> list[FieldChange]:
    old = _flatten(base.cluster.model_dump(mode="json")) if base else {}
    new = _flatten(head.cluster.model_dump(mode="json")) if head else {}
    return [
        FieldChange(k, old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def render_diff(changes: list[ModelChange], cluster: list[FieldChange] | None = None) -> str:
    """One line per model (and per changed field); empty string when nothing changed."""
    lines = []
    for setting in cluster or []:
        lines.append(
            f"~ cluster.{setting.field}: {_show(setting.before)} -> {_show(setting.after)}"
        )
    for change in changes:
        mark = {"added": "+", "removed": "-", "changed": "~"}[change.kind]
        lines.append(f"{mark} {change.model} ({change.kind})")
        for f in change.fields:
            lines.append(f"    {f.field}: {_show(f.before)} -> {_show(f.after)}")
    return "\n".join(lines)


def summary(changes: list[ModelChange]) -> str:
    """A one-line summary of a change set: "added a; removed b; changed c (priority)"."""
    parts = []
    for kind in ("added", "removed", "changed"):
        items = [c for c in changes if c.kind == kind]
        if not items:
            continue
        names = []
        for c in items:
            if kind == "changed":
                fields = sorted({f.field.split(".")[0] for f in c.fields})
                names.append(f"{c.model} ({', '.join(fields)})")
            else:
                names.append(c.model)
        parts.append(f"{kind} {', '.join(names)}")
    return "; ".join(parts) or "no model changes"


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        if not value and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: value}


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
