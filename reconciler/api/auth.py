"""Who may ask the API to act (POST /api/v1/reconcile, /api/v1/models/{id}/restart).

- with RECONCILER_API_TOKEN set: `Authorization: Bearer <token>`, compared in constant time;
  anything else is 401;
- without a token, `run` listens on loopback only, and actions are accepted from loopback
  clients that are not a web page of another site (Origin, Sec-Fetch-Site) and that address us
  by a loopback name (Host): a page the operator happens to visit, or a DNS-rebound name, cannot
  restart a model through the operator's browser.
The webhook has its own check (an HMAC signature: webhook.py); GETs are open.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _bearer(header: str | None) -> bytes | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(host_header: str) -> str:
    """`127.0.0.1:8080` -> 127.0.0.1, `[::1]:8080` -> ::1, `localhost` -> localhost."""
    return urlsplit(f"//{host_header}").hostname or ""


def _same_site_browser(request: Request) -> bool:
    """False for a request that a web page of another origin made through the user's browser
    (browsers send Sec-Fetch-Site and Origin; command-line clients send neither)."""
    if request.headers.get("sec-fetch-site", "none") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")  # "null" never matches


def authorize(request: Request, token: str | None) -> None:
    """Raise 401/403 unless this request may act (see the module docstring)."""
    if token:
        given = _bearer(request.headers.get("authorization"))
        if given is None or not hmac.compare_digest(given, token.encode("utf-8")):
            raise HTTPException(
                401,
                "missing or wrong bearer token (Authorization: Bearer <RECONCILER_API_TOKEN>)",
                headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
            )
        return
    client = request.client.host if request.client else None
    if not _is_loopback(client):
        raise HTTPException(
            401,
            "no API token is configured: actions are accepted from this host only "
            "(set RECONCILER_API_TOKEN to allow others)",
            headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
        )
    host = _host_name(request.headers.get("host", ""))
    if host not in LOOPBACK_NAMES or not _same_site_browser(request):
        raise HTTPException(
            403, "refused: a cross-site or non-loopback-named request needs an API token"
        )
