"""The HTTP API of `reconciler run`, over real HTTP against a real daemon subprocess.

One daemon per module (starting one takes seconds): `alpha` and `beta` run as stand-in vLLM
engines on a simulated 8000 MiB GPU, `huge` cannot be placed. The loop is quiet (`--resync 3600`,
slow health checks), so a pass happens only when something asks for one: a test can tell that a
refused request changed nothing.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apply_support import stand_in, wait_for
from daemon_support import (
    Daemon,
    commit,
    free_port,
    git,
    push_body,
    running_daemon,
    sign,
)
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "test-token-7f3a"
SECRET = "webhook-secret-91c2"
QUIET = {"health_check": {"interval_s": 3600}}  # no liveness pass during the module


def models() -> list[dict[str, Any]]:
    return [
        stand_in("alpha", priority=7, **QUIET),
        stand_in("beta", priority=3, **QUIET),
        stand_in("huge", resource_requirements={"gpu_memory_mb": 100_000}, **QUIET),
    ]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("api")
    with running_daemon(root, models(), token=TOKEN, secret=SECRET) as d:
        d.wait_ready()
        d.wait_statuses({"alpha": "running", "beta": "running", "huge": "stopped"})
        yield d


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """No token, no webhook secret, no models: the loopback-only defaults."""
    root = tmp_path_factory.mktemp("api-open")
    with running_daemon(root, []) as d:
        d.wait_ready()
        yield d


def quiet_for(daemon: Daemon, seconds: float = 1.0) -> int:
    """The pass count after `seconds` without a trigger; fails if a pass ran meanwhile."""
    before = daemon.passes()
    time.sleep(seconds)
    after = daemon.passes()
    assert after == before, f"{after - before} pass(es) ran although nothing asked for one"
    return after


def wait_passes(daemon: Daemon, beyond: int, timeout_s: float = 15.0) -> None:
    assert wait_for(lambda: daemon.passes() > beyond, timeout_s, 0.1), (
        f"no pass after {beyond}\n{daemon.log()}"
    )


def events(daemon: Daemon, **params: Any) -> list[dict[str, Any]]:
    response = daemon.get("/api/v1/events", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()


# ---- probes and metrics ----------------------------------------------------------------------


def test_healthz_and_readyz(daemon: Daemon) -> None:
    assert daemon.json("/healthz") == {"status": "ok"}
    ready = daemon.json("/readyz")
    assert ready["ready"] is True and ready["passes"] >= 1


def test_metrics_are_prometheus_text_with_the_reconcilers_families(daemon: Daemon) -> None:
    response = daemon.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert "reconciler_model_status" in families, (
        f"no reconciler_* metrics (is daemon.metrics wired?): {sorted(families)[:20]}"
    )
    running = {
        s.labels["model"]
        for s in families["reconciler_model_status"].samples
        if s.labels.get("status") == "running" and s.value == 1
    }
    assert {"alpha", "beta"} <= running


# ---- reads -----------------------------------------------------------------------------------


def test_models_lists_every_model_with_its_status(daemon: Daemon) -> None:
    listed = {m["id"]: m for m in daemon.json("/api/v1/models")}
    assert set(listed) == {"alpha", "beta", "huge"}
    alpha = listed["alpha"]
    assert alpha["status"] == "running"
    assert alpha["priority"] == 7 and alpha["framework"] == "vllm"
    assert alpha["gpus"] == [0] and alpha["memory_mb"] == 1000
    assert isinstance(alpha["port"], int)
    assert alpha["restarts"] == 0 and alpha["last_error"] is None
    assert alpha["uptime_s"] is not None and alpha["uptime_s"] >= 0
    huge = listed["huge"]
    assert huge["status"] == "stopped" and huge["gpus"] == []
    assert huge["uptime_s"] is None
    assert huge["reason"] and "100000" in huge["reason"], huge


def test_model_detail_has_spec_placement_and_logs(daemon: Daemon) -> None:
    alpha = daemon.json("/api/v1/models/alpha")
    assert alpha["spec"]["id"] == "alpha" and alpha["spec"]["priority"] == 7
    assert alpha["placement"]["gpus"] == [0] and alpha["placement"]["memory_mb"] == 1000
    assert alpha["placement"]["port"] == alpha["port"]
    assert alpha["pid"] and alpha["restarts_in_a_row"] == 0
    assert any('"fake_vllm"' in line for line in alpha["logs"]), alpha["logs"]


@pytest.mark.parametrize("model_id", ["nope", "ALPHA", "alpha.yaml", "..", "%2e%2e%2fstate"])
def test_an_unknown_model_is_404(daemon: Daemon, model_id: str) -> None:
    response = daemon.get(f"/api/v1/models/{model_id}")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_gpus_show_memory_by_model(daemon: Daemon) -> None:
    (gpu,) = daemon.json("/api/v1/gpus")
    assert gpu["index"] == 0 and gpu["memory_total_mb"] == 8000 and gpu["declared"] is True
    assert gpu["reserved_mb"] == 2000 and gpu["memory_used_mb"] == 2000
    assert gpu["memory_free_mb"] == 6000
    assert {m["id"]: m["memory_mb"] for m in gpu["models"]} == {"alpha": 1000, "beta": 1000}


def test_plan_of_a_converged_host_is_empty(daemon: Daemon) -> None:
    plan = daemon.json("/api/v1/plan")
    assert plan["valid"] is True
    assert plan["actions"] == [], plan
    assert [u["model"] for u in plan["unschedulable"]] == ["huge"]
    assert plan["gpus"][0]["used_mb_after"] == 2000


def test_status_names_the_applied_commit(daemon: Daemon) -> None:
    status = daemon.json("/api/v1/status")
    head = git(daemon.host.root, "rev-parse", "HEAD")
    assert status["ready"] is True and status["valid"] is True and status["problems"] == []
    assert status["revision"]["sha"] == head, status["revision"]
    assert status["revision"]["subject"] == "initial desired state"
    assert "Ada Operator" in status["revision"]["author"]
    assert status["models"] == {"running": 2, "stopped": 1}


def test_history_lists_the_commits(daemon: Daemon) -> None:
    history = daemon.json("/api/v1/history")
    head = git(daemon.host.root, "rev-parse", "HEAD")
    assert history, "no history"
    assert history[0]["sha"] == head and history[0]["subject"] == "initial desired state"
    assert daemon.get("/api/v1/history", params={"limit": 0}).status_code == 422


def test_events_are_recent_and_filterable(daemon: Daemon) -> None:
    every = events(daemon)
    assert {"alpha", "beta"} <= {e["model"] for e in every if e["kind"] == "start"}
    ids = [e["id"] for e in every]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len(events(daemon, limit=2)) == 2
    assert events(daemon, limit=2) == every[-2:]
    assert events(daemon, since=time.time() + 3600) == []
    assert {e["model"] for e in events(daemon, model="alpha")} == {"alpha"}
    for bad in ({"limit": 0}, {"limit": 100_000}, {"since": "yesterday"}):
        assert daemon.get("/api/v1/events", params=bad).status_code == 422


def read_stream(
    daemon: Daemon, params: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[queue.Queue[dict[str, Any]], threading.Event, threading.Event]:
    """Read the event stream in a thread: (events received, connected, stop)."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    connected, stop = threading.Event(), threading.Event()

    def run() -> None:
        timeout = httpx.Timeout(10.0, read=1.0)
        with (
            httpx.Client(base_url=daemon.url, timeout=timeout) as client,
            client.stream(
                "GET", "/api/v1/events/stream", params=params, headers=headers or {}
            ) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            connected.set()
            lines = response.iter_lines()
            while not stop.is_set():
                try:
                    line = next(lines)
                except httpx.ReadTimeout:
                    continue  # no event within a second: look at `stop` again
                except StopIteration:
                    return
                if line.startswith("data: "):
                    received.put(json.loads(line.removeprefix("data: ")))

    threading.Thread(target=run, daemon=True).start()
    assert connected.wait(10), "the event stream did not open"
    return received, connected, stop


def wait_event(
    received: queue.Queue[dict[str, Any]], kind: str, model: str | None, timeout_s: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        try:
            event = received.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(event)
        if event["kind"] == kind and event["model"] == model:
            return event
    raise AssertionError(f"no {kind} event for {model} on the stream; saw {seen}")


def test_stream_replays_from_a_cursor(daemon: Daemon) -> None:
    first = events(daemon)[0]
    received, _, stop = read_stream(daemon, {"after": 0})
    try:
        event = received.get(timeout=10)
        assert event == first
    finally:
        stop.set()
    # Last-Event-ID (what a reconnecting EventSource sends) wins over `after`
    received, _, stop = read_stream(daemon, {"after": 0}, {"Last-Event-ID": str(first["id"])})
    try:
        assert received.get(timeout=10) == events(daemon)[1]
    finally:
        stop.set()


# ---- actions need the token ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
    ids=["missing", "wrong", "longer", "empty", "basic", "no-scheme"],
)
def test_actions_without_the_right_token_are_401_and_do_nothing(
    daemon: Daemon, headers: dict[str, str]
) -> None:
    before = quiet_for(daemon, 0.3)
    restarts = len(events(daemon, kind="restart-requested"))
    for path in ("/api/v1/reconcile", "/api/v1/models/beta/restart"):
        response = httpx.post(daemon.url + path, headers=headers, timeout=10)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert quiet_for(daemon, 1.0) == before
    assert len(events(daemon, kind="restart-requested")) == restarts


def test_reconcile_with_the_token_runs_a_pass(daemon: Daemon) -> None:
    before = quiet_for(daemon, 0.3)
    response = httpx.post(daemon.url + "/api/v1/reconcile", headers=daemon.auth(), timeout=10)
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    wait_passes(daemon, before)
    assert "api" in daemon.json("/api/v1/status")["last_pass_reasons"]


def test_restart_with_the_token_restarts_that_engine_only(daemon: Daemon) -> None:
    old = {m: daemon.json(f"/api/v1/models/{m}")["pid"] for m in ("alpha", "beta")}
    received, _, stop = read_stream(daemon, {})
    try:
        url = daemon.url + "/api/v1/models/beta/restart"
        response = httpx.post(url, headers=daemon.auth(), timeout=10)
        assert response.status_code == 202, response.text
        wait_event(received, "restart-requested", "beta")
        wait_event(received, "start", "beta")
    finally:
        stop.set()

    def restarted() -> bool:
        beta = daemon.json("/api/v1/models/beta")
        return beta["status"] == "running" and beta["pid"] not in (None, old["beta"])

    assert wait_for(restarted, 20, 0.2), daemon.json("/api/v1/models/beta")
    assert daemon.json("/api/v1/models/alpha")["pid"] == old["alpha"]


def test_restart_of_an_unknown_model_is_404(daemon: Daemon) -> None:
    for model_id in ("nope", "huge2", ".."):
        url = f"{daemon.url}/api/v1/models/{model_id}/restart"
        response = httpx.post(url, headers=daemon.auth(), timeout=10)
        assert response.status_code == 404, (model_id, response.text)
    assert not (daemon.host.state_dir / "restart-requests" / "nope").exists()


def test_no_route_changes_a_spec(daemon: Daemon) -> None:
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        response = httpx.request(method, daemon.url + "/api/v1/models/alpha", timeout=10)
        assert response.status_code == 405, (method, response.status_code)
    spec = daemon.json("/openapi.json")
    writes = sorted(
        (path, method) for path, item in spec["paths"].items() for method in item if method != "get"
    )
    assert writes == [
        ("/api/v1/hooks/git", "post"),
        ("/api/v1/models/{model_id}/restart", "post"),
        ("/api/v1/reconcile", "post"),
    ]


def test_openapi_document_describes_every_endpoint(daemon: Daemon) -> None:
    spec = daemon.json("/openapi.json")
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/status",
        "/api/v1/models",
        "/api/v1/models/{model_id}",
        "/api/v1/gpus",
        "/api/v1/plan",
        "/api/v1/events",
        "/api/v1/events/stream",
        "/api/v1/history",
    ):
        assert "get" in spec["paths"][path], path
    models = spec["paths"]["/api/v1/models"]["get"]["responses"]["200"]
    schema = models["content"]["application/json"]["schema"]
    assert schema["type"] == "array" and schema["items"]["$ref"].endswith("/ModelSummary")
    restart = spec["paths"]["/api/v1/models/{model_id}/restart"]["post"]["responses"]
    assert {"202", "401", "404"} <= set(restart)
    hook = spec["paths"]["/api/v1/hooks/git"]["post"]["responses"]
    assert {"202", "400", "401", "413", "503"} <= set(hook)


# ---- the git webhook -------------------------------------------------------------------------


def post_hook(daemon: Daemon, body: bytes, headers: dict[str, Any]) -> httpx.Response:
    headers = {"Content-Type": "application/json", **headers}
    return httpx.post(daemon.url + "/api/v1/hooks/git", content=body, headers=headers, timeout=10)


def github(body: bytes, secret: str = SECRET, event: str = "push") -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={sign(secret, body)}"}


def gitea(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Gitea-Event": "push", "X-Gitea-Signature": sign(secret, body)}


@pytest.mark.parametrize("style", [github, gitea], ids=["github", "gitea"])
def test_a_signed_push_to_the_branch_triggers_a_pass(daemon: Daemon, style: Any) -> None:
    before = quiet_for(daemon, 0.3)
    hooks = len(events(daemon, kind="webhook"))
    body = push_body("main", after="c0ffee" * 6 + "abcd")
    response = post_hook(daemon, body, style(body))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    wait_passes(daemon, before)
    assert "webhook" in daemon.json("/api/v1/status")["last_pass_reasons"]
    assert len(events(daemon, kind="webhook")) == hooks + 1


def test_a_ping_is_answered(daemon: Daemon) -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    response = post_hook(daemon, body, github(body, event="ping"))
    assert response.status_code == 200 and response.json()["status"] == "pong"


def test_pushes_to_other_branches_are_ignored(daemon: Daemon) -> None:
    before = quiet_for(daemon, 0.3)
    for ref_body in (push_body("feature"), json.dumps({"ref": "refs/tags/v1"}).encode()):
        response = post_hook(daemon, ref_body, github(ref_body))
        assert response.status_code == 202 and response.json()["status"] == "ignored"
    assert quiet_for(daemon, 1.0) == before


def bad_signatures() -> list[tuple[str, bytes, dict[str, Any]]]:
    good = push_body("main")
    altered = good.replace(b"refs/heads/main", b"refs/heads/main ")
    return [
        ("missing", good, {"X-GitHub-Event": "push"}),
        ("wrong secret", good, github(good, secret="not-the-secret")),
        ("replayed, altered body", altered, github(good)),
        ("gitea, altered body", altered, gitea(good)),
        ("not hex", good, {"X-Hub-Signature-256": "sha256=zz"}),
        ("sha1", good, {"X-Hub-Signature": "sha1=" + sign(SECRET, good)[:40]}),
        ("empty", good, {"X-Gitea-Signature": ""}),
        ("non-ascii", good, {"X-Gitea-Signature": "é".encode("latin-1") * 64}),
    ]


@pytest.mark.parametrize(
    "body,headers", [c[1:] for c in bad_signatures()], ids=[c[0] for c in bad_signatures()]
)
def test_a_bad_signature_is_401_and_does_nothing(
    daemon: Daemon, body: bytes, headers: dict[str, Any]
) -> None:
    before = quiet_for(daemon, 0.3)
    hooks = len(events(daemon, kind="webhook"))
    response = post_hook(daemon, body, headers)
    assert response.status_code == 401, response.text
    assert quiet_for(daemon, 1.0) == before
    assert len(events(daemon, kind="webhook")) == hooks


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_a_signed_malformed_body_is_400(daemon: Daemon, body: bytes) -> None:
    before = quiet_for(daemon, 0.3)
    response = post_hook(daemon, body, github(body))
    assert response.status_code == 400, response.text
    assert quiet_for(daemon, 0.5) == before


def nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


PUSH_HEAD = b'{"ref": "refs/heads/main", "after": '
CHOKING_BODIES = {
    # what makes a JSON parser raise (or parse into something that fails later), under 1 MiB
    "nested arrays": nested(100_000),
    "nested in a push": PUSH_HEAD + nested(50_000) + b"}",
    "nested objects": b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
    "invalid utf-8 in a string": b'{"ref": "refs/heads/main\xff\xfe"}',
    "lone surrogate": b'{"ref": "refs/heads/\\ud800"}',
    "huge integer": PUSH_HEAD + b"9" * 5000 + b"}",
    "huge float": PUSH_HEAD + b"1e999999}",
    "NaN": PUSH_HEAD + b"NaN}",
    "a string": b'"refs/heads/main"',
    "a number": b"12345",
    "null": b"null",
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CHOKING_FORMS = {
    "form, invalid utf-8": b"payload=%7B%7D\xff",
    "form, nested payload": b"payload=" + b"%5B" * 50_000 + b"%5D" * 50_000,
    "form, no payload": b"ref=refs%2Fheads%2Fmain",
    "form, lone surrogate": b"payload=%7B%22ref%22%3A%22%5Cud800%22%7D",
}


@pytest.mark.parametrize("body", CHOKING_BODIES.values(), ids=CHOKING_BODIES.keys())
def test_a_signed_body_the_parser_chokes_on_is_400(daemon: Daemon, body: bytes) -> None:
    before = quiet_for(daemon, 0.3)
    response = post_hook(daemon, body, github(body))
    assert response.status_code == 400, response.text[:300]
    assert response.json()["detail"].startswith("malformed webhook body")
    assert quiet_for(daemon, 0.5) == before
    assert daemon.get("/healthz").status_code == 200


@pytest.mark.parametrize("body", CHOKING_FORMS.values(), ids=CHOKING_FORMS.keys())
def test_a_signed_form_the_parser_chokes_on_is_400(daemon: Daemon, body: bytes) -> None:
    before = quiet_for(daemon, 0.3)
    response = post_hook(daemon, body, {**github(body), **FORM})
    assert response.status_code == 400, response.text[:300]
    assert quiet_for(daemon, 0.5) == before


@pytest.mark.parametrize("body", CHOKING_BODIES.values(), ids=CHOKING_BODIES.keys())
def test_actions_ignore_bodies_the_parser_chokes_on(daemon: Daemon, body: bytes) -> None:
    """The action routes take no body: whatever comes with a request is never a 500."""
    headers = {**daemon.auth(), "Content-Type": "application/json"}
    url = daemon.url + "/api/v1/models/no-such-model/restart"
    response = httpx.post(url, content=body, headers=headers, timeout=10)
    assert response.status_code == 404, response.text[:300]
    before = daemon.passes()
    response = httpx.post(
        daemon.url + "/api/v1/reconcile", content=body, headers=headers, timeout=10
    )
    assert response.status_code == 202, response.text[:300]
    wait_passes(daemon, before)


@pytest.mark.parametrize("path", ["%ff%fe", "%ed%a0%80", "a%00b", "x" * 254])
def test_odd_model_names_in_paths_are_4xx(daemon: Daemon, path: str) -> None:
    assert daemon.get(f"/api/v1/models/{path}").status_code in (404, 422)
    url = f"{daemon.url}/api/v1/models/{path}/restart"
    response = httpx.post(url, headers=daemon.auth(), timeout=10)
    assert response.status_code in (404, 422), response.text[:300]


def raw_request(daemon: Daemon, head: str, body_chunks: list[bytes]) -> bytes:
    """Send a request by hand (a client that stops sending once answered would hide a 413)."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused midway: the answer is what matters
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def test_a_huge_body_is_413_and_the_daemon_lives_on(daemon: Daemon) -> None:
    before = quiet_for(daemon, 0.3)
    size = 8 * 1024 * 1024
    head = (
        "POST /api/v1/hooks/git HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    )
    answer = raw_request(daemon, head, [b"x" * 65536])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # the same without a declared length: refused once more than the limit has arrived
    head = (
        "POST /api/v1/hooks/git HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        f"X-Hub-Signature-256: sha256={'0' * 64}\r\n\r\n"
    )
    chunk = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 32 + [b"0\r\n\r\n"]
    answer = raw_request(daemon, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # and through the other POSTs
    response = httpx.post(
        daemon.url + "/api/v1/reconcile", content=b"x" * (2 * 1024 * 1024), headers=daemon.auth()
    )
    assert response.status_code == 413
    assert daemon.json("/healthz") == {"status": "ok"}
    assert quiet_for(daemon, 0.5) == before
    assert daemon.statuses()["alpha"] == "running"


# ---- an invalid desired state is shown, and changes nothing ----------------------------------


def test_an_invalid_commit_shows_its_problems(daemon: Daemon) -> None:
    host = daemon.host
    pid = daemon.json("/api/v1/models/alpha")["pid"]
    path = host.desired / "models" / "alpha.yaml"
    good = path.read_text()
    path.write_text(good.replace('"priority": 7', '"priorty": 7'))
    commit(host, "typo in alpha")
    try:

        def invalid() -> dict[str, Any] | None:
            status = daemon.json("/api/v1/status")
            return status if status["problems"] else None

        status = wait_for(invalid, 20, 0.2)
        assert status, daemon.json("/api/v1/status")
        (problem,) = [p for p in status["problems"] if p["severity"] == "error"]
        assert problem["file"].endswith("alpha.yaml") and problem["line"] >= 1
        assert "priorty" in problem["field"] + problem["message"]
        assert daemon.json("/api/v1/plan")["valid"] is False
        alpha = daemon.json("/api/v1/models/alpha")
        assert alpha["status"] == "running" and alpha["pid"] == pid
        assert alpha["spec"]["priority"] == 7  # the last valid spec stays in force
    finally:
        path.write_text(good)
        commit(host, "fix the typo")
    assert wait_for(lambda: daemon.json("/api/v1/status")["valid"], 20, 0.2)


# ---- without a token: loopback only, and never on behalf of another web site ------------------


def test_without_a_token_loopback_clients_may_act(open_daemon: Daemon) -> None:
    before = open_daemon.passes()
    response = httpx.post(open_daemon.url + "/api/v1/reconcile", timeout=10)
    assert response.status_code == 202, response.text
    wait_passes(open_daemon, before)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Host": "evil.example"},
    ],
    ids=["origin", "null-origin", "cross-site", "same-site", "rebound-host"],
)
def test_without_a_token_browser_cross_site_requests_are_refused(
    open_daemon: Daemon, headers: dict[str, str]
) -> None:
    response = httpx.post(open_daemon.url + "/api/v1/reconcile", headers=headers, timeout=10)
    assert response.status_code == 403, response.text


def test_the_dashboards_own_origin_may_act(open_daemon: Daemon) -> None:
    headers = {"Origin": open_daemon.url, "Sec-Fetch-Site": "same-origin"}
    response = httpx.post(open_daemon.url + "/api/v1/reconcile", headers=headers, timeout=10)
    assert response.status_code == 202, response.text


def test_without_a_secret_the_webhook_is_503(open_daemon: Daemon) -> None:
    body = push_body("main")
    response = post_hook(open_daemon, body, github(body))
    assert response.status_code == 503
    assert "RECONCILER_WEBHOOK_SECRET" in response.json()["detail"]


def test_run_refuses_a_public_address_without_a_token(open_daemon: Daemon) -> None:
    host = open_daemon.host
    env = {k: v for k, v in host.cli_env().items() if k != "RECONCILER_API_TOKEN"}
    done = subprocess.run(
        [*host.command("run", str(host.desired)), "--listen", f"0.0.0.0:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert "RECONCILER_API_TOKEN" in done.stderr + done.stdout


# ---- the dashboard is served ----------------------------------------------------------------


def test_dashboard_and_its_assets_are_served(daemon: Daemon) -> None:
    page = daemon.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in (("/web/app.js", "javascript"), ("/web/style.css", "text/css")):
        response = daemon.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"], asset


def test_foreign_lines_in_the_event_log_are_skipped(daemon: Daemon) -> None:
    before = events(daemon)
    path = daemon.host.state_dir / "events.jsonl"
    with open(path, "a", encoding="utf-8") as log:
        log.write("not json at all\n")
        log.write('{"time": NaN, "kind": "start", "model": "alpha", "message": ""}\n')
        log.write('{"time": 1, "kind": 5}\n')
        log.write('{"time": 1, "kind": "start", "model": 7, "message": ""}\n')
        log.write("[1, 2, 3]\n")
    assert events(daemon) == before
    received, _, stop = read_stream(daemon, {"after": before[-1]["id"]})
    try:
        httpx.post(daemon.url + "/api/v1/models/alpha/restart", headers=daemon.auth(), timeout=10)
        event = wait_event(received, "restart-requested", "alpha")
        assert event["id"] > path.stat().st_size - 4096
    finally:
        stop.set()
    daemon.wait_statuses({"alpha": "running"})


def test_sigterm_ends_open_event_streams(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A dashboard left open must not keep the daemon from stopping."""
    with running_daemon(tmp_path_factory.mktemp("api-stop"), []) as d:
        d.wait_ready()
        read_stream(d, {"after": 0})  # and never told to stop
        began = time.monotonic()
        assert d.stop() == 0, d.log()
        assert time.monotonic() - began < 10, "the daemon took long to stop"
