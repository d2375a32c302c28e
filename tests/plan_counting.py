"""make_plan with a counter, for the one-plan-per-pass tests (unit and integration)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from reconciler.core.desired import DesiredState, Problem
from reconciler.core.instance import InstanceRecord
from reconciler.core.plan import Plan, make_plan
from reconciler.core.schedule.values import GPUInfo


class Counting:
    """make_plan, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self,
        desired: DesiredState,
        observed: Mapping[str, InstanceRecord],
        gpus: Sequence[GPUInfo],
        memory: Mapping[str, int | None],
        problems: Iterable[Problem] = (),
    ) -> Plan:
        self.calls += 1
        return make_plan(desired, observed, gpus, memory, problems)
