"""The daemon's probes of the other hosts' gateways (a fleet): which hosts answer.

Every `interval_s` a thread of its own sends `GET <gateway>/healthz` to each other host of the
fleet, all at once, each within `timeout_s`: one host that hangs delays no other's verdict, and
none holds up a pass. A host whose gateway does not answer 200 is down: the routing table
(routes.build_routes) leaves it out, so this host's gateway answers its models at once (their
fallback, else 503 + Retry-After) instead of trying it. A change asks the loop for a pass, which
writes the table again; the pass's listener (service.publish) takes the news as events:
"host b: unreachable (connection refused)", "host b: answering".

A host not probed yet counts as up: the gateway itself marks a host that refuses a connection
down at once (table.PEER_DOWN_FOR_S), so optimism costs one refused connection.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from reconciler.core.desired import DesiredState
from reconciler.core.events import EventKind

log = logging.getLogger("reconciler.gateway.peers")

PROBE_PATH = "/healthz"
INTERVAL_S = 5.0
TIMEOUT_S = 2.0
USER_AGENT = "reconciler-peer-probe"

Probe = Callable[[str, float], str | None]
"""(gateway URL, timeout) -> None when it answers, else why not"""


def peers_of(desired: DesiredState | None) -> dict[str, str]:
    """The other hosts of this host's view of a fleet, each with its gateway's URL."""
    if desired is None or desired.host is None:
        return {}
    return {
        name: host.gateway.rstrip("/")
        for name, host in sorted(desired.hosts.items())
        if name != desired.host
    }


def probe_gateway(url: str, timeout_s: float) -> str | None:
    """GET <url>/healthz: None on a 200, else the reason in an operator's words. No proxy from
    the environment (the hosts reach each other directly), no redirect followed."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(url + PROBE_PATH, headers={"User-Agent": USER_AGENT})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from {url}{PROBE_PATH}"
    except TimeoutError:
        return f"no answer from {url} within {timeout_s:g} s"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            return f"connection refused by {url}"
        if isinstance(reason, TimeoutError):
            return f"no answer from {url} within {timeout_s:g} s"
        return f"{url}: {reason}"
    return None if status == 200 else f"HTTP {status} from {url}{PROBE_PATH}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class PeerWatch:
    """Up or down for each other host of the fleet (a Service of the daemon: start, stop)."""

    def __init__(
        self,
        desired: Callable[[], DesiredState | None],
        trigger: Callable[[str], None],
        *,
        interval_s: float = INTERVAL_S,
        timeout_s: float = TIMEOUT_S,
        probe: Probe = probe_gateway,
    ) -> None:
        self.desired = desired
        self.trigger = trigger
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.probe = probe
        self._lock = threading.Lock()
        self._down: dict[str, str] = {}
        """host -> why its gateway does not answer (the probing thread writes it)"""
        self._reported: dict[str, str] = {}
        """what the events said last (the loop thread's, through news())"""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def down(self) -> dict[str, str]:
        """The hosts whose gateway did not answer its last probe, with why."""
        with self._lock:
            return dict(self._down)

    def news(self, peers: Mapping[str, str]) -> list[tuple[EventKind, str]]:
        """The events for what changed since the last call, among the hosts in `peers`."""
        down = {h: r for h, r in self.down().items() if h in peers}
        events = []
        for host in sorted(set(down) | set(self._reported)):
            if host in down and self._reported.get(host) != down[host]:
                events.append((EventKind.error, f"host {host}: unreachable ({down[host]})"))
            elif host not in down and host in peers:
                events.append((EventKind.recovered, f"host {host}: answering"))
        self._reported = down
        return events

    def probe_all(self) -> list[str]:
        """One round of probes; returns a line for each host whose verdict changed."""
        peers = peers_of(self.desired())
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="peer-probe")
        verdicts = dict(
            zip(
                peers,
                self._pool.map(lambda url: self.probe(url, self.timeout_s), peers.values()),
                strict=True,
            )
        )
        changes = []
        with self._lock:
            for host, reason in verdicts.items():
                was = self._down.get(host)
                if reason is None and was is not None:
                    changes.append(f"host {host}: answering")
                elif reason is not None and was is None:
                    changes.append(f"host {host}: unreachable ({reason})")
            self._down = {h: r for h, r in verdicts.items() if r is not None}
        return changes

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gateway-peers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _run(self) -> None:
        while True:
            try:
                changes = self.probe_all()
            except Exception:  # a probe's surprise must not end the watch
                log.exception("probing the other hosts' gateways failed")
                changes = []
            for line in changes:
                log.warning(line)
            if changes:
                self.trigger("; ".join(changes))
            if self._stop.wait(self.interval_s):
                return
