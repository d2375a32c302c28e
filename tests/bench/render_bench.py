"""Benchmark: how long `reconciler render kubernetes` takes for 1,000 models.

    .venv/bin/python tests/bench/render_bench.py [--models 1000] [--repeat 3] [--profile]

Writes N model files (llama.cpp, vLLM with hub ids, docker; fixed ports, fallbacks, disabled
models, every priority) plus a cluster.yaml to a temporary directory, then times
- load + validate: reading the specs, shared with `reconciler validate` (validate_bench.py);
- render: the manifests of the validated desired state (kubernetes.render), the goal below;
- write: the output directory, from empty;
- `reconciler render kubernetes DIR --out OUT --check` as a real process (the pull-request check).
The goal is a render of 1,000 models in < 2 s; figures are printed, not asserted (machines
differ). Not a test module: pytest does not collect it (no test_ prefix, nothing runs on import).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

GOAL_S = 2.0

CLUSTER = """\
gpus: [{index: 0, memory_mb: 81920}, {index: 1, memory_mb: 81920}]
reserved_memory_mb: 512
kubernetes:
  namespace: llm
  model_volume: {type: persistentVolumeClaim, claim_name: models}
"""

LLAMA = """\
id: {id}
name: Benchmark model {i}
framework: llama_cpp
model_path: /models/gguf/{id}.gguf
priority: {priority}
parameters: {{ctx-size: 4096, n-gpu-layers: 999, flash-attn: true, tensor-split: [3, 1]}}
resource_requirements: {{gpu_count: 1, gpu_memory_mb: 6000}}
env: {{LLAMA_ARG_N_PARALLEL: "2"}}
health_check: {{path: /health, startup_timeout_s: 300}}
{extra}"""

VLLM = """\
id: {id}
framework: vllm
model_path: Qwen/Qwen2-7B-Instruct
priority: {priority}
parameters: {{max-model-len: 8192, gpu-memory-utilization: 0.45}}
resource_requirements: {{gpu_count: 2, gpu_memory_mb: 20000}}
health_check: {{path: /health, startup_timeout_s: 900}}
{extra}"""

DOCKER = """\
id: {id}
framework: docker
image: registry.example.com/echo:{i}
model_path: /www
priority: {priority}
resource_requirements: {{gpu_count: 1, gpu_memory_mb: 2048}}
port: {port}
env: {{GREETING: hello}}
{extra}"""


def write_state(root: Path, count: int) -> Path:
    ds = root / "desired-state"
    (ds / "models").mkdir(parents=True)
    (ds / "cluster.yaml").write_text(CLUSTER, encoding="utf-8")
    for i in range(count):
        model_id = f"model-{i:04d}"
        extra = f"fallback: model-{i - 1:04d}\n" if i % 3 == 1 else ""
        extra += "enabled: false\n" if i % 7 == 0 else ""
        template = DOCKER if i % 10 == 9 else VLLM if i % 10 == 5 else LLAMA
        text = template.format(i=i, id=model_id, priority=i % 10 + 1, port=10000 + i, extra=extra)
        (ds / "models" / f"{model_id}.yaml").write_text(text, encoding="utf-8")
    return ds


def load(ds: Path):
    from reconciler.cli.loading import validate_here
    from reconciler.source.load import load_directory

    raw = load_directory(ds)
    result = validate_here(raw, check_paths=False)
    if result.desired is None:
        raise SystemExit(
            "generated desired state is invalid:\n" + "\n".join(map(str, result.errors))
        )
    return raw, result.desired


def write(out: Path, rendered) -> int:
    from reconciler import kubernetes

    shutil.rmtree(out, ignore_errors=True)
    written, _ = kubernetes.write_rendered(out, rendered)
    return len(written)


def cli_check(ds: Path, out: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "render",
            "kubernetes",
            str(ds),
            "--out",
            str(out),
            "--check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"--check failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr}")


def best_of(repeat: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def report(label: str, seconds: float, goal: bool = False) -> None:
    verdict = ""
    if goal:
        verdict = f"  {'meets' if seconds < GOAL_S else 'MISSES'} the < {GOAL_S:g} s goal"
    print(f"{label:<48} {seconds:7.3f} s{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--profile", action="store_true", help="cProfile the render")
    args = parser.parse_args()

    from reconciler import kubernetes

    with tempfile.TemporaryDirectory(prefix="render-bench-") as tmp:
        ds = write_state(Path(tmp), args.models)
        out = Path(tmp) / "out"
        raw, desired = load(ds)  # warm-up: imports, schema compilation
        rendered, problems = kubernetes.render_loaded(raw, desired)
        if problems:
            raise SystemExit("\n".join(map(str, problems)))
        files = write(out, rendered)
        memory = kubernetes.memory_requirements(desired)
        print(f"{args.models} models -> {files} files in {out}")
        report("load + validate (as `reconciler validate`)", best_of(args.repeat, lambda: load(ds)))
        render = best_of(args.repeat, lambda: kubernetes.render(desired, memory=memory))
        report(
            "render: manifests of 1,000 models" if args.models == 1000 else "render", render, True
        )
        report(
            "write the output directory (empty)", best_of(args.repeat, lambda: write(out, rendered))
        )
        report(
            "`render kubernetes --check` as a process",
            best_of(args.repeat, lambda: cli_check(ds, out)),
        )

        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(kubernetes.render, desired, memory=memory)
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(20)
            print(text.getvalue())


if __name__ == "__main__":
    main()
