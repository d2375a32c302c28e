"""The plan of a fleet (desired-state/hosts/): one plan per host, sorted by name, then what the
hosts share once (remote models, secrets, validation problems); text, markdown and JSON.

Each host's plan is made by the same planner against that host's view (core.fleet.host_view); a
host whose GPUs are read through NVML (`gpus: auto`) can only be planned on that host, and its
section says so instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from reconciler.core.desired import Problem
from reconciler.core.plan.actions import Plan, RemoteModel
from reconciler.core.plan.report import (
    cell,
    json_document,
    markdown_sections,
    markdown_tail,
    text_sections,
)
from reconciler.core.secrets import SecretUse


@dataclass(frozen=True)
class HostPlan:
    host: str
    plan: Plan | None
    """None: not planned here (`note` says why)"""
    note: str = ""
    """what the plan was made against, or why there is none"""


@dataclass(frozen=True)
class FleetPlan:
    revision: str | None
    hosts: tuple[HostPlan, ...]
    """sorted by host name"""
    problems: tuple[Problem, ...] = ()
    secrets: tuple[SecretUse, ...] = ()
    remote: tuple[RemoteModel, ...] = ()

    def summary(self) -> str:
        """'a: 1 to start; b: no changes'."""
        return "; ".join(
            f"{h.host}: {h.plan.summary() if h.plan else 'not planned here'}" for h in self.hosts
        )


def fleet_plan(
    revision: str | None,
    plans: Mapping[str, tuple[Plan | None, str]],
    problems: Sequence[Problem] = (),
    secrets: Sequence[SecretUse] = (),
) -> FleetPlan:
    """The fleet's plan from each host's (plan, note). What every host's plan lists alike (remote
    models, secrets, validation problems) is taken out of the hosts' sections and shown once; a
    remote model serves as fallback for the models of any host."""
    hosts = []
    remote: dict[str, RemoteModel] = {}
    for name in sorted(plans):
        plan, note = plans[name]
        if plan is not None:
            for model in plan.remote:
                known = remote.get(model.id)
                serves = tuple(sorted({*(known.serves_for if known else ()), *model.serves_for}))
                remote[model.id] = replace(model, serves_for=serves)
            plan = replace(plan, remote=(), secrets=(), problems=())
        hosts.append(HostPlan(name, plan, note))
    return FleetPlan(
        revision,
        tuple(hosts),
        tuple(problems),
        tuple(secrets),
        tuple(remote[m] for m in sorted(remote)),
    )


def render_fleet_json(fleet: FleetPlan) -> str:
    """{"hosts": {name: the host's plan as render_json has it (or its note)}, ...}: stable."""
    hosts: dict[str, object] = {}
    for h in fleet.hosts:
        section: dict[str, object] = {"planned": False}
        if h.plan is not None:
            section = json_document(h.plan)
        hosts[h.host] = {**section, "note": h.note}
    document: dict[str, object] = {
        "revision": fleet.revision,
        "valid": True,
        "problems": [p.to_dict() for p in fleet.problems],
        "hosts": hosts,
        "remote": [model.to_dict() for model in fleet.remote],
        "secrets": [use.to_dict() for use in fleet.secrets],
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)


def render_fleet_text(fleet: FleetPlan) -> str:
    revision = fleet.revision or "the working tree"
    lines = [f"Plan for {revision}, {len(fleet.hosts)} host(s): {fleet.summary()}"]
    for h in fleet.hosts:
        lines.append("")
        if h.plan is None:
            lines += [f"Host {h.host}: not planned here", f"  {h.note}"]
            continue
        lines.append(f"Host {h.host}: {h.plan.summary()} ({h.note})")
        lines += [f"  {line}" for line in text_sections(h.plan)]
    shared = replace(Plan(fleet.revision, True), remote=fleet.remote, secrets=fleet.secrets)
    rest = [line for line in text_sections(shared) if not line.startswith("  nothing to do")]
    if fleet.problems:
        rest += ["Problems:", *(f"  {p}" for p in fleet.problems)]
    return "\n".join([*lines, *([""] if rest else []), *rest])


def render_fleet_markdown(fleet: FleetPlan, spec_diff: str | None = None) -> str:
    """The fleet's plan as one pull-request comment: a section per host."""
    revision = f"`{fleet.revision}`" if fleet.revision else "the working tree"
    out = [f"### Reconciler plan for {revision}", "", f"**{len(fleet.hosts)} host(s)**", ""]
    for h in fleet.hosts:
        if h.plan is None:
            out += [f"#### Host `{h.host}`: not planned here", "", cell(h.note), ""]
            continue
        out += [f"#### Host `{h.host}`: {h.plan.summary()}", "", f"_{cell(h.note)}_", ""]
        out += markdown_sections(h.plan, heading="#####")
    shared = replace(Plan(fleet.revision, True), remote=fleet.remote, secrets=fleet.secrets)
    sections = markdown_sections(shared)
    out += sections[sections.index("") + 1 :]  # without the empty plan's "nothing to do"
    out += markdown_tail(fleet.problems, spec_diff)
    return "\n".join(out).rstrip("\n") + "\n"
