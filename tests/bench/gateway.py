"""The gateway's cost, side by side: one fast upstream reached directly, through the reconciler's
gateway, and through LiteLLM's proxy, at concurrency 1, 16 and 64, streaming and not.

The load comes from `wrk` (a Python client tops out at a few hundred requests/s here); the
upstream is tests/bench/gateway_upstream.py. LiteLLM runs from a bench-only virtualenv
(`python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]'`), one worker,
LITELLM_MASTER_KEY set, configured with the same upstream; without it its rows are skipped.

Goals: added latency p50 <= 1 ms and p99 <= 5 ms at concurrency 1; >= 2,000 req/s non-streaming;
>= 50x LiteLLM's throughput. The remote row: a `framework: remote` model behind the gateway, its
endpoint the stand-in of a hosted API (tests/fakes/hosted_endpoint.py, HTTPS with a certificate
from a CA made here), at concurrency 1, beside the stand-in called directly and through LiteLLM
configured for the same endpoint: the same goals for the added latency. Then cold start: first
token from an idle on-demand model vs `apply`-to-first-token for the same spec, as a ratio
(gateway_cold.py).
The real gemma engine through the gateway, and passes under gateway load: gateway_engine.py.

    .venv/bin/python tests/bench/gateway.py [--seconds 5] [--litellm .bench-venv/bin/litellm]
                                            [--baseline DIR]

--baseline DIR also runs the gateway of another checkout of this repository (e.g. `git worktree
add /tmp/base main`) as target `baseline`, in the same run: a change's cost, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import trustme

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import gateway_cold  # noqa: E402  (beside this file)

from reconciler.gateway.routes import (  # noqa: E402
    GatewaySettings,
    RemoteRoute,
    RouteInstance,
    RouteModel,
    Routes,
    write_routes,
)
from reconciler.gateway.service import GatewayService  # noqa: E402

MASTER_KEY = "sk-bench-master-key"
CONCURRENCY = (1, 16, 64)
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
REMOTE = "r"
"""the gateway's (and LiteLLM's) name of the remote model; the hosted stand-in knows it as m"""
REMOTE_KEY_ENV = "RECONCILER_SECRET_BENCH"
"""the gateway's variable holding the hosted stand-in's key (MASTER_KEY, which it accepts)"""
LUA = """wrk.method = "POST"
wrk.body = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}]%s}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


@dataclass
class Row:
    target: str
    stream: bool
    concurrency: int
    rps: float
    p50: float
    p99: float
    errors: int
    cpu_us: float
    """CPU time of the serving processes per request: the ceiling on one free core is 1e6 / it"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout_s: float, **headers: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with {process.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout_s} s")


def seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def cpu_seconds(pid: int) -> float:
    process = psutil.Process(pid)
    total = 0.0
    for p in (process, *process.children(recursive=True)):
        times = p.cpu_times()
        total += times.user + times.system
    return total


def wrk(
    url: str, stream: bool, c: int, duration: float, scripts: Path, pid: int, model: str = "m"
) -> tuple:
    script = scripts / f"post-{model}-{stream}.lua"
    script.write_text(LUA % (model, ', "stream": true' if stream else "", MASTER_KEY))
    argv = ["wrk", "-t1", f"-c{c}", f"-d{duration:g}s", "--latency", "-s", str(script)]
    before = cpu_seconds(pid)
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - before
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = seconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return rps, p50, p99, errors, cpu / max(done, 1) * 1e6


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def litellm_proxy(
    binary: str, upstream: str, work: Path, hosted: Hosted
) -> tuple[subprocess.Popen, str]:
    """LiteLLM's proxy with model m (the fast upstream) and REMOTE (the hosted stand-in, its TLS
    verified with the bench's CA: SSL_CERT_FILE, which LiteLLM honours)."""
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n"
        f"      api_base: {upstream}/v1\n      api_key: unused\n"
        f"  - model_name: {REMOTE}\n    litellm_params:\n      model: openai/m\n"
        f"      api_base: {hosted.endpoint}\n      api_key: {MASTER_KEY}\n"
        "litellm_settings:\n  telemetry: false\n"
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "SSL_CERT_FILE": str(hosted.ca),
    }
    argv = [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    process = start([*argv, "--num_workers", "1"], work / "litellm.log", env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health/liveliness", process, 180, Authorization=f"Bearer {MASTER_KEY}")
    return process, url


@dataclass
class Hosted:
    """The stand-in of a hosted API (tests/fakes/hosted_endpoint.py) behind HTTPS."""

    process: subprocess.Popen
    endpoint: str
    """its OpenAI base URL, https://127.0.0.1:P/v1"""
    ca: Path
    """the PEM of the CA that signed its certificate"""


def hosted_endpoint(work: Path) -> Hosted:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    ca_file, cert, key = work / "ca.pem", work / "cert.pem", work / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    port = free_port()
    argv = [sys.executable, str(REPO / "tests" / "fakes" / "hosted_endpoint.py")]
    argv += ["--port", str(port), "--cert", str(cert), "--key", str(key)]
    argv += ["--api-key", MASTER_KEY, "--name", "hosted", "--model", "m"]
    process = start(argv, work / "hosted.log")
    endpoint = f"https://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the hosted stand-in exited with {process.returncode}")
        try:
            httpx.get(f"{endpoint}/models", verify=str(ca_file), timeout=1)
            return Hosted(process, endpoint, ca_file)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{endpoint} did not answer in 30 s") from None
            time.sleep(0.2)


def report_remote(rows: list[Row]) -> None:
    """The remote row: a hosted endpoint called directly, through the gateway and LiteLLM."""
    header = ("remote", "stream", "c", "req/s", "p50 ms", "p99 ms", "errors", "cpu us/req")
    print("\n{:<9} {:<6} {:>3} {:>9} {:>8} {:>8} {:>6} {:>10}".format(*header))
    for r in rows:
        print(
            f"{r.target:<9} {'yes' if r.stream else 'no':<6} {r.concurrency:>3} {r.rps:>9.0f} "
            f"{r.p50 * 1e3:>8.3f} {r.p99 * 1e3:>8.3f} {r.errors:>6} {r.cpu_us:>10.0f}"
        )
    by = {(r.target, r.stream): r for r in rows}
    print("\ngoals (remote model, https stand-in):")
    for target in ("gateway", "litellm"):
        for stream in (False, True):
            if (target, stream) not in by:
                continue
            direct, through = by[("direct", stream)], by[(target, stream)]
            added50, added99 = through.p50 - direct.p50, through.p99 - direct.p99
            kind = "streaming" if stream else "non-streaming"
            verdict = ""
            if target == "gateway":
                verdict = (
                    f" (goal <= 1): {'ok' if added50 <= 1e-3 else 'MISSED'}; "
                    f"added p99 {added99 * 1e3:.3f} ms (goal <= 5): "
                    f"{'ok' if added99 <= 5e-3 else 'MISSED'}"
                )
            else:
                verdict = f"; added p99 {added99 * 1e3:.3f} ms"
            errors = f", {through.errors} errors" if through.errors else ""
            print(f"  {target}, {kind}, c=1: added p50 {added50 * 1e3:.3f} ms{verdict}{errors}")


def report(rows: list[Row]) -> None:
    header = ("target", "stream", "c", "req/s", "p50 ms", "p99 ms", "errors", "cpu us/req")
    print("{:<9} {:<6} {:>3} {:>9} {:>8} {:>8} {:>6} {:>10}".format(*header))
    for r in rows:
        print(
            f"{r.target:<9} {'yes' if r.stream else 'no':<6} {r.concurrency:>3} {r.rps:>9.0f} "
            f"{r.p50 * 1e3:>8.3f} {r.p99 * 1e3:>8.3f} {r.errors:>6} {r.cpu_us:>10.0f}"
        )
    by = {(r.target, r.stream, r.concurrency): r for r in rows}
    print("\ngoals:")
    for target in ("gateway", "baseline"):
        if (target, False, 1) not in by:
            continue
        for stream in (False, True):
            direct, gateway = by[("direct", stream, 1)], by[(target, stream, 1)]
            added50, added99 = gateway.p50 - direct.p50, gateway.p99 - direct.p99
            kind = "streaming" if stream else "non-streaming"
            print(
                f"  {target}, {kind}, c=1: added p50 {added50 * 1e3:.3f} ms (goal <= 1): "
                f"{'ok' if added50 <= 1e-3 else 'MISSED'}; added p99 {added99 * 1e3:.3f} ms "
                f"(goal <= 5): {'ok' if added99 <= 5e-3 else 'MISSED'}"
            )
        best = max(r.rps for r in rows if r.target == target and not r.stream)
        print(
            f"  {target} ceiling, non-streaming: {best:.0f} req/s (goal >= 2000): "
            f"{'ok' if best >= 2000 else 'MISSED'}"
        )
    for stream in (False, True):
        cpu = min(r.cpu_us for r in rows if r.target == "gateway" and r.stream == stream)
        print(
            f"  gateway CPU per {'streaming' if stream else 'non-streaming'} request: "
            f"{cpu:.0f} us = {1e6 / cpu:.0f} req/s on one free core (the host's other load "
            "does not change this figure much)"
        )
    for stream in (False, True):
        lite = [r.rps for r in rows if r.target == "litellm" and r.stream == stream]
        if lite:
            gw = max(r.rps for r in rows if r.target == "gateway" and r.stream == stream)
            ratio = gw / max(max(lite), 1e-9)
            print(
                f"  vs LiteLLM ({'streaming' if stream else 'non-streaming'}, best of each): "
                f"{ratio:.0f}x (goal >= 50x): {'ok' if ratio >= 50 else 'MISSED'}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--litellm", default=str(REPO / ".bench-venv" / "bin" / "litellm"))
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another checkout's gateway, side by side"
    )
    parser.add_argument(
        "--cold-start",
        choices=("gemma", "stand-in", "none"),
        default="gemma",
        help="engine of the cold-start comparison (tests/bench/gateway_cold.py)",
    )
    parser.add_argument(
        "--remote-only", action="store_true", help="only the remote row (no local-engine rows)"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        service = baseline = None
        os.chdir(work)  # `python -m` puts the working directory first on the gateways' path
        try:
            port = free_port()
            upstream_argv = [sys.executable, str(HERE / "gateway_upstream.py"), "--port", str(port)]
            processes.append(start(upstream_argv, work / "upstream.log"))
            upstream = f"http://127.0.0.1:{port}"
            wait_http(f"{upstream}/health", processes[-1], 15)
            hosted = hosted_endpoint(work)
            processes.append(hosted.process)
            remote = RemoteRoute(hosted.endpoint, "m", REMOTE_KEY_ENV)
            instances = (RouteInstance(hosted.endpoint),)
            routes = Routes(
                {
                    "m": RouteModel("m", "running", instances=(RouteInstance(upstream),)),
                    REMOTE: RouteModel(REMOTE, "running", instances=instances, remote=remote),
                },
                GatewaySettings(),
                1,
            )
            write_routes(work / "routes.json", routes)
            service = GatewayService(
                f"127.0.0.1:{free_port()}",
                work / "routes.json",
                log_path=work / "gateway.log",
                env={
                    **os.environ,
                    REMOTE_KEY_ENV: MASTER_KEY,
                    f"{REMOTE_KEY_ENV}_HOSTS": "127.0.0.1",
                    "RECONCILER_REMOTE_CA_FILE": str(hosted.ca),
                },
            )
            service.start()
            assert service.process is not None
            targets = {
                "direct": (upstream, processes[0].pid),
                "gateway": (service.base, service.process.pid),
            }
            if args.baseline is not None:
                # the same table without settings: an older gateway refuses fields it lacks;
                # nor the remote model, which an older gateway would not know as remote
                table = json.loads((work / "routes.json").read_text())
                local = {k: v for k, v in table["models"].items() if k != REMOTE}
                for route in local.values():  # nor an instance's fleet fields (host, peer)
                    route["instances"] = [
                        {k: v for k, v in i.items() if k in ("url", "draining", "id")}
                        for i in route["instances"]
                    ]
                older = {**table, "settings": {}, "models": local}
                (work / "routes-baseline.json").write_text(json.dumps(older))
                baseline = GatewayService(
                    f"127.0.0.1:{free_port()}",
                    work / "routes-baseline.json",
                    env={**os.environ, "PYTHONPATH": str(args.baseline.resolve())},
                )
                baseline.start()
                assert baseline.process is not None
                targets["baseline"] = (baseline.base, baseline.process.pid)
            if Path(args.litellm).exists():
                process, lite_url = litellm_proxy(args.litellm, upstream, work, hosted)
                targets["litellm"] = (lite_url, process.pid)
                processes.append(process)
            else:
                print(f"no LiteLLM at {args.litellm}: its rows are skipped")
            rows = []
            for name, (base, pid) in targets.items():
                for stream in (False, True):
                    for c in () if args.remote_only else CONCURRENCY:
                        url = f"{base}/v1/chat/completions"
                        measured = wrk(url, stream, c, args.seconds, work, pid)
                        rows.append(Row(name, stream, c, *measured))
                        print(
                            f"  {name} stream={stream} c={c}: {rows[-1].rps:.0f} req/s",
                            file=sys.stderr,
                            flush=True,
                        )
            if rows:
                report(rows)
            remote_targets = {"direct": (hosted.endpoint.removesuffix("/v1"), hosted.process.pid)}
            remote_targets |= {t: targets[t] for t in ("gateway", "litellm") if t in targets}
            remote_rows = []
            for name, (base, pid) in remote_targets.items():
                model = "m" if name == "direct" else REMOTE
                for stream in (False, True):
                    url = f"{base}/v1/chat/completions"
                    measured = wrk(url, stream, 1, args.seconds, work, pid, model)
                    remote_rows.append(Row(name, stream, 1, *measured))
            report_remote(remote_rows)
        finally:
            for gateway in (service, baseline):
                if gateway is not None:
                    gateway.stop()
            for process in processes:
                process.terminate()
                process.wait(10)
    if args.cold_start != "none":
        gateway_cold.report(args.cold_start, repeat=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
