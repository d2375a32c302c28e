"""How much one observe() pass costs with many engines running.

Starts N stand-in engines (a Python sleep loop, started through ProcessSupervisor exactly as a
real engine is, markers included), then times observe() passes: wall time and this process's
CPU time (user + system, so the /proc reads count). The target is < 200 ms for 100 engines.

    .venv/bin/python tests/bench/engine_overhead.py [--engines 100] [--passes 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from reconciler.engines.base import Command, EnginePlacement
from reconciler.engines.process import ProcessSupervisor, engine_env
from reconciler.spec import ModelSpec

# -S: no site import, so a stand-in starts in a few milliseconds and weighs little
STAND_IN = (sys.executable, "-S", "-c", "import time\nwhile True: time.sleep(3600)")
TARGET_MS = 200.0


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=100)
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-overhead-") as tmp:
        supervisor = ProcessSupervisor(Path(tmp))
        began = time.perf_counter()
        try:
            start_stand_ins(supervisor, args.engines)
            start_s = time.perf_counter() - began
            handles = supervisor.observe()
            assert len(handles) == args.engines and all(h.alive for h in handles), handles
            walls, cpus = time_passes(supervisor, args.passes)
        finally:
            began_stop = time.perf_counter()
            for handle in supervisor.observe():
                supervisor.stop(handle, grace_s=5)
            stop_s = time.perf_counter() - began_stop
    median_wall, median_cpu = statistics.median(walls), statistics.median(cpus)
    print(f"engines: {args.engines} stand-ins, started in {start_s:.2f}s, stopped in {stop_s:.2f}s")
    print(
        f"observe pass: median {median_wall:.1f} ms wall, {median_cpu:.1f} ms CPU "
        f"(min {min(walls):.1f} / max {max(walls):.1f} ms wall over {args.passes} passes)"
    )
    ok = median_wall < TARGET_MS
    print(f"target < {TARGET_MS:.0f} ms: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
