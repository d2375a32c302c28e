"""One-shot convergence (`reconciler apply`): passes until every started engine is ready and
no retry is pending, or a timeout."""

from __future__ import annotations

from collections.abc import Callable

from reconciler.engines.health import wait_ready
from reconciler.loop.reconcile import PassResult, Reconciler


def converge(
    reconciler: Reconciler, timeout_s: float, *, meanwhile: Callable[[], None] | None = None
) -> list[PassResult]:
    """Run passes until settled (all started engines ready, no retry pending) or the timeout.
    Between passes it waits for the next retry, or for a starting engine to answer.

    `meanwhile` is called once, after the first pass that leaves something to wait for: the
    caller's own preparation (apply imports what prints its output) overlaps the engines'
    start instead of delaying the return once they are ready."""
    deadline = reconciler.clock() + timeout_s
    results = []
    while True:
        result = reconciler.pass_once()
        results.append(result)
        now = reconciler.clock()
        if result.settled or now >= deadline:
            return results
        if meanwhile is not None:
            meanwhile()
            meanwhile, now = None, reconciler.clock()
        wake = result.next_wake if result.next_wake is not None else now + 0.5
        wake = min(max(wake, now + 0.05), deadline)
        client = reconciler.http_client()
        wait_ready(
            result.starting_urls, wake - now, interval=0.05, probe_timeout=0.5, client=client
        )
