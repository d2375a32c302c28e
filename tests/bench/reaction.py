"""How fast `reconciler run` reacts to git, and what it costs while nothing happens.

1. reaction: the time from a change in git to the daemon's first engine action (the time of the
   'start' or 'stop' event in events.jsonl), over N changes per mode; each change adds or removes
   one stand-in vLLM model, and the host settles before the next one.
   - local (edit):           `run DIR`; from writing the model file (then committed)
   - local (commit):         `run DIR --committed-only`; from `git commit` of a staged change
   - remote (push+webhook):  `run --repo URL --poll 3600` with the API and
                             RECONCILER_WEBHOOK_SECRET; from the end of `git push` to the bare
                             repository, when the signed POST /api/v1/hooks/git is sent (the poll
                             interval is an hour: only the webhook can bring the change in)
   Goals: p50 < 1 s, p95 < 2 s.
2. idle: with M models running (stand-in engines, the spec's default health interval of 10 s),
   the daemon's CPU share (psutil cpu_times, user + system, over S seconds of no change) and its
   RSS at the end. Goals: CPU < 1 %, RSS < 150 MB.

    .venv/bin/python tests/bench/reaction.py [--changes 20] [--models 20] [--idle-s 30]
        [--only reaction|idle]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from apply_support import Host, free_port_range, stand_in, wait_for
from daemon_support import free_port, push_body, sign
from gitops_support import (
    RunProcess,
    local_site,
    observe,
    remote_site,
    spec_hash,
)

SECRET = "bench-webhook-secret"
QUIET = {"health_check": {"interval_s": 10}}
"""The spec's default liveness interval: what an operator's models have."""
GPUS = [{"index": i, "memory_mb": 16000} for i in range(2)]
P50_GOAL_S, P95_GOAL_S = 1.0, 2.0
CPU_GOAL, RSS_GOAL_MB = 1.0, 150.0


@contextlib.contextmanager
def bench_host(name: str) -> Iterator[Host]:
    """A host in a temporary directory; every engine of it stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix=f"reaction-{name}-"))
    host = Host(root / "site", free_port_range(40), gpus=GPUS)
    host.write_cluster()
    try:
        yield host
    finally:
        host.stop_all()
        if not wait_for(lambda: not host.engines(), 20):
            print(f"warning: engines of {root} survived stop-all: {host.engines()}")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def daemon(host: Host, *args: str, env: dict[str, str] | None = None) -> Iterator[RunProcess]:
    run = RunProcess(host, args, env or {}).start()
    try:
        run.wait_first_pass()
        yield run
    finally:
        code = run.stop()
        if code != 0:
            print(f"warning: the daemon exited {code}\n{run.log()}")


def settle(host: Host, specs: dict[str, dict], run: RunProcess) -> None:
    expected = {m: spec_hash(s) for m, s in specs.items()}
    ok = wait_for(lambda: observe(host).running(expected), 60, 0.05)
    assert ok, f"not settled\n{observe(host).describe()}\n{run.log()}"


def first_action_after(host: Host, seen: int, timeout_s: float = 30.0) -> float:
    """The time of the first start/stop event after the first `seen` events."""

    def found() -> float | None:
        for event in host.events()[seen:]:
            if event["kind"] in ("start", "stop", "restart"):
                return float(event["time"])
        return None

    value = wait_for(found, timeout_s, 0.01)
    assert value is not None, "no engine action"
    return value


def measure(
    host: Host,
    run: RunProcess,
    changes: int,
    specs: dict[str, dict],
    make_change: Callable[[str, dict[str, Any] | None], float],
) -> list[float]:
    """`changes` times: add model extra-K (or remove the one added before); the seconds from
    the moment `make_change` returns to the first engine action."""
    times = []
    for i in range(changes):
        model_id = f"extra-{i // 2}"
        adding = i % 2 == 0
        spec = stand_in(model_id, **QUIET) if adding else None
        if adding:
            specs[model_id] = spec
        else:
            specs.pop(model_id)
        seen = len(host.events())
        began = make_change(model_id, spec)
        times.append(first_action_after(host, seen) - began)
        settle(host, specs, run)
    return times


def write(host: Host, model_id: str, spec: dict[str, Any] | None) -> None:
    if spec is None:
        host.remove_model(model_id)
    else:
        host.write_model(spec)


def local_edit(changes: int) -> list[float]:
    with bench_host("local") as host:
        specs = {"base": stand_in("base", **QUIET)}
        host.write_model(specs["base"])
        site = local_site(host)
        with daemon(host, str(host.desired), "--no-api") as run:
            settle(host, specs, run)

            def change(model_id: str, spec: dict[str, Any] | None) -> float:
                began = time.time()
                write(host, model_id, spec)
                site.commit(f"{'add' if spec else 'remove'} {model_id}")
                return began

            return measure(host, run, changes, specs, change)


def local_commit(changes: int) -> list[float]:
    with bench_host("commit") as host:
        specs = {"base": stand_in("base", **QUIET)}
        host.write_model(specs["base"])
        site = local_site(host)
        with daemon(host, str(host.desired), "--no-api", "--committed-only") as run:
            settle(host, specs, run)

            def change(model_id: str, spec: dict[str, Any] | None) -> float:
                write(host, model_id, spec)
                site.repo.git.add("-A")
                began = time.time()
                site.repo.git.commit("-q", "--no-verify", "-m", f"change {model_id}")
                return began

            return measure(host, run, changes, specs, change)


def remote_webhook(changes: int) -> list[float]:
    with bench_host("remote") as host:
        specs = {"base": stand_in("base", **QUIET)}
        host.write_model(specs["base"])
        site = remote_site(host)
        port = free_port()
        args = (
            *("--repo", site.url, "--branch", "main", "--path", "desired-state"),
            *("--poll", "3600", "--listen", f"127.0.0.1:{port}"),
        )
        env = {"RECONCILER_WEBHOOK_SECRET": SECRET}
        with daemon(host, *args, env=env) as run, httpx.Client(timeout=10) as client:
            settle(host, specs, run)

            def change(model_id: str, spec: dict[str, Any] | None) -> float:
                write(host, model_id, spec)
                head = site.commit(f"change {model_id}", push=True)
                began = time.time()
                body = push_body("main", head)
                response = client.post(
                    f"http://127.0.0.1:{port}/api/v1/hooks/git",
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-GitHub-Event": "push",
                        "X-Hub-Signature-256": "sha256=" + sign(SECRET, body),
                    },
                )
                assert response.status_code == 202, response.text
                return began

            return measure(host, run, changes, specs, change)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def reaction(changes: int) -> bool:
    rows = [
        ("local (edit)", local_edit),
        ("local (commit)", local_commit),
        ("remote (push+webhook)", remote_webhook),
    ]
    print(f"reaction: change in git -> first engine action, {changes} changes each")
    print(f"{'mode':<24}{'p50':>9}{'p95':>9}{'max':>9}{'mean':>9}  goal")
    ok = True
    for name, bench in rows:
        times = bench(changes)
        p50, p95 = statistics.median(times), percentile(times, 0.95)
        met = p50 < P50_GOAL_S and p95 < P95_GOAL_S
        ok &= met
        print(
            f"{name:<24}{p50 * 1000:>7.0f}ms{p95 * 1000:>7.0f}ms{max(times) * 1000:>7.0f}ms"
            f"{statistics.mean(times) * 1000:>7.0f}ms  {'met' if met else 'MISSED'}"
        )
    return ok


def idle(models: int, seconds: float) -> bool:
    with bench_host("idle") as host:
        host.write_cluster([{"index": i, "memory_mb": 16000} for i in range(2)])
        specs = {f"m{i:02d}": stand_in(f"m{i:02d}", **QUIET) for i in range(models)}
        for spec in specs.values():
            host.write_model(spec)
        local_site(host)
        with daemon(host, str(host.desired), "--no-api") as run:
            settle(host, specs, run)
            time.sleep(2)  # the last readiness passes
            proc = psutil.Process(run.pid)
            passes_before = len(host.events())
            before, began = proc.cpu_times(), time.monotonic()
            time.sleep(seconds)
            after, elapsed = proc.cpu_times(), time.monotonic() - began
            cpu = (after.user + after.system - before.user - before.system) / elapsed * 100
            rss = proc.memory_info().rss / 2**20
            threads = proc.num_threads()
            new_events = len(host.events()) - passes_before
    cpu_ok, rss_ok = cpu < CPU_GOAL, rss < RSS_GOAL_MB
    print(f"idle: {models} models running, {seconds:g}s without a change")
    print(f"  daemon CPU  {cpu:6.2f} %   goal < {CPU_GOAL:g} %   {'met' if cpu_ok else 'MISSED'}")
    print(
        f"  daemon RSS  {rss:6.1f} MB  goal < {RSS_GOAL_MB:g} MB  {'met' if rss_ok else 'MISSED'}"
    )
    print(f"  threads {threads}; events meanwhile {new_events}")
    return cpu_ok and rss_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--only", choices=["reaction", "idle"])
    args = parser.parse_args()
    ok = True
    if args.only in (None, "reaction"):
        ok &= reaction(args.changes)
    if args.only in (None, "idle"):
        ok &= idle(args.models, args.idle_s)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
