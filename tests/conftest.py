"""Suite-wide: the `component` mark (strict mode), the `seed` fixture, the skip summary line.

See tests/components.py: a missing component skips a test on a bare machine and fails it with
RECONCILER_TEST_STRICT=1; the summary line at the end of the run says what was skipped and why.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from components import MISSING, STRICT_ENV, random_seed, require, strict
from hypothesis import HealthCheck, settings

# No hypothesis deadline (its default is 200 ms per example) and no "too slow" health check,
# for every property test: both judge the machine's speed, and a busy machine (several suites
# on two cores) missed them with correct code (328 ms). Tests that want a bound on work count
# it, as the benches do.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

_MISSING_REASON = re.compile(rf"^(?:Skipped: )?{MISSING} (?P<component>[^:]+):")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "component(name, how_to_install, present): the test needs a component of the machine",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("component"):
        require(*mark.args)


@pytest.fixture
def seed() -> int:
    """A seed for a randomised test: RECONCILER_TEST_SEED when set; printed either way."""
    return random_seed()


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def skip_summary(reasons: list[str]) -> str:
    """One line: how many tests were skipped, grouped by missing component (or reason)."""
    groups: Counter[str] = Counter()
    for reason in reasons:
        found = _MISSING_REASON.match(reason)
        groups[f"no {found['component']}" if found else reason.removeprefix("Skipped: ")] += 1
    parts = ", ".join(f"{what} ({count})" for what, count in groups.most_common())
    return (
        f"{len(reasons)} skipped: {parts}. "
        f"pytest -rs says how to install each; {STRICT_ENV}=1 turns these skips into failures."
    )


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    reports = terminalreporter.stats.get("skipped", [])
    reasons = [_reason(r) for r in reports]
    if reasons:
        terminalreporter.write_line(skip_summary(reasons), yellow=True, bold=True)
    elif strict():
        terminalreporter.write_line(f"{STRICT_ENV}=1: no test skipped", green=True)
