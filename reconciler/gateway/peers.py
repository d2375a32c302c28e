"""Requests to another host's gateway (a fleet: the model runs there), as the relay sends them.

Forwarding is relaying to a remote endpoint with three differences. The other gateway gets the
client's path and `model` as they came (its own table knows the model's names and aliases),
unless this host sends a fallback or an overflow model there: then that model's id. It gets the
fleet key (`gateway.fleet_key_env`, a RECONCILER_SECRET_* variable), and only when the host of
its URL is listed in that variable's _HOSTS: git names the URL, and only the host's operator says
where the key may go (reconciler.core.secrets); else the request is not sent at all (502
fleet_key_withheld, and one log line). And it gets X-Reconciler-Forwarded with this host's name:
the other gateway serves it with its own instances and never forwards it again. The client's
Authorization never goes along. What the other gateway says about who answered comes back as it
was (X-Reconciler-Host, -Model, -Instance), and so does its Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from reconciler.core.engine_args import endpoint_host
from reconciler.core.secrets import BINDING_RULE, host_binds, hosts_variable
from reconciler.gateway import errors
from reconciler.gateway.errors import FORWARDED_HEADER, HOST_HEADER, INSTANCE_HEADER, MODEL_HEADER
from reconciler.gateway.routes import GatewaySettings
from reconciler.gateway.table import Entry, Instance

log = logging.getLogger("reconciler.gateway")

USER_AGENT = "reconciler-gateway"
PASSED_BACK = (MODEL_HEADER, INSTANCE_HEADER, HOST_HEADER, "Retry-After")
"""what another host's gateway answers with that its client gets as it came"""


def fleet_key_refusal(key_env: str, url: str, environ: Mapping[str, str]) -> str | None:
    """Why the fleet key may not go to the gateway at `url`, or None when it may."""
    host = endpoint_host(url)
    if not host_binds(key_env, host, environ):
        return f"{host} is not listed in {hosts_variable(key_env)}; {BINDING_RULE}"
    if not environ.get(key_env):
        return f"{key_env} is not set in the gateway's environment"
    return None


class FleetKey:
    """The fleet key as this gateway may send it, decided once per (variable, gateway URL):
    the environment is the process's, fixed at its start."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self._refusals: dict[tuple[str, str], str | None] = {}

    def headers(
        self,
        headers: dict[str, str],
        settings: GatewaySettings,
        model_id: str,
        instance: Instance,
    ) -> dict[str, str]:
        """`headers` (the client's forwarded ones) with this host's name and the fleet key
        added; Refusal 502 when the key may not go there."""
        key_env = settings.fleet_key_env
        headers[FORWARDED_HEADER] = settings.host
        headers["User-Agent"] = USER_AGENT
        if key_env is None:
            return headers
        decided = (key_env, instance.url)
        if decided not in self._refusals:
            refusal = fleet_key_refusal(key_env, instance.url, self.environ)
            self._refusals[decided] = refusal
            if refusal is not None:
                log.error("host %s: fleet key withheld: %s", instance.host, refusal)
        if self._refusals[decided] is not None:
            raise errors.fleet_key_withheld(model_id, instance.host)
        headers["Authorization"] = f"Bearer {self.environ[key_env]}"
        return headers


def peer_model(payload: Mapping[str, Any], target: Entry) -> str:
    """The `model` another host's gateway gets: the client's own name when it names the target
    (an alias stays an alias), else the target's id (a fallback, an overflow model)."""
    name = str(payload["model"])
    return name if name == target.id or name in target.route.aliases else target.id


def passed_back(out: dict[str, str], answered: Mapping[str, str], host: str) -> None:
    """The other gateway's word on who answered replaces this one's (`answered`: its response
    head, lower-cased names); X-Reconciler-Host is the host's name when it sent none."""
    out[HOST_HEADER] = host
    for name in PASSED_BACK:
        value = answered.get(name.lower())
        if value is not None:
            out[name] = value
