"""The deliberate faults of `make mutants`: each names a file, an exact snippet of it, what the
snippet becomes, and the unit tests that must notice. A snippet must occur exactly once in its
file; when the code it names is rewritten, the mutant must be rewritten with it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    """the fault, as a user would notice it"""
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]


# cheap example-based tests first: with -x a mutant is usually killed in the first file
SCHEDULE = (
    "tests/unit/test_scenarios.py",
    "tests/unit/test_schedule.py",
    "tests/unit/test_plan.py",
    "tests/unit/test_victim_properties.py",
    "tests/unit/test_schedule_properties.py",
)
RETRY = ("tests/unit/test_retry.py",)
HEALTH = ("tests/unit/test_health.py",)

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "a model may preempt one of equal priority",
        "reconciler/core/schedule/passes.py",
        "self._evaluate(d, d.priority, d.priority, None, ())",
        "self._evaluate(d, d.priority, d.priority + 1, None, ())",
        SCHEDULE,
    ),
    Mutant(
        "reserved_memory_mb is ignored",
        "reconciler/core/schedule/model.py",
        "max(0, g.memory_total - reserved_mb - g.unmanaged_mb)",
        "max(0, g.memory_total - g.unmanaged_mb)",
        SCHEDULE,
    ),
    Mutant(
        "a fallback preempts at its own priority, not only below its primary's",
        "reconciler/core/schedule/passes.py",
        "self._evaluate(fallback, effective, power, d.id, (*chain, d.id))",
        "self._evaluate(fallback, effective, effective, d.id, (*chain, d.id))",
        SCHEDULE,
    ),
    Mutant(
        "an unschedulable model's fallback never runs",
        "reconciler/core/schedule/passes.py",
        "if fallback is not None and fallback.id not in chain:",
        "if False and fallback is not None and fallback.id not in chain:",
        SCHEDULE,
    ),
    Mutant(
        "victims are not the fewest: every lower-priority model on the GPU is preempted",
        "reconciler/core/schedule/victims.py",
        "if count is None:\n            count = self._victim_count(g, memory, level)\n",
        "count = len(pool)\n",
        SCHEDULE,
    ),
    Mutant(
        "a converged host restarts its engines",
        "reconciler/core/plan/actions.py",
        "return same and self.running[mid].reusable",
        "return same and self.running[mid].reusable and False",
        SCHEDULE,
    ),
    Mutant(
        "stops do not come before starts",
        "reconciler/core/plan/actions.py",
        "ordered = [*_in_order(stops), *_in_order(preempts), *_in_order(starts)]",
        "ordered = [*_in_order(starts), *_in_order(stops), *_in_order(preempts)]",
        SCHEDULE,
    ),
    Mutant(
        "a port already given in this pass is given again",
        "reconciler/core/schedule/ports.py",
        "self.next in self.used or self.next in self.fixed or self.next in self.held",
        "self.next in self.fixed or self.next in self.held",
        SCHEDULE,
    ),
    Mutant(
        "a changed spec does not restart the engine",
        "reconciler/core/plan/make.py",
        "    if obs.spec_hash not in (None, h):\n        return False\n",
        "",
        SCHEDULE,
    ),
    Mutant(
        "lower priority goes first",
        "reconciler/core/schedule/model.py",
        "return (-d.priority, d.id)",
        "return (d.priority, d.id)",
        SCHEDULE,
    ),
    Mutant(
        "a model that gave up is started again without a spec change",
        "reconciler/core/plan/make.py",
        "if obs is not None and obs.given_up and not obs.occupies",
        "if False and obs is not None and obs.given_up and not obs.occupies",
        SCHEDULE,
    ),
    Mutant(
        "restart backoff without a cap",
        "reconciler/core/retry.py",
        "return min(min(base_s * (2.0**exponent), cap_s) * factor, cap_s)",
        "return base_s * (2.0**exponent) * factor",
        RETRY,
    ),
    Mutant(
        "restart backoff does not double",
        "reconciler/core/retry.py",
        "exponent = min(max(attempt - 1, 0), 64)",
        "exponent = 0",
        RETRY,
    ),
    Mutant(
        "jitter beyond its bounds",
        "reconciler/core/retry.py",
        "factor = min(max(jitter, 1.0 - JITTER), 1.0 + JITTER)",
        "factor = jitter",
        RETRY,
    ),
    Mutant(
        "max_retries off by one",
        "reconciler/core/retry.py",
        "gave_up = restarts > policy.max_retries",
        "gave_up = restarts >= policy.max_retries",
        RETRY,
    ),
    Mutant(
        "the startup timeout is ignored",
        "reconciler/core/health.py",
        "if now - started_at <= check.startup_timeout_s:",
        "if True:",
        HEALTH,
    ),
    Mutant(
        "failure_threshold off by one",
        "reconciler/core/health.py",
        "if misses < check.failure_threshold:",
        "if misses <= check.failure_threshold:",
        HEALTH,
    ),
    Mutant(
        "the probe timeout is silently capped at 2 s",
        "reconciler/core/health.py",
        "    return check.timeout_s\n",
        "    return min(check.timeout_s, 2.0)\n",
        HEALTH,
    ),
)
