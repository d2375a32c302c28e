"""Helpers of the hostile-input suite (tests/security): specs and a desired state to put them in."""

from __future__ import annotations

from pathlib import Path

CLUSTER = "gpus:\n  - {index: 0, name: sim, memory_mb: 24000}\n"


def llama_spec(model_id: str, *extra: str) -> str:
    """A valid llama_cpp spec: id on line 1, framework 2, model_path 3, `extra` from line 4 on."""
    lines = [f"id: {model_id}", "framework: llama_cpp", "model_path: /models/m.gguf", *extra]
    return "\n".join(lines) + "\n"


def make_desired(root: Path) -> Path:
    """root/desired-state with cluster.yaml and one valid model, `good`."""
    desired = root / "desired-state"
    (desired / "models").mkdir(parents=True)
    (desired / "cluster.yaml").write_text(CLUSTER)
    (desired / "models" / "good.yaml").write_text(llama_spec("good"))
    return desired
