"""What a request to a remote model's endpoint (`framework: remote`) carries, and over what.

A remote model is an OpenAI-compatible API someone else serves: a hosted provider, a colleague's
server. The gateway relays to it as to an engine, with four differences:
- the connection is TLS-verified when the endpoint is https (the system's CAs, SSL_CERT_FILE, and
  the host's own bundle in RECONCILER_REMOTE_CA_FILE);
- the path is the endpoint's path followed by the client's path after `/v1` (OpenAI base URLs
  end in the version: `https://api.example.com/v1` + `/chat/completions`);
- the body's `model` is the endpoint's name for it (`upstream_model`);
- the key is the gateway's own (`Authorization: Bearer`, read from its environment), and only
  to a host the operator binds it to (reconciler.core.secrets): never the client's header.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from reconciler.core.secrets import remote_key_refusal
from reconciler.core.spec import REMOTE_FRAMEWORK, ModelSpec
from reconciler.gateway.routes import RemoteRoute

log = logging.getLogger("reconciler.gateway")

CA_FILE_ENV = "RECONCILER_REMOTE_CA_FILE"
"""a PEM bundle of CAs the gateway trusts for remote endpoints, beside the system's"""
USER_AGENT = "reconciler-gateway"
"""some providers' front doors refuse requests without a User-Agent"""
CLIENT_PREFIX = "/v1"
"""what every relayed client path starts with (the gateway's route)"""


def tls_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    """Certificates and host names verified: the system's CAs (and SSL_CERT_FILE, which
    create_default_context honours), plus the bundle in RECONCILER_REMOTE_CA_FILE when set. A
    bundle that cannot be read is logged and left out: an endpoint it would have vouched for then
    fails its TLS check, which is the safe way round."""
    context = ssl.create_default_context()
    ca_file = environ.get(CA_FILE_ENV)
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("$%s (%s) is not a readable CA bundle: %s", CA_FILE_ENV, ca_file, exc)
    return context


def endpoint_path(endpoint: str, client_path: str) -> str:
    """The path (and query) the endpoint gets for a client's `/v1/...` request target."""
    base = urlsplit(endpoint).path.rstrip("/")
    rest = client_path.removeprefix(CLIENT_PREFIX)
    return base + rest


def with_model(body: bytes, payload: Mapping[str, Any], name: str) -> bytes:
    """The request body with `model` set to `name`; the body as it came when it already is."""
    if payload.get("model") == name:
        return body
    return json.dumps({**payload, "model": name}).encode()


@dataclass(frozen=True)
class KeyCheck:
    """A remote model's key as this gateway may send it: the header value, or why not."""

    authorization: str | None
    refusal: str | None


def key_check(model_id: str, remote: RemoteRoute, environ: Mapping[str, str]) -> KeyCheck:
    """Whether the gateway may send the key to the endpoint (core.secrets decides), and the
    header it sends. A remote model without `api_key_env` is sent no key."""
    if remote.key_env is None:
        return KeyCheck(None, None)
    # the route carries what the rule reads of a spec; nothing else of a spec plays a part
    spec = ModelSpec.model_construct(
        id=model_id,
        framework=REMOTE_FRAMEWORK,
        endpoint=remote.endpoint,
        upstream_model=remote.upstream_model,
        api_key_env=remote.key_env,
    )
    refusal = remote_key_refusal(spec, environ)
    if refusal is not None:
        return KeyCheck(None, refusal)
    value = environ.get(remote.key_env, "")
    if not value:  # the rule refuses an unset key too: kept, in case it ever does not
        return KeyCheck(None, f"{remote.key_env} is not set in the gateway's environment")
    return KeyCheck(f"Bearer {value}", None)


def endpoint_headers(
    remote: RemoteRoute, client_headers: Mapping[str, str], authorization: str | None
) -> dict[str, str]:
    """The headers of the request to the endpoint: the client's forwarded ones (never its
    Authorization: that is the gateway's key, if any), the gateway's key, a User-Agent."""
    headers = {k: v for k, v in client_headers.items() if k.lower() != "authorization"}
    headers["User-Agent"] = USER_AGENT
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers
