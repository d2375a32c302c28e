"""`reconciler plan`: what a pass would do (starts, stops, restarts, preemptions) and why;
with --base/--head, the review of a pull request."""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli.loading import read_desired, validate_here
from reconciler.core.desired import DesiredState
from reconciler.core.diff import diff_cluster, diff_desired, render_diff
from reconciler.core.instance import InstanceRecord
from reconciler.core.plan import (
    Plan,
    converged_observed,
    invalid_plan,
    render_json,
    render_markdown,
    render_text,
)
from reconciler.core.secrets import secret_uses
from reconciler.gpus import InventoryError, inventory
from reconciler.loop.memory import read_learned
from reconciler.loop.planning import Requirements, plan_desired
from reconciler.state.reading import ObservedFileError, read_observed

from . import command_app
from .options import DEFAULT_DIR, DirArg, RevOpt, StateDirOpt, err, resolve_state_dir, usage_error

app = command_app()

Observed = dict[str, InstanceRecord]


class PlanFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


def _observed_from_file(path: Path) -> Observed:
    try:
        return read_observed(path)
    except (OSError, ObservedFileError) as exc:
        raise usage_error(f"{path}: {exc}") from exc


def _plan_offline(
    directory: Path,
    rev: str | None,
    observed: Observed,
    requirements: Requirements | None = None,
) -> tuple[Plan, DesiredState | None]:
    """Plan against an observed-state file (or nothing running): no engine is touched."""
    raw = read_desired(directory, rev)
    result = validate_here(raw, check_paths=False)
    if result.desired is None:
        return invalid_plan(raw.revision, result.problems), None
    try:
        plan = plan_desired(result.desired, observed, result.problems, requirements=requirements)
        return plan, result.desired
    except InventoryError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from exc


def render_plan(plan: Plan, fmt: PlanFormat, spec_diff: str | None = None) -> str:
    if fmt is PlanFormat.json:
        return render_json(plan)
    if fmt is PlanFormat.markdown:
        return render_markdown(plan, spec_diff)
    text = render_text(plan)
    return f"{spec_diff}\n\n{text}" if spec_diff else text


@app.command("plan")
def plan_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    observed_file: Annotated[
        Path | None,
        typer.Option("--observed", help="read what runs from this state file, not the host"),
    ] = None,
    rev: RevOpt = None,
    base: Annotated[
        str | None, typer.Option("--base", help="pull-request review: the target branch revision")
    ] = None,
    head: Annotated[
        str | None, typer.Option("--head", help="pull-request review: the proposed revision")
    ] = None,
    fmt: Annotated[PlanFormat, typer.Option("--format")] = PlanFormat.text,
    state_dir: StateDirOpt = None,
) -> None:
    """Print what a pass would do: starts, stops, restarts, preemptions, and why."""
    if (base is None) != (head is None):
        raise usage_error("--base and --head go together")
    observed = _observed_from_file(observed_file) if observed_file else None
    if base is not None:
        plan, spec_diff = _plan_review(directory, base, head, observed)
        sys.stdout.write(render_plan(plan, fmt, spec_diff) + "\n")
        raise typer.Exit(0 if plan.valid else 1)
    if observed is None and _host_observable(state_dir):
        # imported here: the live host's Reconciler (engines, probes, httpx) costs ~75 ms of
        # CPU to import (measured), which a plan on a fresh host or against --observed never needs
        from reconciler.loop.reconcile import Reconciler, Settings

        reconciler = Reconciler(Settings(directory, resolve_state_dir(state_dir), rev))
        plan = reconciler.pass_once(dry_run=True).plan
        desired, requirements = reconciler.last_desired, reconciler.requirements
    else:
        learned = read_learned(resolve_state_dir(state_dir))
        requirements = Requirements(lambda m, h: learned.get(m, {}).get(h))
        plan, desired = _plan_offline(directory, rev, observed or {}, requirements)
    plan = with_secrets(plan, desired)
    text = render_plan(plan, fmt)
    if fmt is not PlanFormat.json and plan.valid and desired is not None:
        text += memory_basis(requirements, desired)
    sys.stdout.write(text + "\n")
    raise typer.Exit(0 if plan.valid else 1)


def with_secrets(
    plan: Plan, desired: DesiredState | None, base: DesiredState | None = None
) -> Plan:
    """The plan with every secret the desired state names and where it goes: a reviewer sees
    a new destination of a credential in the pull request's plan."""
    if desired is None:
        return plan
    uses = secret_uses(
        desired.cluster,
        base.cluster if base is not None else None,
        models=desired.models.values(),
        base_models=base.models.values() if base is not None else (),
    )
    return dataclasses.replace(plan, secrets=uses)


def memory_basis(requirements: Requirements, desired: DesiredState) -> str:
    """Which GPU memory figure each model is planned with, and why: the spec's number, the
    measured peak of its spec hash plus a margin, or the estimate from its files."""
    try:
        gpus = inventory(desired.cluster)
    except InventoryError:
        return ""
    lines = ["", "GPU memory planned per model (MiB per GPU):"]
    for model_id, chosen in sorted(requirements.reasons(desired, gpus).items()):
        if (spec := desired.models.get(model_id)) is not None and spec.is_remote:
            continue  # no GPU memory: listed under "Remote models"
        size = "unknown" if chosen.mb is None else str(chosen.mb)
        lines.append(f"  {model_id}: {size} ({chosen.basis}: {chosen.reason})")
    return "\n".join(lines)


def _host_observable(state_dir: Path | None) -> bool:
    """Plan observes the live host when a state directory exists (the reconciler ran here)."""
    return resolve_state_dir(state_dir).is_dir()


def _plan_review(
    directory: Path, base: str, head: str | None, observed: Observed | None
) -> tuple[Plan, str]:
    """Plan HEAD against the state that BASE would have converged to, plus the spec diff."""
    base_plan, base_desired = _plan_offline(directory, base, observed or {})
    start = converged_observed(base_plan, observed or {}) if base_desired else dict(observed or {})
    head_plan, head_desired = _plan_offline(directory, head, start)
    text = render_diff(
        diff_desired(base_desired, head_desired), diff_cluster(base_desired, head_desired)
    )
    return with_secrets(head_plan, head_desired, base_desired), text or "no spec changes"
