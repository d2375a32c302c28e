"""Estimate vs NVML-measured GPU memory of every engine a `reconciler apply` left running.

    python tests/gpu/compare.py STATE_DIR

Reads the specs in force (the state directory's last valid desired state) and the engines' pids
(its state file), then for each model prints: the estimate (the figure the planner would use
before learning), what NVML attributes to the engine's process tree (engines.holdings.measure with
declared_gpus=False: vLLM's workers are children), the ratio against the +-10 % goal, and for
llama.cpp the CUDA buffer sizes it logs. Exit status 1 when an engine could not be measured.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from reconciler.core.cluster import ClusterSpec
from reconciler.core.spec import ModelSpec
from reconciler.engines.holdings import measure
from reconciler.engines.registry import estimate_spec
from reconciler.gpus import inventory
from reconciler.state.directory import LAST_VALID_FILE, STATE_FILE
from reconciler.state.reading import read_state

GOAL = 0.10


def main(state_dir: Path) -> int:
    doc = json.loads((state_dir / LAST_VALID_FILE).read_text(encoding="utf-8"))
    specs = {m["id"]: ModelSpec.model_validate(m) for m in doc["models"]}
    gpus = inventory(ClusterSpec.model_validate(doc["cluster"]))
    gpu_total = min(g.memory_total for g in gpus)
    state = read_state(state_dir / STATE_FILE)
    ok = True
    for model_id, spec in specs.items():
        model = state.models.get(model_id) if state else None
        estimate = estimate_spec(spec, gpu_total)
        usage = measure(model.pid, declared_gpus=False) if model and model.pid else None
        parts = ", ".join(f"{k} {v}" for k, v in estimate.breakdown.items())
        print(f"{model_id} ({spec.framework}, {spec.model_path})")
        print(f"  estimate {estimate.per_gpu_mb} MiB per GPU: {parts}")
        print(f"  ({estimate.note})")
        if usage is None or not estimate.per_gpu_mb:
            status = model.status if model else "absent"
            print(f"  measured: nothing (engine {status}; NVML shows none of its processes)")
            ok = False
            continue
        ratio = estimate.per_gpu_mb / usage.mb
        verdict = "met" if abs(ratio - 1) <= GOAL else "MISSED"
        print(f"  measured (NVML, process tree): {usage.mb} MiB per GPU")
        print(f"  estimate / measured {ratio:.2f}  goal 1.00 +-{GOAL:.0%}: {verdict}")
        logged = logged_cuda_buffers(state_dir / "logs" / f"{model_id}.log")
        if logged:
            print("  llama.cpp logged: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in logged.items()))
    return 0 if ok else 1


def logged_cuda_buffers(log: Path) -> dict[str, float]:
    """llama.cpp's CUDA buffer sizes (model, KV, compute), MiB, summed per kind."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    found = {}
    for kind in ("model", "KV", "compute"):
        values = re.findall(rf"CUDA\d*\s+{kind} buffer size\s*=\s*([\d.]+) MiB", text)
        if values:
            found[kind] = sum(float(v) for v in values)
    return found


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
