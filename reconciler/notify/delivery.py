"""Sending one notification: a JSON webhook or Slack over HTTP, or e-mail over SMTP.

Before every delivery the target's credentials are checked against the host's bindings
(reconciler.core.secrets): a secret whose destination git alone chose is never sent.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import unquote, urlsplit

import httpx

from reconciler.core.cluster import NotificationTarget
from reconciler.core.secrets import credential_refusals
from reconciler.source.repo import redact_url

DESIRED_STATE = "desired state"
"""How notifications name the subject of an event that concerns no model."""

# HTTP statuses worth another attempt: the receiver is overloaded or briefly broken.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Notification:
    """One notification, as every target renders it."""

    kind: str
    """error | preempted | unschedulable | invalid | recovered"""
    model: str | None
    message: str
    time: float
    host: str
    event: Mapping[str, object] = field(default_factory=dict)
    """the reconciler event it came from"""

    @property
    def subject(self) -> str:
        return f"model {self.model}" if self.model else DESIRED_STATE

    def title(self) -> str:
        return f"[reconciler@{self.host}] {self.kind}: {self.subject}"

    def text(self) -> str:
        return f"{self.title()}\n{self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "source": "reconciler",
            "host": self.host,
            "kind": self.kind,
            "model": self.model,
            "message": self.message,
            "time": self.time,
            "event": dict(self.event),
        }


class DeliveryError(Exception):
    """One delivery attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


# ---- delivery ------------------------------------------------------------------------------


class _Delivery:
    """How one target sends: its HTTP client (connections reused between notifications) or
    its SMTP settings."""

    def __init__(self, target: NotificationTarget, environ: Mapping[str, str]) -> None:
        self.target, self.environ = target, environ
        self.client = None
        if target.type != "email":
            self.client = httpx.Client(timeout=target.timeout_s, follow_redirects=False)

    def send(self, notification: Notification) -> None:
        refusals = credential_refusals(self.target, self.environ)
        if refusals:
            raise DeliveryError("refused: " + "; ".join(refusals), retryable=False)
        if self.client is None:
            send_email(self.target, notification, self.environ)
            return
        url = _url(self.target, self.environ)
        if self.target.type == "slack":
            post_json(self.client, url, {"text": notification.text()})
        else:
            post_json(self.client, url, notification.to_json())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _url(target: NotificationTarget, environ: Mapping[str, str]) -> str:
    """The target's URL; read at delivery time, so a rotated secret is picked up."""
    if target.url is not None:
        return target.url
    url = environ.get(target.url_env or "")
    if not url:
        raise DeliveryError(f"environment variable {target.url_env} is not set", retryable=False)
    return url


def post_json(client: httpx.Client, url: str, payload: Mapping[str, object]) -> None:
    """POST a JSON document. Messages name only the scheme and host: the path may be a secret
    (a Slack webhook URL is its own credential)."""
    where = redact_url(url)
    body = json.dumps(payload, default=str).encode()  # event extras may not be JSON types
    try:
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:  # a bad setting, not a blip
        raise DeliveryError(f"{where}: {type(exc).__name__}", retryable=False) from None
    except httpx.TimeoutException:
        raise DeliveryError(f"{where}: timed out", retryable=True) from None
    except httpx.TransportError as exc:
        raise DeliveryError(f"{where}: {type(exc).__name__}", retryable=True) from None
    if response.is_success:
        return
    retryable = response.status_code in _RETRY_STATUSES
    raise DeliveryError(f"{where}: HTTP {response.status_code}", retryable=retryable)


@dataclass(frozen=True)
class SmtpServer:
    """Where an e-mail goes and how: from the target's host and port, or from one URL secret."""

    host: str
    port: int
    tls: str
    """starttls | tls (implicit, smtps://) | none"""
    credentials: tuple[str, str] | None

    def __str__(self) -> str:  # never the credentials
        return f"smtp://{self.host}:{self.port}"


def smtp_server(target: NotificationTarget, environ: Mapping[str, str]) -> SmtpServer:
    """The server of an e-mail target, read at delivery time so that a rotated secret counts."""
    starttls = target.starttls is not False
    if target.url_env is None:
        tls = "starttls" if starttls else "none"
        credentials = _smtp_credentials(target, environ)
        return SmtpServer(target.host or "", target.smtp_port(), tls, credentials)
    url = environ.get(target.url_env)
    if not url:
        raise DeliveryError(f"environment variable {target.url_env} is not set", retryable=False)
    try:  # credential_refusals checked scheme and host; urlsplit raises on a bad port
        parts = urlsplit(url.strip())
        implicit = parts.scheme.lower() == "smtps"
        tls = "tls" if implicit else "starttls" if starttls else "none"
        port = parts.port or (465 if implicit else 587 if starttls else 25)
    except ValueError:
        raise DeliveryError(f"{target.url_env} holds no usable URL", retryable=False) from None
    credentials = None
    if parts.username is not None:
        credentials = (unquote(parts.username), unquote(parts.password or ""))
    return SmtpServer(parts.hostname or "", port, tls, credentials)


def send_email(
    target: NotificationTarget, notification: Notification, environ: Mapping[str, str]
) -> None:
    """Send one e-mail: STARTTLS (certificate verified) unless `starttls: false`, TLS from the
    start for an smtps:// URL, and log in when credentials are configured."""
    server = smtp_server(target, environ)
    message = _email(target, notification)
    where = str(server)
    context = ssl.create_default_context()
    try:
        smtp: smtplib.SMTP  # SMTP_SSL is one
        if server.tls == "tls":
            smtp = smtplib.SMTP_SSL(
                server.host, server.port, timeout=target.timeout_s, context=context
            )
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=target.timeout_s)
        with smtp:
            if server.tls == "starttls":
                smtp.starttls(context=context)
            if server.credentials:
                smtp.login(*server.credentials)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        retryable = all(400 <= code < 500 for code in codes)
        raise DeliveryError(f"{where}: recipients refused {codes}", retryable=retryable) from None
    except smtplib.SMTPResponseException as exc:  # 4xx: try again later; 5xx: permanent
        retryable = 400 <= exc.smtp_code < 500
        raise DeliveryError(f"{where}: SMTP {exc.smtp_code}", retryable=retryable) from None
    except (smtplib.SMTPNotSupportedError, ssl.SSLError) as exc:  # a setting to fix, not a blip
        raise DeliveryError(f"{where}: {exc}", retryable=False) from None
    except (OSError, smtplib.SMTPException) as exc:  # refused, reset, timed out, disconnected
        raise DeliveryError(f"{where}: {exc or type(exc).__name__}", retryable=True) from None


def _smtp_credentials(
    target: NotificationTarget, environ: Mapping[str, str]
) -> tuple[str, str] | None:
    if not target.username_env or not target.password_env:
        return None
    user, password = environ.get(target.username_env), environ.get(target.password_env)
    if not user or not password:
        missing = target.username_env if not user else target.password_env
        raise DeliveryError(f"environment variable {missing} is not set", retryable=False)
    return user, password


def _email(target: NotificationTarget, notification: Notification) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = notification.title()
    message["From"] = target.from_ or ""
    message["To"] = ", ".join(target.to)
    message["Date"] = formatdate(notification.time, localtime=True)
    message["Message-ID"] = make_msgid(domain=notification.host)
    details = json.dumps(dict(notification.event), indent=2, sort_keys=True, default=str)
    message.set_content(f"{notification.message}\n\nEvent:\n{details}\n")
    return message
