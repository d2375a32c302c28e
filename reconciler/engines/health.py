"""Readiness and liveness probes of engines over HTTP: the I/O half of health checking.

What a probe result means (starting, ready, failed) is decided by reconciler.core.health; this
module only asks.

httpx is imported on the first probe, not with this module: `reconciler apply` imports this on
its way to launching an engine, and httpx (~50 ms with its CLI's rich and click) can wait until
the engine is loading its model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.core.health import ProbeResult

if TYPE_CHECKING:
    import httpx


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
