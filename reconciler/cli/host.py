"""`reconciler gpus` and `estimate`: this host's GPUs, and what a model needs of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from reconciler.core.estimate import render_estimate
from reconciler.engines.registry import estimate_path
from reconciler.gpus import InventoryError, inventory

from . import command_app
from .desired import read_desired, validate_here
from .options import DEFAULT_DIR, DirArg, err, out
from .problems import Format, print_problems

app = command_app()


@app.command("gpus")
def gpus_cmd(directory: DirArg = Path(DEFAULT_DIR)) -> None:
    """Print the GPU inventory: declared in cluster.yaml, or read through NVML."""
    raw = read_desired(directory, None)
    result = validate_here(raw, check_paths=False)
    if result.desired is None:
        print_problems(result.errors, Format.text)
        raise typer.Exit(1)
    try:
        gpus = inventory(result.desired.cluster)
    except InventoryError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from exc
    source = "declared" if isinstance(result.desired.cluster.gpus, list) else "NVML"
    table = Table("gpu", "name", "total MiB", "used MiB", "free MiB", "util %", "temp C", "power W")
    for g in gpus:
        table.add_row(
            str(g.device_id),
            g.name,
            str(g.memory_total),
            str(g.memory_used),
            str(g.memory_free),
            *("" if v is None else f"{v:g}" for v in (g.utilization, g.temperature, g.power)),
        )
    out.print(table)
    out.print(f"source: {source}")


@app.command("estimate")
def estimate_cmd(
    model_path: Annotated[str, typer.Argument(help="a .gguf file, an HF directory, or pkg:MODULE")],
    ctx: Annotated[int | None, typer.Option("--ctx", help="context length")] = None,
) -> None:
    """Estimate the GPU memory a model needs (weights + KV cache + buffers)."""
    estimate = estimate_path(model_path, ctx)
    out.print(render_estimate(estimate), markup=False)
    raise typer.Exit(0 if estimate.per_gpu_mb is not None else 1)
