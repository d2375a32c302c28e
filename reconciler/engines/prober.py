"""Readiness and liveness probes of engines over HTTP: the I/O half of health checking.

What a probe result means (starting, ready, failed) is decided by reconciler.core.health; this
module only asks. The loop asks through a `Prober`: probes run on threads of their own, so that
no engine's probe (which may wait as long as its spec's `timeout_s`) holds up the loop or the
probes of other engines.

httpx is imported on the first probe, not with this module: `reconciler apply` imports this on
its way to launching an engine, and httpx (~50 ms with its CLI's rich and click) can wait until
the engine is loading its model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from reconciler.core.health import Activity, ProbeResult

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("reconciler.engines.prober")


def probe_client(**settings: Any) -> httpx.Client:
    """An HTTP client for probing engines, which listen on plain HTTP on this host.

    Never through a proxy: trust_env=False ignores HTTP(S)_PROXY. And without certificates:
    httpx loads the CA bundle into an SSL context for each client by default (~40 ms of CPU,
    which `apply` would take from the engine loading its model beside it); probe URLs are
    http://, and an https:// one would fail verification, never go unverified.
    """
    import ssl

    import httpx

    no_certificates = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts nothing
    return httpx.Client(trust_env=False, verify=no_certificates, **settings)


def probe(url: str, timeout: float, *, client: httpx.Client | None = None) -> ProbeResult:
    """One GET: ok on any 2xx answer within `timeout` seconds. Never raises."""
    import httpx

    started = time.monotonic()
    try:
        if client is None:
            with probe_client() as own:
                response = own.get(url, timeout=timeout)
        else:
            response = client.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        timed_out = isinstance(exc, httpx.TimeoutException)
        return ProbeResult(False, error, elapsed_s=time.monotonic() - started, timed_out=timed_out)
    except Exception as exc:  # an invalid URL, a broken client: a failed probe, not a crash
        return ProbeResult(False, f"{type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - started
    if response.is_success:
        return ProbeResult(True, None, response.status_code, elapsed)
    return ProbeResult(False, f"HTTP {response.status_code}", response.status_code, elapsed)


def wait_ready(
    url: str | Sequence[str],
    timeout: float,
    *,
    interval: float = 0.2,
    probe_timeout: float = 2.0,
    alive: Callable[[], bool] | None = None,
    client: httpx.Client | None = None,
) -> ProbeResult:
    """Probe `url` (or each of several) until one answers 2xx or `timeout` seconds pass.

    `alive` is asked between probes: when the engine process is gone there is no point in
    waiting out the timeout. The last probe's result is returned (ok=False on timeout). With no
    URL at all it just waits out the timeout. A refused connection costs next to nothing, so
    `apply` returns soon after an engine is ready.
    """
    urls = [url] if isinstance(url, str) else list(url)
    deadline = time.monotonic() + timeout
    result = ProbeResult(False, "nothing to probe")
    own = client is None
    http = probe_client() if client is None else client
    try:
        while True:
            for each in urls:
                remaining = deadline - time.monotonic()
                result = probe(each, max(0.05, min(probe_timeout, remaining)), client=http)
                if result.ok:
                    return result
            if alive is not None and not alive():
                return ProbeResult(False, "engine process exited", result.status_code)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (urls and remaining < interval):
                return ProbeResult(False, f"not ready after {timeout:g}s", result.status_code)
            time.sleep(min(interval, remaining) if urls else remaining)
    finally:
        if own:
            http.close()


@dataclass(eq=False)
class _Job:
    owner: Hashable
    url: str
    timeout: float
    client: httpx.Client
    activity: Callable[[], Activity | None] | None
    done: threading.Event = field(default_factory=threading.Event)
    result: ProbeResult | None = None
    abandoned: bool = False
    """whoever started it stopped waiting before it ended: its end is news (Prober.on_late)"""


class Prober:
    """Probes off the caller's thread: at most one in flight per key (an engine), run by up to
    `workers` threads, started as needed.

    The threads are daemon threads: a probe that waits out a spec's `timeout_s` (up to a day)
    never holds up the exit of `reconciler run` or `apply`. More than `workers` probes that hang
    at once delay the probes queued behind them, never the caller.
    """

    def __init__(self, *, workers: int = 16) -> None:
        self.workers = workers
        self.on_late: Callable[[], None] | None = None
        """called (on a probe thread) when a probe ends that its caller stopped waiting for"""
        self._jobs: dict[Hashable, _Job] = {}
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    def start(
        self,
        key: Hashable,
        owner: Hashable,
        url: str,
        timeout: float,
        client: httpx.Client,
        activity: Callable[[], Activity | None] | None = None,
    ) -> bool:
        """Probe `url` for `owner` (the engine behind `key` now), unless a probe of it is still
        running or its result is not taken yet; True when it started one. `activity` is asked
        when the probe times out."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and (not job.done.is_set() or job.owner == owner):
                return False
            job = _Job(owner, url, timeout, client, activity)
            self._jobs[key] = job
            self._queued += 1
            if self._queued > self._idle and self._threads < self.workers:
                self._threads += 1
                threading.Thread(target=self._work, name="health-probe", daemon=True).start()
        self._queue.put(job)
        return True

    def wait(self, keys: Collection[Hashable], timeout: float | None) -> None:
        """Wait until the probes of `keys` have ended, at most `timeout` seconds (None: until
        they end); the ones still running are abandoned: their end calls `on_late`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            jobs = [self._jobs[k] for k in keys if k in self._jobs]
        for job in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            job.done.wait(left)
        with self._lock:
            for job in jobs:
                job.abandoned = not job.done.is_set()

    def result(self, key: Hashable, owner: Hashable) -> ProbeResult | None:
        """The ended probe of `key` for `owner`, without taking it; None while it runs."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None or not job.done.is_set() or job.owner != owner:
                return None
            return job.result

    def take(self, key: Hashable, owner: Hashable) -> ProbeResult | None:
        """The ended probe of `key`, taken (None while it runs); a result about an engine that is
        no longer `owner` (it was replaced meanwhile) is dropped, never judged."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None or not job.done.is_set():
                return None
            del self._jobs[key]
            return job.result if job.owner == owner else None

    def running(self, key: Hashable) -> bool:
        with self._lock:
            job = self._jobs.get(key)
            return job is not None and not job.done.is_set()

    def keep(self, keys: Collection[Hashable]) -> None:
        """Forget the probes of every key not in `keys` (engines gone): their ends are no news."""
        with self._lock:
            for key in set(self._jobs) - set(keys):
                self._jobs.pop(key).abandoned = False

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            result = self._run(job)
            with self._lock:
                job.result = result
                job.done.set()
                late = job.abandoned
            if late and self.on_late is not None:
                try:
                    self.on_late()
                except Exception:  # the thread serves every engine's probes: it must go on
                    log.exception("reporting a late probe failed")

    @staticmethod
    def _run(job: _Job) -> ProbeResult:
        result = probe(job.url, job.timeout, client=job.client)
        if result.timed_out and job.activity is not None:
            try:
                result = replace(result, activity=job.activity())
            except Exception:  # no view of the traffic: judged like any timeout
                log.exception("asking whether a probed engine is busy failed")
        return result
