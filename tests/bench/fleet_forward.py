"""What a forwarded request costs: two real `reconciler run` processes as hosts a and b of one
repository (tests/integration/fleet_support.py), a model `bravo` that only b runs, and at
concurrency 1 the latency of a chat request three ways, side by side:
straight to bravo's engine, to b's gateway (its own model), and to a's gateway (which forwards to
b's gateway with the fleet key). The added latency of forwarding is the last minus the middle one.

bravo's engine is the gateway bench's fast upstream (tests/bench/gateway_upstream.py: canned
answers, well over 10k req/s), started by b's reconciler as its `vllm` executable through a
wrapper that hands it the port: the stand-in vLLM of the tests takes ~45 ms per request at
concurrency 1 here, whose jitter would bury a forwarding cost of a millisecond. The load comes
from `wrk` (one connection: concurrency 1), streaming and not. The two hosts, the engine and
wrk share this machine's cores; on two real hosts the network's round trip comes on top.

    .venv/bin/python tests/bench/fleet_forward.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from apply_support import stand_in, wait_for  # noqa: E402
from fleet_support import running_fleet  # noqa: E402

LOCAL = "b's gateway (local)"
FORWARDED = "a's gateway (forwarded)"
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
LUA = """wrk.method = "POST"
wrk.body = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4%s}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


@dataclass
class Row:
    target: str
    stream: bool
    rps: float
    p50: float
    p99: float
    errors: int


def engine_wrapper(directory: Path) -> Path:
    """A `vllm` executable that serves `vllm serve MODEL --host H --port P ...` with the fast
    upstream: the reconciler starts, probes and stops it like any engine."""
    upstream = HERE / "gateway_upstream.py"
    wrapper = directory / "vllm"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import runpy, sys\n"
        "args = sys.argv[1:]\n"
        "flag = lambda name: args[args.index(name) + 1]\n"
        f"sys.argv = [{str(upstream)!r}, '--host', flag('--host'), '--port', flag('--port'),"
        " '--name', args[1]]\n"
        f"runpy.run_path({str(upstream)!r}, run_name='__main__')\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def wrk(url: str, model: str, key: str, stream: bool, duration: float, work: Path) -> tuple:
    """Requests/s, p50 and p99 (seconds) and errors of one connection for `duration` seconds."""
    script = work / "post.lua"
    script.write_text(LUA % (model, ', "stream": true' if stream else "", key))
    argv = ["wrk", "-t1", "-c1", f"-d{duration:g}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = seconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return rps, p50, p99, errors


def report(rows: list[Row]) -> None:
    header = ("target", "stream", "req/s", "p50 ms", "p99 ms", "errors")
    print("\n{:<22} {:<6} {:>7} {:>8} {:>8} {:>6}".format(*header))
    for r in rows:
        print(
            f"{r.target:<22} {'yes' if r.stream else 'no':<6} {r.rps:>7.0f} "
            f"{r.p50 * 1e3:>8.3f} {r.p99 * 1e3:>8.3f} {r.errors:>6}"
        )
    by = {(r.target, r.stream): r for r in rows}
    print("\nadded latency of a forwarded request (a's gateway -> b's gateway), concurrency 1:")
    for stream in (False, True):
        local, forwarded = by[(LOCAL, stream)], by[(FORWARDED, stream)]
        kind = "streaming" if stream else "non-streaming"
        print(
            f"  {kind}: p50 +{(forwarded.p50 - local.p50) * 1e3:.3f} ms, "
            f"p99 +{(forwarded.p99 - local.p99) * 1e3:.3f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="per row")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        os.chdir(work)
        print("starting hosts a and b (bravo runs on b only)", file=sys.stderr, flush=True)
        engine_env = {"RECONCILER_VLLM": str(engine_wrapper(work))}
        bravo = stand_in("bravo", hosts=["b"])
        with running_fleet(work, ["a", "b"], [bravo], env=engine_env) as fleet:
            a, b = fleet["a"], fleet["b"]
            b.daemon.wait_statuses({"bravo": "running"}, timeout_s=120)
            if not wait_for(lambda: a.post("bravo").status_code == 200, 120, 0.2):
                raise SystemExit(f"a's gateway never forwarded bravo\n{a.daemon.log()}")
            engine = f"http://127.0.0.1:{b.host.port('bravo')}"
            served = httpx.get(f"{engine}/v1/models", timeout=10).json()["data"][0]["id"]
            targets = {
                "engine (direct)": (engine, served, "unused"),
                LOCAL: (b.gateway, "bravo", b.key),
                FORWARDED: (a.gateway, "bravo", a.key),
            }
            rows = []
            for name, (base, model, key) in targets.items():
                for stream in (False, True):
                    url = f"{base}/v1/chat/completions"
                    rows.append(
                        Row(name, stream, *wrk(url, model, key, stream, args.seconds, work))
                    )
                    print(f"  {name} stream={stream}: done", file=sys.stderr, flush=True)
            report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
