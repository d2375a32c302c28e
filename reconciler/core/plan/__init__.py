"""The plan: what to stop, preempt, start and restart so that what runs matches the desired state.
PURE: no I/O, no clock, no randomness; the same input gives the same plan, byte for byte.

`make_plan` diffs desired against observed through `schedule`. The spec hash decides restarts
(an observed hash of None counts as matching); a change of priority alone restarts nothing; an
engine on GPUs that violate a new pin or gpu_count restarts. An engine that must move to other GPUs
is a stop (with the stops, so that its memory is free before anything starts) and a start.

Order: stops, then preemptions (each lowest priority first, ties by id), then starts and restarts,
highest priority first (ties by id). The plan of a converged system has no actions.

Modules: `actions` (the plan's values, and the diff that orders the actions and gives each model
its outcome), `make` (make_plan; remote models kept from the scheduler, listed on the plan),
`report` (JSON, text, markdown).
"""

from reconciler.core.plan.actions import (
    Action,
    ActionKind,
    GpuUsage,
    Outcome,
    Plan,
    RemoteModel,
    Unschedulable,
    invalid_plan,
)
from reconciler.core.plan.make import converged_observed, make_plan
from reconciler.core.plan.report import render_json, render_markdown, render_text

__all__ = [
    "Action",
    "ActionKind",
    "GpuUsage",
    "Outcome",
    "Plan",
    "RemoteModel",
    "Unschedulable",
    "converged_observed",
    "invalid_plan",
    "make_plan",
    "render_json",
    "render_markdown",
    "render_text",
]
