"""Which host secrets git may name, and where each one may go. Pure: the environment is a value.

Whoever writes cluster.yaml is not the host's operator (README "Trust model"). So git only names a
credential, and only one the operator set aside for git to name (`RECONCILER_SECRET_*`): no other
variable of the daemon (its API token, `PYTHONUNBUFFERED=1` from the systemd unit) can become an
SMTP password or a gateway key. And git alone never chooses where a credential is sent: either
the secret holds its destination (a webhook URL; `smtp://user:password@host:port` for e-mail), or
the operator lists the hosts it may go to in `RECONCILER_SECRET_<NAME>_HOSTS`. `reconciler plan`
lists every use (`secret_uses`), so that a reviewer sees a new destination in a pull request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from reconciler.core.cluster import ClusterSpec, HostSpec, NotificationTarget
from reconciler.core.engine_args import endpoint_host
from reconciler.core.spec import SECRET_NAME_PATTERN, ModelSpec

SECRET_NAME = re.compile(SECRET_NAME_PATTERN.removeprefix("^").removesuffix("$"))
HOSTS_SUFFIX = "_HOSTS"
CREDENTIAL_FIELDS = frozenset({"key_env", "url_env", "username_env", "password_env"})
"""The fields of cluster.yaml that name a variable holding a credential."""
SECRET_RULE = "a credential must come from a RECONCILER_SECRET_* variable"
BINDING_RULE = (
    "a credential goes only where the host binds it: the secret holds its destination "
    "(url_env), or <name>_HOSTS lists the hosts it may go to"
)
HELD_BY_SECRET = "destination held by the secret"
GATEWAY = "this host's gateway (checked, never sent)"
_KINDS = {"email": "e-mail target", "webhook": "webhook target", "slack": "Slack target"}
_WEB = ("http", "https")
_URL_SCHEMES = {"email": ("smtp", "smtps"), "webhook": _WEB, "slack": _WEB}


def is_secret_name(name: str) -> bool:
    return SECRET_NAME.fullmatch(name) is not None


def not_secret_name(name: object) -> str:
    """The validation message for a credential field that names another variable."""
    return f"{name}: {SECRET_RULE}"


def hosts_variable(name: str) -> str:
    return name + HOSTS_SUFFIX


def bound_hosts(name: str, environ: Mapping[str, str]) -> frozenset[str]:
    """The hosts the operator lets secret `name` go to (`<name>_HOSTS`, comma-separated)."""
    return frozenset(
        h for h in (_host(part) for part in environ.get(hosts_variable(name), "").split(",")) if h
    )


def host_binds(name: str, host: str, environ: Mapping[str, str]) -> bool:
    return _host(host) in bound_hosts(name, environ)


def _host(text: str) -> str:
    # DNS names are case-insensitive and "example.com." is "example.com"
    return text.strip().lower().rstrip(".")


def target_label(index: int, target: NotificationTarget) -> str:
    """How logs, metrics and the plan name a notification target."""
    return target.name or f"{target.type}-{index}"


@dataclass(frozen=True, slots=True)
class SecretUse:
    """One secret git names, and where it goes."""

    name: str
    destination: str
    use: str
    new: bool = False
    """reviewing a change: this use is not in the base revision"""

    def __str__(self) -> str:
        return f"{self.name} → {self.destination} ({self.use})" + (" NEW" if self.new else "")

    def to_dict(self) -> dict[str, object]:
        return {
            "secret": self.name,
            "destination": self.destination,
            "use": self.use,
            "new": self.new,
        }


def secret_uses(
    cluster: ClusterSpec,
    base: ClusterSpec | None = None,
    models: Iterable[ModelSpec] = (),
    base_models: Iterable[ModelSpec] = (),
    hosts: Mapping[str, HostSpec] | None = None,
    base_hosts: Mapping[str, HostSpec] | None = None,
) -> tuple[SecretUse, ...]:
    """Every secret git names and where it goes, as git says it (the values may not exist where
    this runs, e.g. in CI): cluster.yaml's in the file's order, then each remote model's key
    with its endpoint's host, by model id, then the fleet key to each host's gateway, by host
    name. With `base` (a review: its cluster, models and hosts), the uses that the base
    revision does not have are marked new."""
    uses = _uses(cluster) + _model_uses(models) + _fleet_uses(cluster, hosts or {})
    if base is None:
        return uses
    before = set(_uses(base) + _model_uses(base_models) + _fleet_uses(base, base_hosts or {}))
    return tuple(SecretUse(u.name, u.destination, u.use, u not in before) for u in uses)


def _fleet_uses(cluster: ClusterSpec, hosts: Mapping[str, HostSpec]) -> tuple[SecretUse, ...]:
    # the URL, not the host's name, is what a pull request could point elsewhere
    name = cluster.gateway.fleet_key_env
    if name is None:
        return ()
    return tuple(
        SecretUse(name, endpoint_host(hosts[h].gateway), f'fleet key to host "{h}"')
        for h in sorted(hosts)
    )


def _model_uses(models: Iterable[ModelSpec]) -> tuple[SecretUse, ...]:
    return tuple(
        SecretUse(
            spec.api_key_env, endpoint_host(spec.endpoint), f'key of remote model "{spec.id}"'
        )
        for spec in sorted(models, key=lambda s: s.id)
        if spec.api_key_env and spec.endpoint
    )


def remote_key_refusal(spec: ModelSpec, environ: Mapping[str, str]) -> str | None:
    """Why a remote model's key may not go to its endpoint now, or None when it may (or when
    the model names no key). The host's operator decides: the endpoint's host must be listed in
    `<api_key_env>_HOSTS`, so that a pull request that moves the endpoint cannot take the key
    along. Never names the key's value."""
    name = spec.api_key_env
    if name is None:
        return None
    if not is_secret_name(name):  # a dump that bypassed validation
        return f"api_key_env: {not_secret_name(name)}"
    host = endpoint_host(spec.endpoint or "")
    if not host:
        return f"{spec.id} has no endpoint host to send {name} to"
    if not host_binds(name, host, environ):
        return f"{host} is not listed in {hosts_variable(name)}; {BINDING_RULE}"
    if not environ.get(name):
        return f"{name} is not set on this host"
    return None


def _uses(cluster: ClusterSpec) -> tuple[SecretUse, ...]:
    uses = []
    for index, target in enumerate(cluster.notifications):
        what = f"{_KINDS[target.type]} {target_label(index, target)}"
        if target.url_env:
            uses.append(SecretUse(target.url_env, HELD_BY_SECRET, what))
        for name in (target.username_env, target.password_env):
            if name:
                uses.append(SecretUse(name, f"{target.host}:{target.smtp_port()}", what))
    for key in cluster.gateway.api_keys:
        uses.append(SecretUse(key.key_env, GATEWAY, f'gateway key "{key.name}"'))
    return tuple(uses)


def credential_refusals(target: NotificationTarget, environ: Mapping[str, str]) -> list[str]:
    """Why `target` may not send its credentials now, one line each; empty when it may.

    Checked when the daemon takes the target and again before each delivery (the host may
    change its environment file and restart). Never names a secret's value.
    """
    refusals = []
    for field_name in sorted(CREDENTIAL_FIELDS - {"key_env"}):
        name = getattr(target, field_name, None)
        if name and not is_secret_name(name):  # a dump that bypassed validation
            refusals.append(f"{field_name}: {not_secret_name(name)}")
    if target.url_env and environ.get(target.url_env):
        schemes = _URL_SCHEMES[target.type]
        if not _url_with_host(environ[target.url_env], schemes):
            wanted = " or ".join(f"{s}://" for s in schemes)
            refusals.append(
                f"url_env: {target.url_env} does not hold a {wanted} URL with a host; "
                f"{BINDING_RULE}"
            )
    host = target.host or ""
    for field_name in ("username_env", "password_env"):
        name = getattr(target, field_name)
        if name and not host_binds(name, host, environ):
            refusals.append(
                f"{field_name}: {host} is not listed in {hosts_variable(name)}; {BINDING_RULE}"
            )
    return refusals


def _url_with_host(url: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(url.strip())
        return parts.scheme.lower() in schemes and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, a broken IPv6 address
        return False
