"""The channel from the gateway to the loop for on-demand models.

The gateway knows who waits for what (GET /internal/inflight: queued, in flight, the time of
the last request per model). `DemandWatch`, in the daemon's process, reads it:
- for the pass: `traffic()` returns each model's Traffic (reconciler.core.activation), read
  fresh so that a pass never stops an engine a request just reached;
- between passes: a small thread polls every `poll_s` and asks the loop for a pass (the
  controller's trigger) when a request waits for a model that does not run and something
  changed since it last asked (a new model is wanted, or one in use went idle and so can make
  room), and when a running on-demand model's idle timeout falls due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.core.activation import Traffic
from reconciler.core.desired import DesiredState

log = logging.getLogger("reconciler.gateway.demand")

REASK_S = 2.0
"""while a request still waits for a model that does not run, ask again this often (a pass
may have run on a view of the traffic that was a moment old)"""


Inflight = Callable[[float], Mapping[str, Any] | None]
"""GET /internal/inflight within a timeout (seconds); None when the gateway does not answer."""


class DemandWatch:
    def __init__(
        self,
        inflight: Inflight,
        trigger: Callable[[str], None],
        desired: Callable[[], DesiredState | None],
        *,
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inflight = inflight
        self.trigger = trigger
        self.desired = desired
        self.poll_s = poll_s
        self.clock = clock
        self._last: dict[str, Traffic] = {}
        self._signature: tuple[frozenset[str], frozenset[str]] | None = None
        self._asked_at = 0.0
        self._due_asked: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- for the pass ----------------------------------------------------------------------

    def traffic(self) -> Mapping[str, Traffic]:
        """Each model's traffic now; the last known when the gateway does not answer (a
        gateway restarting must not make every engine look idle). A short timeout: a pass must
        not wait behind a saturated gateway; the polling thread's last view stands in."""
        report = self.inflight(0.25)
        if report is None:
            return self._last
        self._last = parse(report)
        return self._last

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gateway-demand", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            desired = self.desired()
            if desired is None or not any(
                s.activation == "on_demand" for s in desired.models.values()
            ):
                continue
            report = self.inflight(1.0)
            if report is None:
                continue
            try:
                reason = self.check(report, desired)
            except Exception:  # a malformed report must not end the thread
                log.exception("reading the gateway's demand failed")
                continue
            if reason:
                self.trigger(reason)

    def check(self, report: Mapping[str, Any], desired: DesiredState) -> str | None:
        """Why the loop should run a pass now, or None."""
        now = self.clock()
        self._last = traffic = parse(report)
        statuses = {m: str(r.get("status")) for m, r in report.get("models", {}).items()}
        on_demand = {m for m, s in desired.models.items() if s.activation == "on_demand"}
        wanted = frozenset(m for m, t in traffic.items() if t.wanted)
        cold = frozenset(m for m in wanted & on_demand if statuses.get(m) != "running")
        signature = (cold, wanted)
        if cold and (signature != self._signature or now - self._asked_at >= REASK_S):
            self._signature, self._asked_at = signature, now
            return "gateway: a request waits for " + ", ".join(sorted(cold))
        self._signature = signature
        for model_id, spec in desired.models.items():
            seen = traffic.get(model_id)
            timeout = spec.idle_timeout_s
            if timeout is None or seen is None or seen.wanted or seen.last_request_at is None:
                continue
            due = seen.last_request_at + timeout
            running = statuses.get(model_id) == "running"
            if running and now >= due and self._due_asked.get(model_id) != due:
                self._due_asked[model_id] = due
                return f"gateway: {model_id} idle for {timeout:g} s"
        return None


def parse(report: Mapping[str, Any]) -> dict[str, Traffic]:
    """GET /internal/inflight's `models` as Traffic per model."""
    return {
        model_id: Traffic(
            queued=int(r.get("queued", 0)),
            inflight=int(r.get("inflight", 0)),
            last_request_at=r.get("last_request_at"),
        )
        for model_id, r in report.get("models", {}).items()
    }
