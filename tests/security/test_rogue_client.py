"""Issue 18, item 5: the gateway trusts no client. Each case drives a real gateway process (the
daemon's GatewayService, or `python -m reconciler.gateway` itself where the test must set its
open-files limit) in front of the fast OpenAI-shaped upstream, over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from apply_support import managed_host, wait_for
from daemon_support import Daemon, free_port, init_repo
from gateway_support import KEY, KEY_ENV, REPO, Harness, Upstream, harness, model

from reconciler.gateway.routes import ApiKey, GatewaySettings, Routes, write_routes


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as h:
        yield h


STATS_ASKED: dict[int, int] = {}


def requests_seen(upstream: Upstream) -> int:
    """Requests the upstream has answered, not counting the /stats requests that asked."""
    STATS_ASKED[upstream.port] = STATS_ASKED.get(upstream.port, 0) + 1
    return upstream.stats()["requests"] - STATS_ASKED[upstream.port]


def raw_request(port: int, head: bytes, timeout_s: float = 30) -> tuple[int, bytes]:
    """Send bytes as they are (no client library normalises the path) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def error_of(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert error["message"] and error["type"], response.text
    return error


def test_web_pages_cannot_use_a_gateway_without_keys(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast())
    gw.write(model("m", up.url))
    body = json.dumps({"model": "m", "messages": []}).encode()
    url = f"{gw.base}/v1/chat/completions"
    json_type = {"Content-Type": "application/json"}
    port = gw.base.rpartition(":")[2]
    refused = [
        # a "simple" cross-site form post needs no CORS preflight
        ({"Content-Type": "text/plain"}, 415),
        ({}, 415),
        ({**json_type, "Origin": "http://attacker.example"}, 403),
        ({**json_type, "Origin": "null"}, 403),
        ({**json_type, "Sec-Fetch-Site": "cross-site"}, 403),
        # DNS rebinding: attacker.example resolves to 127.0.0.1, the browser sends its name
        ({**json_type, "Host": f"attacker.example:{port}"}, 421),
        ({**json_type, "Host": "127.0.0.1.attacker.example"}, 421),
    ]
    before = requests_seen(up)
    for headers, status in refused:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        assert response.status_code == status, (headers, response.text)
        error_of(response)
    rebound = httpx.get(f"{gw.base}/v1/models", headers={"Host": "attacker.example"}, timeout=30)
    assert rebound.status_code == 421
    assert requests_seen(up) == before, "a refused request reached the engine"

    # what the README shows keeps working: curl with a JSON content type, the openai client,
    # a page on this machine, the host's names with and without port
    allowed = [
        json_type,
        {"Content-Type": "application/json; charset=utf-8"},
        {**json_type, "Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"},
        {**json_type, "Host": "localhost"},
        {**json_type, "Host": f"127.0.0.1:{port}"},
    ]
    for headers in allowed:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        assert response.status_code == 200, (headers, response.text)
    completion = gw.client().chat.completions.create(model="m", messages=[])
    assert completion.choices[0].message.content == "hello from the upstream"
    assert requests_seen(up) == before + len(allowed) + 1


def test_with_keys_the_key_is_the_guard_and_metrics_need_it_beyond_loopback(
    gw: Harness,
) -> None:
    up = gw.upstream(Upstream.fast())
    gw.write(model("m", up.url), api_keys=(ApiKey("ci", KEY_ENV),))
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"}
    body = {"model": "m", "messages": []}
    # a page cannot present the key: with one, the browser checks step back
    assert gw.post("/v1/chat/completions", json.dumps(body).encode(), **auth).status_code == 200
    # the harness's gateway listens on 127.0.0.1; 127.0.0.2 is another caller on this host
    # (as a machine on the network would be): it needs the key for /metrics, loopback does not
    remote = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    with remote:
        refused = remote.get(f"{gw.base}/metrics")
        assert refused.status_code == 401, refused.text
        assert "ci" not in refused.text and "reconciler_gateway" not in refused.text
        keyed = remote.get(f"{gw.base}/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert keyed.status_code == 200 and "reconciler_gateway_requests_total" in keyed.text
    assert "reconciler_gateway_requests_total" in gw.metrics()  # loopback: no key needed


def test_a_gateway_key_shorter_than_32_characters_does_not_work(tmp_path: Path) -> None:
    short_env, short = "RECONCILER_SECRET_SHORT_GATEWAY_KEY", "sk-0123456789abcdefghijklmnopqr"
    assert len(short) == 31
    os.environ[short_env] = short
    try:
        with harness(tmp_path) as gw:
            up = gw.upstream(Upstream.fast())
            keys = (ApiKey("ci", KEY_ENV), ApiKey("short", short_env))
            gw.write(model("m", up.url), api_keys=keys)
            body = {"model": "m", "messages": []}
            refused = gw.post("/v1/chat/completions", body, Authorization=f"Bearer {short}")
            assert refused.status_code == 401, refused.text
            assert error_of(refused)["code"] == "invalid_api_key"
            accepted = gw.post("/v1/chat/completions", body, Authorization=f"Bearer {KEY}")
            assert accepted.status_code == 200
            lines = (tmp_path / "gateway.log").read_text().splitlines()
            errors = [line for line in lines if "ERROR" in line and "short" in line]
            assert errors and "32" in errors[0] and short not in errors[0], lines
    finally:
        del os.environ[short_env]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../admin",
        "/v1/../../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/%2e%2e/admin",
        "/v1/./chat/completions",
        "/v1//chat/completions",
        "/v1/chat%2fcompletions",
        "/v1/chat%2Fcompletions",
        "/v1/chat/completions%0d%0aX-Injected:%201",
        "/v1/chat\\completions",
    ],
)
def test_paths_with_dot_segments_or_escapes_are_400_and_never_reach_the_engine(
    gw: Harness, target: str
) -> None:
    up = gw.upstream(Upstream.fast())
    gw.write(model("m", up.url))
    port = int(gw.base.rpartition(":")[2])
    body = b'{"model": "m", "messages": []}'
    before = requests_seen(up)
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, answer = raw_request(port, head + body)
    assert status == 400, answer
    assert json.loads(answer)["error"]["code"] == "invalid_path"
    assert requests_seen(up) == before
    good = head.replace(target.encode(), b"/v1/chat/completions", 1)
    assert raw_request(port, good + body)[0] == 200
    assert requests_seen(up) == before + 1


def test_malformed_input_is_a_4xx_in_openai_shape_and_no_traceback(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast())
    gw.write(model("m", up.url), api_keys=(ApiKey("ci", KEY_ENV),))
    port = int(gw.base.rpartition(":")[2])
    auth = f"Bearer {KEY}".encode()

    def post(headers: bytes, body: bytes) -> tuple[int, bytes]:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        return raw_request(port, head + body)

    json_type = b"Content-Type: application/json\r\n"
    ok_body = b'{"model": "m", "messages": []}'
    nested = b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge_name = b'{"model": "' + b"x" * 8_000_000 + b'"}'
    cases = [
        # a non-UTF-8 Authorization header
        (b"Authorization: Bearer \xff\xfe\xe9\r\n" + json_type, ok_body, 401),
        (b"Authorization: " + auth + b"\r\n" + json_type, nested, 400),
        # a non-ASCII Content-Type, sent as UTF-8 and as Latin-1
        (
            b"Authorization: " + auth + b"\r\nContent-Type: application/json; x=\xe2\x82\xac\r\n",
            ok_body,
            400,
        ),
        (b"Authorization: " + auth + b"\r\nContent-Type: text/\x80\r\n", ok_body, 400),
        (b"Authorization: " + auth + b"\r\nAccept: \xe2\x82\xac\r\n" + json_type, ok_body, 400),
        (b"Authorization: " + auth + b"\r\n" + json_type, b'{"model": "m"' + b"\xff}", 400),
    ]
    for headers, body, status in cases:
        got, answer = post(headers, body)
        assert got == status, (headers, answer[:300])
        assert json.loads(answer)["error"]["message"]

    # an 8 MB model name is not echoed back (the issue saw 16 MB)
    got, answer = post(b"Authorization: " + auth + b"\r\n" + json_type, huge_name)
    assert got == 404 and len(answer) < 500, answer[:300]

    # a head the HTTP parser refuses is aiohttp's own 400, logged in one line
    status, _ = raw_request(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n")
    assert 400 <= status < 500
    assert post(b"Authorization: " + auth + b"\r\n" + json_type, ok_body)[0] == 200
    log = (gw.routes_path.parent / "gateway.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_queued_bodies_are_bounded_and_the_excess_get_503(gw: Harness) -> None:
    """40 requests of 8 MiB for a cold on-demand model: the first 32 MiB of bodies wait, the rest
    get 503 with Retry-After at once; the gateway's memory stays bounded (the issue: 1.37 GB)."""
    up = gw.upstream(Upstream.fast())
    budget_mb, size, clients = 32, 8 * 1024 * 1024, 40
    settings = {"max_buffered_bytes": budget_mb * 2**20, "retry_after_s": 7}
    gw.write(model("m", status="cold"), **settings)
    process = psutil.Process(gw.service.process.pid)
    rss_before = process.memory_info().rss
    body = b'{"model": "m", "messages": [], "pad": "' + b"x" * size + b'"}'
    answers: list[httpx.Response | Exception] = []
    json_body = {"Content-Type": "application/json"}

    def send_json() -> None:
        try:
            response = httpx.post(
                f"{gw.base}/v1/chat/completions", content=body, headers=json_body, timeout=120
            )
            answers.append(response)
        except httpx.HTTPError as exc:
            answers.append(exc)

    threads = [threading.Thread(target=send_json) for _ in range(clients)]
    for thread in threads:
        thread.start()
    peak = rss_before
    deadline = time.monotonic() + 60
    while len(answers) < clients - budget_mb * 2**20 // len(body) and time.monotonic() < deadline:
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.05)
    peak = max(peak, process.memory_info().rss)
    busy = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503]
    assert len(busy) == clients - 3, [getattr(a, "status_code", a) for a in answers]
    assert all(a.headers["Retry-After"] == "7" for a in busy)
    assert all(error_of(a)["code"] == "gateway_busy" for a in busy)
    # three bodies (the budget holds three of a little over 8 MiB) and their parsed copies
    assert peak - rss_before < 160 * 2**20, f"RSS grew by {(peak - rss_before) / 2**20:.0f} MiB"

    gw.write(model("m", up.url), **settings)  # the model is ready: the waiting ones are served
    for thread in threads:
        thread.join(timeout=60)
    served = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
    assert len(served) == 3, [getattr(a, "status_code", a) for a in answers]
    assert gw.post("/v1/chat/completions", body, **json_body).status_code == 200  # budget back


def start_gateway(tmp_path: Path, open_files: int, *args: str) -> tuple[subprocess.Popen, int]:
    """`python -m reconciler.gateway` with its open-files limit (soft and hard) set."""
    port = free_port()
    routes = tmp_path / "routes.json"
    if not routes.exists():
        write_routes(routes, Routes({}, GatewaySettings(), 1))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    argv = [sys.executable, "-m", "reconciler.gateway", "--listen", f"127.0.0.1:{port}"]
    argv += ["--routes", str(routes), *args]
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        preexec_fn=limit,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "stderr.log", "ab"),  # noqa: SIM115 - the child holds it
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/internal/inflight", timeout=1).is_success:
                return process, port
        except httpx.HTTPError:
            assert process.poll() is None, (tmp_path / "stderr.log").read_text()
            time.sleep(0.05)
    process.kill()
    raise AssertionError("the gateway did not answer")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_slow_clients_give_way_and_a_normal_request_is_served_meanwhile(tmp_path: Path) -> None:
    """300 connections that send half a request head, with the open-files limit at 256 (the
    issue's case): a normal request is served meanwhile, the gateway never runs out of
    descriptors, and every slow connection is closed within a bounded time."""
    process, port = start_gateway(tmp_path, 256)
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            slow.append(sock)
            with contextlib.suppress(ConnectionError):  # closed to make room already
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-: ")
        started = time.monotonic()
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        assert response.status_code == 200 and response.json()["object"] == "list"
        assert time.monotonic() - started < 20
        assert psutil.Process(process.pid).num_fds() < 256
        deadline = time.monotonic() + 45
        open_ones = list(slow)
        while open_ones and time.monotonic() < deadline:
            still = []
            for sock in open_ones:
                sock.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
                try:
                    if sock.recv(1024) == b"":
                        continue  # closed by the gateway
                except TimeoutError:
                    still.append(sock)
                    continue
                except ConnectionError:
                    continue
            open_ones = still
        assert not open_ones, f"{len(open_ones)} slow connections still open after 45 s"
        assert process.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 200
    finally:
        for sock in slow:
            sock.close()
        stop(process)


def test_busy_connections_past_the_cap_are_closed_and_descriptors_never_run_out(
    tmp_path: Path,
) -> None:
    """200 clients streaming at once with the open-files limit at 256 (each also holds a
    connection to the engine): those past the cap are closed at once, without an answer, instead
    of the gateway running out of descriptors; once the streams end it serves again."""
    up = Upstream.fast(chunks=60, delay_ms=100)  # six seconds per stream
    routes = Routes({"m": model("m", up.url)}, GatewaySettings(), 1)
    write_routes(tmp_path / "routes.json", routes)
    process, port = start_gateway(tmp_path, 256)
    try:
        body = b'{"model": "m", "stream": true, "messages": []}'
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        clients: list[socket.socket] = []
        try:
            most_fds = 0
            for _ in range(200):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                clients.append(sock)
                with contextlib.suppress(ConnectionError):
                    sock.sendall(head + body)
                most_fds = max(most_fds, psutil.Process(process.pid).num_fds())
            served = closed = 0
            for sock in clients:
                try:
                    first = sock.recv(64)
                except ConnectionError:
                    first = b""
                if first.startswith(b"HTTP/1.1 200"):
                    served += 1
                else:
                    assert first == b"", first  # never a 5xx: closed unanswered, or served
                    closed += 1
                most_fds = max(most_fds, psutil.Process(process.pid).num_fds())
            assert most_fds < 256 and served >= 20 and closed >= 200 - (256 - 64) // 2
        finally:
            for sock in clients:
                sock.close()
        log = (tmp_path / "stderr.log").read_text(errors="replace")
        assert "Too many open files" not in log, log[-2000:]
        # the clients left: their streams are cut and their slots free again
        served_again = wait_for(
            lambda: (
                httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    content=body.replace(b"true", b"false"),
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                ).status_code
                == 200
            ),
            timeout_s=30,
            interval_s=0.5,
        )
        assert served_again
    finally:
        stop(process)
        up.kill()


def test_gateway_log_is_rotated_by_size(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    max_bytes = 20_000
    process, port = start_gateway(
        tmp_path, 1024, "--log-file", str(log), "--log-max-bytes", str(max_bytes)
    )
    try:
        for _ in range(600):  # each a malformed head: one log line
            raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n")
    finally:
        stop(process)
    files = sorted(tmp_path.glob("gateway.log*"))
    assert log in files and len(files) > 2, files
    assert all(f.stat().st_size <= max_bytes + 1000 for f in files)
    assert sum(f.stat().st_size for f in files) <= 4 * (max_bytes + 1000)
    assert "Traceback" not in "".join(f.read_text(errors="replace") for f in files)


def test_the_daemon_reports_a_short_gateway_key_as_an_error_event(tmp_path: Path) -> None:
    good_env, short_env = "RECONCILER_SECRET_GW_GOOD", "RECONCILER_SECRET_GW_SHORT"
    short = "sk-short-key"
    with managed_host(tmp_path) as host:
        host.env.update({good_env: KEY, short_env: short})
        host.write_cluster()
        cluster = json.loads((host.desired / "cluster.yaml").read_text())
        cluster["gateway"] = {
            "api_keys": [
                {"name": "good", "key_env": good_env},
                {"name": "tiny", "key_env": short_env},
            ]
        }
        (host.desired / "cluster.yaml").write_text(json.dumps(cluster))
        init_repo(host)
        daemon = Daemon(host, free_port(), None, None, extra_args=("--resync", "3600"))
        try:
            daemon.start()
            daemon.wait_ready()
            events = host.state_dir / "events.jsonl"

            def short_key_events() -> list[dict]:
                if not events.exists():
                    return []
                records = [json.loads(line) for line in events.read_text().splitlines()]
                return [e for e in records if e["kind"] == "error" and "tiny" in e["message"]]

            found = wait_for(short_key_events, timeout_s=30)
            assert found and "32" in found[0]["message"] and short not in found[0]["message"]
            gateway = daemon.gateway_url.removesuffix("/v1")
            body = {"model": "none", "messages": []}

            def answer(key: str) -> int:
                headers = {"Authorization": f"Bearer {key}"}
                response = httpx.post(
                    f"{gateway}/v1/chat/completions", json=body, headers=headers, timeout=30
                )
                return response.status_code

            # the good key passes (404: no such model); the short one is refused
            assert wait_for(lambda: answer(KEY) == 404, timeout_s=30), answer(KEY)
            assert answer(short) == 401
            log = (host.state_dir / "logs" / "gateway.log").read_text()
            assert "tiny" in log and "shorter than 32" in log and short not in log
            assert len(short_key_events()) == 1  # once, not once per pass
        finally:
            daemon.stop()
