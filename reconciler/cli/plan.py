"""`reconciler plan`: what a pass would do (starts, stops, restarts, preemptions) and why;
with --base/--head, the review of a pull request."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli.loading import read_desired, validate_here
from reconciler.core.desired import DesiredState
from reconciler.core.diff import diff_cluster, diff_desired, render_diff
from reconciler.core.fleet import host_view
from reconciler.core.instance import InstanceRecord
from reconciler.core.plan import (
    Plan,
    converged_observed,
    invalid_plan,
    render_json,
    render_markdown,
    render_text,
)
from reconciler.core.plan.fleet_report import (
    FleetPlan,
    fleet_plan,
    render_fleet_json,
    render_fleet_markdown,
    render_fleet_text,
)
from reconciler.core.secrets import secret_uses
from reconciler.gpus import InventoryError, inventory
from reconciler.loop.memory import read_learned
from reconciler.loop.planning import Requirements, plan_desired
from reconciler.source.load import HOSTS_DIR, is_spec_path
from reconciler.state.reading import ObservedFileError, read_observed

from . import command_app
from .options import (
    DEFAULT_DIR,
    DirArg,
    HostNameOpt,
    RevOpt,
    StateDirOpt,
    err,
    host_name,
    resolve_state_dir,
    usage_error,
)

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
    host: HostNameOpt = None,
    only: Annotated[
        str | None, typer.Option("--host", help="a fleet (hosts/): only this host's plan")
    ] = None,
) -> None:
    """Print what a pass would do: starts, stops, restarts, preemptions, and why."""
    if (base is None) != (head is None):
        raise usage_error("--base and --head go together")
    observed = _observed_from_file(observed_file) if observed_file else None
    if _is_fleet(directory, head if base is not None else rev):
        where = Where(directory, state_dir, host_name(host), only, observed)
        fleet, spec_diff = _review_fleet(where, base, head) if base else _plan_fleet(where, rev)
        sys.stdout.write(_render_fleet(fleet, fmt, spec_diff) + "\n")
        raise typer.Exit(0 if isinstance(fleet, FleetPlan) or fleet.valid else 1)
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
        requirements = _learned(state_dir)
        plan, desired = _plan_offline(directory, rev, observed or {}, requirements)
    plan = with_secrets(plan, desired)
    text = render_plan(plan, fmt)
    if fmt is not PlanFormat.json and plan.valid and desired is not None:
        text += memory_basis(requirements, desired)
    sys.stdout.write(text + "\n")
    raise typer.Exit(0 if plan.valid else 1)


def _learned(state_dir: Path | None) -> Requirements:
    """What engines were measured to use on this host (memory.json of its state directory)."""
    learned = read_learned(resolve_state_dir(state_dir))
    return Requirements(lambda m, h: learned.get(m, {}).get(h))


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
        hosts=desired.hosts,
        base_hosts=base.hosts if base is not None else None,
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


# ---- a fleet (desired-state/hosts/): a plan per host -------------------------------------------


@dataclass(frozen=True)
class Where:
    """Where a fleet's plan is made: the repository, this host (its state directory, its name,
    an --observed file of it) and the one host asked for (--host)."""

    directory: Path
    state_dir: Path | None
    me: str
    only: str | None
    observed: Observed | None


def _is_fleet(directory: Path, rev: str | None) -> bool:
    """Whether the repository declares hosts (the working tree: any hosts/*.yaml; a revision:
    read, since only git knows)."""
    if rev is not None:
        return bool(read_desired(directory, rev).hosts)
    hosts = directory / HOSTS_DIR
    return hosts.is_dir() and any(is_spec_path(f"{HOSTS_DIR}/{p.name}") for p in hosts.iterdir())


def _validated(directory: Path, rev: str | None) -> tuple[DesiredState | None, Plan]:
    raw = read_desired(directory, rev)
    result = validate_here(raw, check_paths=False)
    return result.desired, invalid_plan(raw.revision, result.problems)


def _shown(desired: DesiredState, where: Where) -> list[str]:
    if where.only is None:
        return sorted(desired.hosts)
    if where.only not in desired.hosts:
        known = ", ".join(sorted(desired.hosts))
        raise usage_error(f"--host {where.only}: not a host of the fleet (declared: {known})")
    return [where.only]


def _plan_fleet(where: Where, rev: str | None) -> tuple[FleetPlan | Plan, str | None]:
    """Each host's plan: this host's against what runs here (its state directory or --observed),
    the others' from nothing running (their engines are observed on them)."""
    desired, invalid = _validated(where.directory, rev)
    if desired is None:
        return invalid, None
    plans = {}
    for name in _shown(desired, where):
        if name != where.me:
            plans[name] = _host_plan(desired, name, {}, None, "from nothing running")
        elif where.observed is None and _host_observable(where.state_dir):
            from reconciler.loop.reconcile import Reconciler, Settings

            settings = Settings(where.directory, resolve_state_dir(where.state_dir), rev)
            settings.host_name = name
            live = Reconciler(settings).pass_once(dry_run=True).plan
            plans[name] = (live, "this host: against what runs here")
        else:
            why = "this host: against " + ("--observed" if where.observed else "nothing running")
            requirements = _learned(where.state_dir)
            plans[name] = _host_plan(desired, name, where.observed or {}, requirements, why)
    secrets = with_secrets(Plan(None, True), desired).secrets
    return fleet_plan(desired.revision, plans, invalid.problems, secrets), None


def _host_plan(
    desired: DesiredState,
    name: str,
    observed: Observed,
    requirements: Requirements | None,
    basis: str,
) -> tuple[Plan | None, str]:
    """One host's plan and what it was made against, or None and why not. `requirements` is
    this host's learned memory; None: a host whose GPUs are only known there unless declared."""
    view = host_view(desired, name)
    if view.cluster.gpus == "auto" and requirements is None:
        return None, (
            f"hosts/{name}.yaml says `gpus: auto`: its GPUs are read on {name} itself "
            f"(run `reconciler plan --host-name {name}` there, or declare them)"
        )
    try:
        return plan_desired(view, observed, requirements=requirements), basis
    except InventoryError as exc:
        return None, str(exc).split("\n", 1)[0]


def _review_fleet(where: Where, base: str, head: str | None) -> tuple[FleetPlan | Plan, str]:
    """A pull request's plan per host: HEAD's share of each host against what BASE's share of
    it converged to (nothing, for a host BASE did not declare)."""
    base_desired, _ = _validated(where.directory, base)
    head_desired, invalid = _validated(where.directory, head)
    text = render_diff(
        diff_desired(base_desired, head_desired), diff_cluster(base_desired, head_desired)
    )
    if head_desired is None:
        return invalid, text or "no spec changes"
    plans = {}
    for name in _shown(head_desired, where):
        start = where.observed or {} if name == where.me else {}
        if base_desired is not None and name in base_desired.hosts:
            before, _ = _host_plan(base_desired, name, start, None, "")
            start = converged_observed(before, start) if before is not None else start
        basis = "against what BASE converged to on it"
        plans[name] = _host_plan(head_desired, name, start, None, basis)
    secrets = with_secrets(Plan(None, True), head_desired, base_desired).secrets
    fleet = fleet_plan(head_desired.revision, plans, invalid.problems, secrets)
    return fleet, text or "no spec changes"


def _render_fleet(fleet: FleetPlan | Plan, fmt: PlanFormat, spec_diff: str | None) -> str:
    if isinstance(fleet, Plan):  # an invalid desired state: no host's plan, the problems
        return render_plan(fleet, fmt, spec_diff)
    if fmt is PlanFormat.json:
        return render_fleet_json(fleet)
    if fmt is PlanFormat.markdown:
        return render_fleet_markdown(fleet, spec_diff)
    text = render_fleet_text(fleet)
    return f"{spec_diff}\n\n{text}" if spec_diff else text
