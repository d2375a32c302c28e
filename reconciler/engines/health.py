"""Readiness and liveness probes of engines over HTTP: the I/O half of health checking.

What a probe result means (starting, ready, failed) is decided by reconciler.core.health; this
module only asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx

from reconciler.core.health import ProbeResult


def probe(url: str, timeout: float, *, client: httpx.Client | None = None) -> ProbeResult:
    """One GET: ok on any 2xx answer within `timeout` seconds. Never raises."""
    started = time.monotonic()
    try:
        if client is None:
            # trust_env=False: engines are local, an HTTP(S)_PROXY of the host must not be used
            response = httpx.get(url, timeout=timeout, trust_env=False)
        else:
            response = client.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ProbeResult(False, error, elapsed_s=time.monotonic() - started)
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
    http = httpx.Client(trust_env=False) if client is None else client
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
