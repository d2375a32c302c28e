"""Notifications delivered to real local receivers: an HTTP server for the JSON webhook and the
Slack payload, an SMTP server (aiosmtpd) for e-mail, and a server that accepts connections and
never answers, which must not slow notify() nor the other targets.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from components import needs

from reconciler.core.cluster import NotificationTarget
from reconciler.notify import Notifier

FAST = {"retries": 3, "backoff_s": 0.05, "max_backoff_s": 0.2}
"""Retry settings that keep the tests quick; the behaviour is the daemon's."""


def event(kind: str, model: str | None = "qwen2-7b", message: str = "boom") -> dict[str, Any]:
    return {"time": 1700000000.0, "kind": kind, "model": model, "message": message}


HANG_S = 30.0
"""what a step that should return at once may take before the test calls it a hang"""


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ---- an HTTP receiver -----------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: queue.Queue[Request] = field(default_factory=queue.Queue)
    statuses: list[int] = field(default_factory=list)
    """statuses to answer, in order; 200 once they run out"""

    def next(self, timeout_s: float = 10.0) -> Request:
        return self.requests.get(timeout=timeout_s)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            request = Request(self.path, dict(self.headers), self.rfile.read(length))
            rec = box["receiver"]
            status = rec.statuses.pop(0) if rec.statuses else 200
            rec.requests.put(request)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box["receiver"] = Receiver(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield box["receiver"]
    server.shutdown()
    server.server_close()


# ---- a server that accepts and never answers ------------------------------------------------


@dataclass
class Hanging:
    url: str
    accepted: threading.Event


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = threading.Event()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = listener.accept()
                held.append(conn)  # read nothing, answer nothing
                accepted.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield Hanging(f"http://127.0.0.1:{listener.getsockname()[1]}/hook", accepted)
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


# ---- an SMTP server -------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[Envelope, Message]] = queue.Queue()
        self.logins: list[tuple[bytes, bytes]] = []
        """every user name and password a client sent, right or wrong"""

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.logins.append((data.login, data.password))
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"rec", b"s3cret")
        return AuthResult(success=ok, handled=False)  # not handled: the server answers 535

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        self.messages.put((envelope, message_from_bytes(envelope.content)))  # type: ignore[arg-type]
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_server(*, login: bool = False, **kwargs: Any) -> Iterator[tuple[Mailbox, int]]:
    """aiosmtpd on 127.0.0.1; with `login`, it takes AUTH (rec / s3cret) without TLS."""
    mailbox = Mailbox()
    port = free_port()
    if login:
        kwargs.update(authenticator=mailbox.authenticate, auth_require_tls=False)
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


USER, PASSWORD = "RECONCILER_SECRET_T_SMTP_USER", "RECONCILER_SECRET_T_SMTP_PASSWORD"
LOGIN = {"username_env": USER, "password_env": PASSWORD}
BOUND_HERE = {f"{USER}_HOSTS": "127.0.0.1", f"{PASSWORD}_HOSTS": "127.0.0.1"}
"""the host lets the credentials go to the test's SMTP server"""


def email_target(port: int, **fields: Any) -> NotificationTarget:
    return NotificationTarget.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "from": "reconciler@example.com",
            "to": ["oncall@example.com", "gpu-team@example.com"],
            "starttls": False,
            "timeout_s": 5,
            **fields,
        }
    )


# ---- webhook and Slack ----------------------------------------------------------------------


def test_webhook_receives_the_json_document(receiver: Receiver) -> None:
    target = NotificationTarget(type="webhook", url=f"{receiver.url}/reconciler")
    notifier = Notifier([target], host="gpu1", **FAST)
    notifier.notify(event("gave-up", message="engine exited with code 1; gave up"))
    request = receiver.next()
    assert request.path == "/reconciler"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {
        "source": "reconciler",
        "host": "gpu1",
        "kind": "error",
        "model": "qwen2-7b",
        "message": "engine exited with code 1; gave up",
        "time": 1700000000.0,
        "event": event("gave-up", message="engine exited with code 1; gave up"),
    }
    assert notifier.close()
    assert notifier.counts()[("webhook-0", "sent")] == 1


def test_slack_receives_text_from_a_url_in_the_environment(receiver: Receiver) -> None:
    target = NotificationTarget(
        type="slack", url_env="RECONCILER_SECRET_SLACK_URL", events=["preempted"]
    )
    environ = {"RECONCILER_SECRET_SLACK_URL": f"{receiver.url}/services/T0/B0/secret"}
    notifier = Notifier([target], environ=environ, host="gpu1", **FAST)
    notifier.notify(event("error"))  # not subscribed
    notifier.notify(event("preempt", model="small", message="preempted by qwen2-7b (priority 8)"))
    request = receiver.next()
    assert request.path == "/services/T0/B0/secret"
    assert request.json() == {
        "text": "[reconciler@gpu1] preempted: model small\npreempted by qwen2-7b (priority 8)"
    }
    assert notifier.close()
    assert receiver.requests.empty()


def test_a_failing_receiver_is_retried_with_backoff(receiver: Receiver) -> None:
    receiver.statuses = [503, 502]
    notifier = Notifier([NotificationTarget(type="webhook", url=receiver.url)], **FAST)
    notifier.notify(event("error"))
    bodies = [receiver.next().json()["kind"] for _ in range(3)]
    assert bodies == ["error"] * 3
    assert notifier.close()
    assert notifier.counts()[("webhook-0", "sent")] == 1


def test_a_rejected_notification_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [404]
    notifier = Notifier([NotificationTarget(type="webhook", url=receiver.url)], **FAST)
    notifier.notify(event("error"))
    receiver.next()
    assert notifier.close()
    assert notifier.counts()[("webhook-0", "failed")] == 1
    assert receiver.requests.empty()


# ---- e-mail ---------------------------------------------------------------------------------


def test_email_is_delivered_over_smtp_with_login() -> None:
    with smtp_server(login=True) as (mailbox, port):
        target = email_target(port, **LOGIN)
        environ = {USER: "rec", PASSWORD: "s3cret", **BOUND_HERE}
        notifier = Notifier([target], environ=environ, host="gpu1", **FAST)
        notifier.notify(event("desired-invalid", model=None, message="2 problem(s)"))
        envelope, message = mailbox.messages.get(timeout=10)
        assert notifier.close()
    assert envelope.mail_from == "reconciler@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "gpu-team@example.com"]
    assert message["Subject"] == "[reconciler@gpu1] invalid: desired state"
    assert message["To"] == "oncall@example.com, gpu-team@example.com"
    body = message.get_payload(decode=True).decode().replace("\r\n", "\n")  # type: ignore[union-attr]
    assert body.startswith("2 problem(s)\n")
    assert '"kind": "desired-invalid"' in body


def test_email_takes_server_and_login_from_one_url_secret() -> None:
    with smtp_server(login=True) as (mailbox, port):
        fields = email_target(port).model_dump(exclude={"host", "port"}, exclude_none=True)
        target = NotificationTarget.model_validate({**fields, "url_env": "RECONCILER_SECRET_URL"})
        environ = {"RECONCILER_SECRET_URL": f"smtp://rec:s3cr%65t@127.0.0.1:{port}"}
        notifier = Notifier([target], environ=environ, **FAST)
        notifier.notify(event("error"))
        envelope, _ = mailbox.messages.get(timeout=10)
        assert notifier.close()
    assert mailbox.logins == [(b"rec", b"s3cret")]  # percent-encoding decoded
    assert envelope.rcpt_tos == ["oncall@example.com", "gpu-team@example.com"]


def test_wrong_smtp_credentials_fail_without_retrying() -> None:
    with smtp_server(login=True) as (mailbox, port):
        target = email_target(port, **LOGIN)
        environ = {USER: "rec", PASSWORD: "wrong", **BOUND_HERE}
        notifier = Notifier([target], environ=environ, **FAST)
        notifier.notify(event("error"))
        assert notifier.close(timeout_s=10)
    assert notifier.counts()[("email-0", "failed")] == 1
    assert mailbox.messages.empty()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@needs("openssl", "apt-get install -y openssl", shutil.which("openssl") is not None)
def test_email_over_starttls_verifies_the_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    # OpenSSL reads SSL_CERT_FILE when the client loads its default CAs: trust our certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with smtp_server(tls_context=context, require_starttls=True) as (mailbox, port):
        notifier = Notifier([email_target(port, starttls=True)], **FAST)
        notifier.notify(event("error"))
        envelope, _ = mailbox.messages.get(timeout=10)
        assert notifier.close()
    assert envelope.rcpt_tos == ["oncall@example.com", "gpu-team@example.com"]


# ---- a target that hangs --------------------------------------------------------------------


def test_a_hanging_target_neither_delays_notify_nor_the_other_targets(
    hanging: Hanging, receiver: Receiver
) -> None:
    # The hanging delivery stays in flight for the whole test (its timeout is far beyond the
    # test's waits), so anything that waited for it would hang: that is what is checked, with
    # generous deadlines rather than a speed limit a loaded machine could miss.
    with smtp_server() as (mailbox, port):
        targets = [
            NotificationTarget(type="webhook", url=hanging.url, timeout_s=HANG_S * 4),
            NotificationTarget(type="slack", url=f"{receiver.url}/slack"),
            email_target(port),
        ]
        notifier = Notifier(targets, **FAST)
        notifier.notify(event("error"))
        assert hanging.accepted.wait(HANG_S)  # the hanging delivery is in flight now
        calls = threading.Thread(
            target=lambda: [notifier.notify(event("preempt", model=f"m{i}")) for i in range(20)]
        )
        calls.start()
        calls.join(HANG_S)
        assert not calls.is_alive(), "notify() waited for a hanging target"
        paths = [receiver.next(timeout_s=HANG_S).path for _ in range(21)]
        mails = [mailbox.messages.get(timeout=HANG_S) for _ in range(21)]
        assert paths == ["/slack"] * 21 and len(mails) == 21
        counts = notifier.counts()
        pending = (counts[("webhook-0", "sent")], counts[("webhook-0", "failed")])
        assert pending == (0, 0), "the others were served while the hanging one was in flight"
        assert notifier.close(timeout_s=0.2) is False  # the hanging queue cannot drain
    counts = notifier.counts()
    assert counts[("slack-1", "sent")] == counts[("email-2", "sent")] == 21
    assert counts[("webhook-0", "sent")] == 0


def test_a_full_queue_drops_and_counts(hanging: Hanging) -> None:
    target = NotificationTarget(type="webhook", url=hanging.url, timeout_s=5)
    notifier = Notifier([target], queue_size=2, **FAST)
    notifier.notify(event("error", model="first"))
    assert hanging.accepted.wait(5)  # the worker holds the first one; the queue is empty
    for i in range(4):
        notifier.notify(event("preempt", model=f"m{i}"))
    assert notifier.counts()[("webhook-0", "dropped")] == 2  # 2 queued, 2 dropped
    closed: list[bool] = []
    closing = threading.Thread(target=lambda: closed.append(notifier.close(timeout_s=0.3)))
    closing.start()
    closing.join(HANG_S)
    assert closed == [False], "close() gives up on a queue that cannot drain, it does not hang"


def test_close_drains_what_is_queued(receiver: Receiver) -> None:
    notifier = Notifier([NotificationTarget(type="webhook", url=receiver.url)], **FAST)
    for i in range(10):
        notifier.notify(event("preempt", model=f"m{i}"))
    assert notifier.close(timeout_s=10)
    models = [receiver.next(timeout_s=0).json()["model"] for _ in range(10)]
    assert models == [f"m{i}" for i in range(10)]  # all of them, in order
