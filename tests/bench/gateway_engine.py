"""The gateway in front of real work. One `reconciler run` with a fleet like api_load.py's plus
the bundled desired-state/models/gemma3-270m.yaml (llama.cpp on the CPU) serves both parts:

1. engine: one short chat completion (max_tokens 8, temperature 0) sent by `wrk` for a fixed time
   to gemma's own port and to the gateway, order alternating, several rounds; medians of req/s
   and p50 at concurrency 1 and 4 (the engine is CPU-bound and serves one request at a time).
   Goal: gateway >= 0.95x direct.
2. passes: passes back to back (POST /api/v1/reconcile); rounds of an idle phase, then `wrk`
   saturating the gateway for run-000 (served by tests/bench/gateway_upstream.py so that the
   gateway is what saturates; --upstream stand-in: the vLLM stand-in, which tops out first)
   with nothing pinned, the gateway pinned to --gateway-cpus, the gateway + run-000's engine +
   wrk pinned there (a real client is elsewhere, a real engine on a GPU), and those plus the
   daemon pinned to the other CPUs; a last idle phase closes the last round. Mean pass duration
   from reconciler_reconcile_duration_seconds, each loaded phase against the idle phases around
   it. Goal: within 10 % of idle.

    .venv/bin/python tests/bench/gateway_engine.py [--part engine|passes|both] [--seconds 8]
        [--rounds 3] [--phase-seconds 5] [--phase-rounds 3] [--models 100] [--running 10]
        [--upstream fast|stand-in] [--connections 64] [--gateway-cpus 1|none]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

import api_load  # noqa: E402  (beside this file: the fleet, the pass metrics)
from apply_support import FAKE_VLLM  # noqa: E402
from daemon_support import Daemon, running_daemon  # noqa: E402
from gateway import seconds  # noqa: E402  (wrk's duration notation)

GEMMA = yaml.safe_load((REPO / "desired-state" / "models" / "gemma3-270m.yaml").read_text())
TARGET = "run-000"  # the running model the gateway load goes to
TARGET_RATIO = 0.95
TARGET_SLOWDOWN = 0.10
LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[%s]]\n'


def chat(model: str) -> dict:
    question = [{"role": "user", "content": "Name one colour of the sky."}]
    return {"model": model, "messages": question, "max_tokens": 8, "temperature": 0}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` (sched_setaffinity on a pid moves its main thread only)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


def cpu_of(pid: int) -> float:
    with contextlib.suppress(psutil.NoSuchProcess):
        return sum(psutil.Process(pid).cpu_times()[:2])  # user + system
    return 0.0


def busy() -> float:  # CPU seconds the whole machine spent busy so far
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def gateway_pid(daemon: Daemon) -> int:
    assert daemon.process is not None
    for child in psutil.Process(daemon.process.pid).children():
        if "reconciler.gateway" in " ".join(child.cmdline()):
            return child.pid
    raise SystemExit(f"no gateway process under the daemon\n{daemon.log()}")


@dataclass
class Wrk:
    rps: float
    p50: float
    p99: float
    requests: int
    errors: int


def start_wrk(
    url: str, body: dict, c: int, duration: float, work: Path, cpus: set[int] | None = None
) -> subprocess.Popen[str]:
    script = work / f"body-{c}.lua"
    script.write_text(LUA % json.dumps(body))
    argv = ["wrk", "-t1", f"-c{c}", f"-d{duration:g}s", "--timeout", "60s", "--latency"]
    pinned = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    # preexec_fn only sets the affinity (safe between fork and exec)
    return subprocess.Popen(
        [*argv, "-s", str(script), url], stdout=subprocess.PIPE, text=True, preexec_fn=pinned
    )


def finish_wrk(process: subprocess.Popen[str]) -> Wrk:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"wrk exited with {process.returncode}: {out}")

    def grab(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, out, re.M)
        return match.group(1) if match else default

    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(grab(r"Non-2xx or 3xx responses:\s+(\d+)"))
    errors += sum(map(int, sock.groups())) if sock else 0
    p50, p99 = (seconds(grab(rf"^\s+{q}%\s+(\S+)", "0s")) for q in (50, 99))
    done = int(grab(r"(\d+) requests in"))
    return Wrk(float(grab(r"Requests/sec:\s+([\d.]+)")), p50, p99, done, errors)


# ---- part 1: the real engine, direct vs through the gateway -----------------------------------


def answer(url: str, model: str) -> str:
    response = httpx.post(f"{url}/chat/completions", json=chat(model), timeout=120)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def engine_part(daemon: Daemon, duration: float, rounds: int, work: Path) -> bool:
    model = GEMMA["id"]
    daemon.wait_statuses({model: "running"}, 240)
    direct = f"http://127.0.0.1:{daemon.host.port(model)}/v1"
    targets = {"direct": direct, "gateway": daemon.gateway_url}
    for name, url in targets.items():  # also warms the engine's prompt cache both ways
        note(f"{name:<8} {url}: {answer(url, model)!r}")
    engine, gateway = daemon.host.pid(model), gateway_pid(daemon)
    results: dict[tuple[str, int], list[Wrk]] = {}
    cpu = {"gateway": 0.0, "engine": 0.0}
    for r in range(rounds):
        for c in (1, 4):
            order = list(targets) if (r + c) % 2 else list(reversed(targets))
            for name in order:
                before = cpu_of(gateway), cpu_of(engine)
                url = f"{targets[name]}/chat/completions"
                got = finish_wrk(start_wrk(url, chat(model), c, duration, work))
                if name == "gateway":
                    cpu["gateway"] += cpu_of(gateway) - before[0]
                cpu["engine"] += cpu_of(engine) - before[1]
                results.setdefault((name, c), []).append(got)
                note(f"round {r + 1} c={c} {name:<8} {got.rps:6.2f} req/s p50 {got.p50:.3f} s")
    print(
        f"\n1. {model} (llama.cpp, CPU, threads {GEMMA['parameters'].get('threads')}), "
        f"{duration:g} s per run, {rounds} rounds alternating direct/gateway, medians. "
        f"The engine is CPU-bound on this {psutil.cpu_count()}-core host and serves one request "
        "at a time: at c=4 requests queue in it."
    )
    ok = True
    for c in (1, 4):
        d, g = results[("direct", c)], results[("gateway", c)]
        d_rps, g_rps = statistics.median(x.rps for x in d), statistics.median(x.rps for x in g)
        paired = statistics.median(y.rps / max(x.rps, 1e-9) for x, y in zip(d, g, strict=True))
        errors = sum(x.errors for x in d + g)
        ratio = g_rps / max(d_rps, 1e-9)
        verdict = "ok" if ratio >= TARGET_RATIO and not errors else "MISSED"
        ok &= verdict == "ok"
        d_p50, g_p50 = (statistics.median(x.p50 for x in runs) * 1e3 for runs in (d, g))
        print(
            f"  c={c}: direct {d_rps:6.2f} req/s p50 {d_p50:7.1f} ms | gateway {g_rps:6.2f} "
            f"req/s p50 {g_p50:7.1f} ms | ratio {ratio:.3f} "
            f"(paired per round {paired:.3f}), errors {errors} "
            f"[{verdict}: gateway >= {TARGET_RATIO}x direct]"
        )
    runs = 2 * rounds * duration  # seconds of load per target
    print(
        f"  CPU while loaded, % of one core: gateway {cpu['gateway'] / runs:.1%} (its idle "
        f"polling included), engine {cpu['engine'] / (2 * runs):.0%}"
    )
    return ok


# ---- part 2: pass duration under gateway load -------------------------------------------------


@dataclass
class Phase:
    seconds: float
    passes: int
    pass_s: float
    cpu: dict[str, float]  # share of one core, by process (and the machine's other work)
    load: Wrk | None


def fresh_histogram(daemon: Daemon) -> tuple[float, float]:
    """(sum, count) of the pass histogram as of now: /metrics answers from a rendering up to a
    few seconds old and renders anew in the background, so wait for the next rendering."""
    first = api_load.pass_metrics(daemon)
    assert first is not None, "no reconciler_reconcile_duration_seconds on /metrics"
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = api_load.pass_metrics(daemon)
        if now != first:  # passes run back to back: every new rendering differs
            assert now is not None
            return now
    raise SystemExit(f"no pass for 6 s\n{daemon.log()}")


def measure(daemon: Daemon, duration: float, pids: dict[str, int], load: dict | None) -> Phase:
    """Passes back to back; with `load`, wrk runs from 1 s before the window to after it."""
    stop = threading.Event()
    reconciling = threading.Thread(target=api_load.keep_reconciling, args=(daemon, stop))
    reconciling.start()
    wrk = None
    if load is not None:
        wrk = start_wrk(
            load["url"], load["body"], load["c"], duration + 4, load["work"], load["cpus"]
        )
        pids = {**pids, "wrk": wrk.pid}
    time.sleep(1.0)  # passes back to back (and wrk at full speed) before the window opens
    pids = {**pids, "bench": os.getpid()}
    histogram = fresh_histogram(daemon)
    cpu_before = {k: cpu_of(p) for k, p in pids.items()}
    busy_before, began = busy(), time.perf_counter()
    time.sleep(duration)
    after = fresh_histogram(daemon)
    machine = busy() - busy_before
    used = {k: cpu_of(p) - cpu_before[k] for k, p in pids.items()}
    elapsed = time.perf_counter() - began
    stop.set()
    reconciling.join()
    loaded = finish_wrk(wrk) if wrk is not None else None
    passes = int(after[1] - histogram[1])
    pass_s = (after[0] - histogram[0]) / max(passes, 1)
    used["others"] = machine - sum(used.values())
    share = {k: v / elapsed for k, v in used.items()}
    return Phase(elapsed, passes, pass_s, share, loaded)


def passes_part(daemon: Daemon, args: argparse.Namespace, work: Path) -> bool:
    gateway = gateway_pid(daemon)
    assert daemon.process is not None
    pids = {"daemon": daemon.process.pid, "gateway": gateway, "engine": daemon.host.pid(TARGET)}
    load = {"url": f"{daemon.gateway_url}/chat/completions", "body": chat(TARGET), "work": work}
    load["c"] = args.connections
    answer(daemon.gateway_url, TARGET)  # the route works
    everywhere = os.sched_getaffinity(0)
    cpus = None if args.gateway_cpus == "none" else {int(c) for c in args.gateway_cpus.split(",")}
    # which of gateway, load (its engine and wrk), daemon are pinned; the daemon to the rest
    kinds = {f"saturating gateway (wrk -c{args.connections}), nothing pinned": (0, 0, 0)}
    rest = everywhere - (cpus or set())
    if cpus:
        kinds[f"saturating, gateway pinned to CPU {sorted(cpus)}"] = (1, 0, 0)
        kinds[f"saturating, gateway + engine + wrk pinned to CPU {sorted(cpus)}"] = (1, 1, 0)
    if cpus and rest:
        kinds[f"saturating, those pinned to {sorted(cpus)}, daemon to {sorted(rest)}"] = (1, 1, 1)
    idle: list[Phase] = []
    loaded: dict[str, list[Phase]] = {kind: [] for kind in kinds}
    for r in range(args.phase_rounds + 1):
        for pid in (gateway, pids["engine"], pids["daemon"]):
            pin(pid, everywhere)
        idle.append(measure(daemon, args.phase_seconds, pids, None))
        note(f"round {r + 1} idle: {idle[-1].passes} passes, {idle[-1].pass_s:.3f} s")
        if r == args.phase_rounds:
            break  # the last idle phase closes the last round
        for kind, (gateway_pinned, load_pinned, daemon_pinned) in kinds.items():
            pin(gateway, cpus if cpus and gateway_pinned else everywhere)
            pin(pids["engine"], cpus if cpus and load_pinned else everywhere)
            pin(pids["daemon"], rest if daemon_pinned else everywhere)
            wrk = cpus if load_pinned else None
            loaded[kind].append(measure(daemon, args.phase_seconds, pids, {**load, "cpus": wrk}))
            note(f"round {r + 1} {kind}: {loaded[kind][-1].pass_s:.3f} s")
    print(
        f"\n2. reconcile passes back to back, {args.models} models ({args.running} running, "
        f"{TARGET} served by the {args.upstream} upstream, gemma idle); {args.phase_rounds} rounds "
        f"of {args.phase_seconds:g} s phases, each loaded phase compared with the idle phases "
        f"before and after it. CPU: mean % of one core ({psutil.cpu_count()} cores; 'others' = "
        "the rest of the machine: other sessions' work)"
    )
    show("idle", idle, None)
    ok = True
    for kind, phases in loaded.items():
        around = [(a.pass_s + b.pass_s) / 2 for a, b in itertools.pairwise(idle)]
        ratios = [p.pass_s / i for p, i in zip(phases, around, strict=True)]
        slowdown = statistics.median(ratios) - 1
        ok &= slowdown <= TARGET_SLOWDOWN
        verdict = "ok" if slowdown <= TARGET_SLOWDOWN else "MISSED"
        show(kind, phases, f"{slowdown:+.1%} vs idle (median of rounds) [{verdict}: <= +10 %]")
    return ok


def note(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def show(name: str, phases: list[Phase], verdict: str | None) -> None:
    each = ", ".join(f"{p.pass_s * 1e3:.0f}" for p in phases)
    print(f"  {name}: pass ms by phase {each}" + (f"; {verdict}" if verdict else ""))
    # what a pass costs the daemon, however much CPU it gets: does load make passes do more?
    per_pass = statistics.mean(p.cpu["daemon"] * p.seconds / max(p.passes, 1) for p in phases)
    print(f"    daemon CPU per pass {per_pass * 1e3:.0f} ms")
    share = {k: statistics.mean(p.cpu[k] for p in phases) for k in phases[0].cpu}
    print("    CPU: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    if loads := [p.load for p in phases if p.load]:
        p50, p99 = (statistics.median(getattr(x, q) for x in loads) * 1e3 for q in ("p50", "p99"))
        rps, errors = statistics.mean(x.rps for x in loads), sum(x.errors for x in loads)
        print(f"    gateway: {rps:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {errors}")


# ---- the run ------------------------------------------------------------------------------------


def fast_engine(wrapper: Path, model_id: str) -> None:
    """The host's `vllm` (apply_support keeps one already there): the fast upstream of
    tests/bench/gateway_upstream.py for `model_id`, the stand-in for every other model."""
    wrapper.parent.mkdir(parents=True)
    upstream = str(HERE / "gateway_upstream.py")
    wrapper.write_text(
        f"#!{sys.executable}\nimport runpy, sys\nargv = sys.argv[1:]\n"
        f"if {f'test/{model_id}'!r} in argv:\n"
        f"    port = argv[argv.index('--port') + 1]\n"
        f"    sys.argv = [{upstream!r}, '--port', port, '--name', {model_id!r}]\n"
        f"    runpy.run_path({upstream!r}, run_name='__main__')\n"
        f"else:\n    runpy.run_path({str(FAKE_VLLM)!r}, run_name='__main__')\n"
    )
    wrapper.chmod(0o755)


@contextlib.contextmanager
def daemon_with_fleet(tmp: Path, args: argparse.Namespace) -> Iterator[Daemon]:
    broken = tmp / "broken-dependency"
    broken.write_text("stand-ins named err-* exit at start while this file exists\n")
    models = api_load.fleet(args.models, args.running, broken)
    if args.part != "passes":
        models.append(GEMMA)
    note(f"starting a daemon with {len(models)} models")
    root = tmp / "host"
    if args.upstream == "fast":
        fast_engine(root / "bin" / "vllm", TARGET)
    with running_daemon(
        root, models, token=api_load.TOKEN, gpus=api_load.GPUS, ports=args.models + 10
    ) as daemon:
        daemon.wait_ready(120)
        yield daemon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("engine", "passes", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=8, help="engine: seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="engine: direct/gateway rounds")
    parser.add_argument("--phase-seconds", type=float, default=5)
    parser.add_argument("--phase-rounds", type=int, default=3)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--running", type=int, default=10)
    parser.add_argument(
        "--upstream",
        choices=("fast", "stand-in"),
        default="fast",
        help=f"passes: what serves {TARGET}: the fast upstream (the gateway saturates) or the "
        "vLLM stand-in (it saturates first)",
    )
    parser.add_argument("--connections", type=int, default=64, help="passes: wrk connections")
    parser.add_argument(
        "--gateway-cpus",
        default=str(max(os.sched_getaffinity(0))),
        help="passes: CPUs (comma-separated) to pin the gateway to in the pinned phases, or none",
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="gateway-engine-") as tmp,
        daemon_with_fleet(Path(tmp), args) as daemon,
    ):
        gemma = int(args.part != "passes")
        api_load.wait_settled(daemon, args.models + gemma, args.running + gemma)
        if args.part != "passes":
            ok &= engine_part(daemon, args.seconds, args.rounds, Path(tmp))
        if args.part != "engine":
            ok &= passes_part(daemon, args, Path(tmp))
    before, after = (", ".join(f"{x:.2f}" for x in v) for v in (load_before, os.getloadavg()))
    print(f"\nmachine load average (1, 5, 15 min): before {before}; after {after}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
