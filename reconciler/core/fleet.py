"""Several hosts from one repository: which host runs which model, and one host's view of the
fleet. Placement across hosts is written in the specs (`hosts:`), never computed. Pure."""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.cluster import HostFields
from reconciler.core.desired import DesiredState
from reconciler.core.spec import ModelSpec

HOST_FIELDS = tuple(HostFields.model_fields)
"""what a hosts/<name>.yaml sets for its host in place of cluster.yaml"""


def runs_on(spec: ModelSpec, host: str) -> bool:
    """Whether `host` runs the model's engines (a remote model runs on none: every host's
    gateway reaches its endpoint itself)."""
    return not spec.is_remote and spec.hosts is not None and host in spec.hosts


def host_view(desired: DesiredState, host: str) -> DesiredState:
    """What the reconciler of `host` reconciles: the models it runs (remote models too: its
    gateway serves them), its own GPUs and ports, and the rest of the fleet in `elsewhere`.

    A repository without hosts/ is one host: the view is the desired state itself.
    """
    if not desired.hosts:
        return desired
    mine = desired.hosts[host]
    cluster = desired.cluster.model_copy(update={name: getattr(mine, name) for name in HOST_FIELDS})
    models = {i: s for i, s in desired.models.items() if s.is_remote or runs_on(s, host)}
    elsewhere = {i: s for i, s in desired.models.items() if i not in models}
    origins = {i: o for i, o in desired.origins.items() if i in models}
    return replace(
        desired, models=models, cluster=cluster, origins=origins, host=host, elsewhere=elsewhere
    )


def placements(desired: DesiredState) -> dict[str, tuple[str, ...]]:
    """model id -> the hosts that run it, for every engine model of a fleet."""
    return {
        model_id: tuple(spec.hosts)
        for model_id, spec in sorted(desired.models.items())
        if not spec.is_remote and spec.hosts
    }
