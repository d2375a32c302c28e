"""The HTTP API under load while the reconciler works.

A real `reconciler run` (subprocess, loopback) follows a desired state of 200 models: 20 cheap
stand-in vLLM engines that run, and 180 whose engine fails at start and that stay in `error`
(given up), so that all 200 are in the state file and in every pass (load, validate, observe,
plan, record) while only 20 processes run. Passes run back to back throughout: a thread keeps
asking for one (POST /api/v1/reconcile, coalesced by the loop).

1. baseline: pass duration with no read load;
2. saturating: closed-loop clients hammer /metrics and /api/v1/models (requests/s, p50, p99);
3. steady: the same endpoints at a fixed rate (what dashboards and Prometheus scrapes make), and
   the pass duration meanwhile.
Targets: p99 < 50 ms; passes slowed by at most 10 % at any load, steady or saturating. The API
serves from a process of its own (reading the daemon's files; metrics and actions over a socket
pair), so the daemon's CPU per pass should not move with the load; what can still move the pass
duration is the CPU share the loop gets on a small machine (the load generator, the API process
and the daemon share its cores). The daemon's and the API process's CPU are printed apart.

Pass duration is the mean of reconciler_reconcile_duration_seconds (its _sum/_count deltas) when
/metrics has it, else the wall time between pass completions (passes are back to back).

    .venv/bin/python tests/bench/api_load.py [--models 200] [--running 20] [--seconds 15]
        [--clients 4] [--rate 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))  # the test helpers: a real daemon

from apply_support import stand_in  # noqa: E402
from daemon_support import Daemon, running_daemon  # noqa: E402

TOKEN = "bench-token"
ENDPOINTS = ("/metrics", "/api/v1/models")
TARGET_P99_MS = 50.0
TARGET_SLOWDOWN = 0.10
GPUS = [{"index": i, "name": "Simulated H100", "memory_mb": 81920} for i in range(4)]


def fleet(total: int, running: int, broken: Path) -> list[dict]:
    """`running` stand-ins that start and run; the others fail at start (a broken dependency)
    and stay in `error`: every model is in the state file, as on a big host, while only a few
    processes run. Health checks are quiet: the passes measured are the ones asked for."""
    quiet = {"health_check": {"interval_s": 300}}
    models = [stand_in(f"run-{i:03d}", priority=5 + i % 5, **quiet) for i in range(running)]
    models += [
        stand_in(
            f"err-{i:03d}",
            priority=1 + i % 10,
            env={"FAKE_VLLM_EXIT_IF_EXISTS": str(broken)},
            retry_policy={"max_retries": 0},
            **quiet,
        )
        for i in range(total - running)
    ]
    return models


# ---- measuring ------------------------------------------------------------------------------


@dataclass
class Latencies:
    samples: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, endpoint: str, seconds: float, ok: bool) -> None:
        with self.lock:
            self.samples[endpoint].append(seconds)
            self.errors += not ok


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def get(client: httpx.Client, endpoint: str, latencies: Latencies) -> None:
    began = time.perf_counter()
    try:
        ok = client.get(endpoint).status_code == 200
    except httpx.HTTPError:
        ok = False
    latencies.add(endpoint, time.perf_counter() - began, ok)


def closed_loop(daemon: Daemon, n: int, stop: threading.Event, latencies: Latencies) -> None:
    """One client sending its next request as soon as the last one is answered."""
    with daemon.client() as client:
        while not stop.is_set():
            get(client, ENDPOINTS[n % 2], latencies)
            n += 1


def open_loop(daemon: Daemon, rate: float, stop: threading.Event, latencies: Latencies) -> None:
    """`rate` requests/s in all, alternating endpoints, on a fixed schedule."""
    interval, n = 1.0 / rate, 0
    next_at = time.perf_counter()
    with daemon.client() as client:
        while not stop.is_set():
            get(client, ENDPOINTS[n % 2], latencies)
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))


def keep_reconciling(daemon: Daemon, stop: threading.Event) -> None:
    with daemon.client() as client:
        while not stop.is_set():
            client.post("/api/v1/reconcile", headers=daemon.auth())
            time.sleep(0.1)  # shorter than a pass: one is always pending, and they coalesce


def pass_metrics(daemon: Daemon) -> tuple[float, float] | None:
    """(sum, count) of reconciler_reconcile_duration_seconds, when /metrics exports it."""
    from prometheus_client.parser import text_string_to_metric_families

    text = daemon.get("/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name == "reconciler_reconcile_duration_seconds":
            for sample in family.samples:
                found[sample.name.rsplit("_", 1)[-1]] = sample.value
    if "sum" in found and "count" in found:
        return found["sum"], found["count"]
    return None


@dataclass
class Phase:
    name: str
    seconds: float
    passes: int
    pass_s: float
    latencies: Latencies
    cpu_s: float
    """CPU time (user + system) the daemon process used during the phase"""
    api_cpu_s: float = 0.0
    """... and the API process (a child of the daemon)"""

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.samples.values())


Loader = Callable[[threading.Event, Latencies], None]


def run_phase(daemon: Daemon, name: str, seconds: float, loaders: list[Loader]) -> Phase:
    stop = threading.Event()
    latencies = Latencies()
    threads = [threading.Thread(target=keep_reconciling, args=(daemon, stop))]
    threads += [threading.Thread(target=load, args=(stop, latencies)) for load in loaders]
    time.sleep(0.5)
    before_metrics, before = pass_metrics(daemon), daemon.passes()
    cpu_before, api_before = daemon_cpu(daemon), api_cpu(daemon)
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    after_metrics, after = pass_metrics(daemon), daemon.passes()
    elapsed = time.perf_counter() - began
    cpu, api = daemon_cpu(daemon) - cpu_before, api_cpu(daemon) - api_before
    stop.set()
    for thread in threads:
        thread.join()
    passes = after - before
    if before_metrics and after_metrics and after_metrics[1] > before_metrics[1]:
        pass_s = (after_metrics[0] - before_metrics[0]) / (after_metrics[1] - before_metrics[1])
    else:
        pass_s = elapsed / max(passes, 1)
    return Phase(name, elapsed, passes, pass_s, latencies, cpu, api)


def daemon_cpu(daemon: Daemon) -> float:
    assert daemon.process is not None
    times = psutil.Process(daemon.process.pid).cpu_times()
    return times.user + times.system


def api_cpu(daemon: Daemon) -> float:
    """CPU time of the daemon's API process (0 when the API runs inside the daemon)."""
    assert daemon.process is not None
    for child in psutil.Process(daemon.process.pid).children():
        if "reconciler.api" in child.cmdline():
            times = child.cpu_times()
            return times.user + times.system
    return 0.0


def wait_settled(daemon: Daemon, total: int, running: int, timeout_s: float = 300) -> None:
    def settled() -> bool:
        models = daemon.json("/api/v1/models")
        up = sum(m["status"] == "running" for m in models)
        failed = sum(m["status"] == "error" and m["given_up"] for m in models)
        return len(models) == total and up == running and failed == total - running

    began = time.monotonic()
    while not settled():
        assert time.monotonic() - began < timeout_s, f"not settled\n{daemon.log()}"
        time.sleep(1)


# ---- reporting ------------------------------------------------------------------------------


def report(phase: Phase, baseline: Phase | None) -> bool:
    slowdown = phase.pass_s / baseline.pass_s - 1 if baseline else 0.0
    print(
        f"\n{phase.name}: {phase.passes} passes in {phase.seconds:.1f}s, "
        f"pass {phase.pass_s * 1000:.0f} ms"
        + (f" ({slowdown:+.1%} vs baseline)" if baseline else "")
        + f"; daemon CPU {phase.cpu_s / phase.seconds:.0%} of a core"
        + f" ({phase.cpu_s / max(phase.passes, 1) * 1000:.0f} ms per pass)"
        + f", API process {phase.api_cpu_s / phase.seconds:.0%}"
    )
    if baseline and phase.requests and baseline.passes:
        # the CPU the requests cost the daemon, net of its passes: independent of other load
        per_pass = baseline.cpu_s / baseline.passes
        per_request = (phase.cpu_s - phase.passes * per_pass) / phase.requests
        print(f"  daemon CPU per request {per_request * 1000:.2f} ms (net of passes)")
    ok = True
    for endpoint, values in phase.latencies.samples.items():
        if not values:
            continue
        rps = len(values) / phase.seconds
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        verdict = "ok" if p99 < TARGET_P99_MS else "OVER TARGET"
        ok &= p99 < TARGET_P99_MS
        print(
            f"  {endpoint:<16} {rps:7.1f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
            f"[{verdict}: p99 < {TARGET_P99_MS:g} ms]"
        )
    if phase.latencies.errors:
        print(f"  errors: {phase.latencies.errors}")
        ok = False
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--running", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=4, help="saturating phase: clients")
    parser.add_argument("--rate", type=float, default=40.0, help="steady phase: requests/s")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=19,
        help="niceness of this process (the load generator) once the daemon runs: it stands in "
        "for clients on other machines; 0 lets it compete with the daemon for this host's CPUs",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp:
        broken = Path(tmp) / "broken-dependency"
        broken.write_text("stand-ins named err-* exit at start while this file exists\n")
        models = fleet(args.models, args.running, broken)
        print(f"starting a daemon with {len(models)} models ({args.running} run, the rest fail)")
        with running_daemon(
            Path(tmp), models, token=TOKEN, gpus=GPUS, ports=args.models + 10
        ) as daemon:
            daemon.wait_ready(120)
            wait_settled(daemon, args.models, args.running)
            os.nice(args.client_nice)  # after the daemon started: it keeps its own niceness
            print(f"load generator (this process) at nice {args.client_nice}")
            state_models = len(daemon.host.state().models)
            print(
                f"{state_models} models in the state file; passes run back to back in every phase"
            )

            baseline = run_phase(daemon, "baseline (no read load)", args.seconds, [])
            saturating = run_phase(
                daemon,
                f"saturating ({args.clients} closed-loop clients)",
                args.seconds,
                [partial(closed_loop, daemon, n) for n in range(args.clients)],
            )
            steady = run_phase(
                daemon,
                f"steady ({args.rate:g} req/s)",
                args.seconds,
                [partial(open_loop, daemon, args.rate)],
            )
            report(baseline, None)
            ok = report(saturating, baseline)
            ok &= report(steady, baseline)
            worst = max(steady.pass_s, saturating.pass_s) / baseline.pass_s - 1
            verdict = "ok" if worst <= TARGET_SLOWDOWN else "OVER TARGET"
            print(
                f"\npass duration: baseline {baseline.pass_s * 1000:.0f} ms, "
                f"under steady load {steady.pass_s * 1000:.0f} ms "
                f"({steady.pass_s / baseline.pass_s - 1:+.1%}), "
                f"under saturating load {saturating.pass_s * 1000:.0f} ms "
                f"({saturating.pass_s / baseline.pass_s - 1:+.1%}) "
                f"[{verdict}: <= {TARGET_SLOWDOWN:.0%} at any load]"
            )
            return 0 if ok and worst <= TARGET_SLOWDOWN else 1


if __name__ == "__main__":
    sys.exit(main())
