"""`reconciler gpus` and `estimate`: this host's GPUs, and what a model needs of them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from reconciler.cli.loading import Format, print_problems, read_desired, validate_here
from reconciler.core.estimate import (
    Estimate,
    MemoryFigures,
    Reservation,
    render_estimate,
    render_explain,
    reservation,
)
from reconciler.core.fleet import host_view, undeclared_host
from reconciler.core.spec import ModelSpec
from reconciler.engines.registry import estimate_path, estimate_spec
from reconciler.gpus import InventoryError, inventory
from reconciler.loop.memory import Learned, read_learned
from reconciler.source.load import HOSTS_DIR
from reconciler.state.directory import LAST_VALID_FILE

from . import command_app
from .options import (
    DEFAULT_DIR,
    DirArg,
    HostNameOpt,
    StateDirOpt,
    err,
    host_name,
    out,
    resolve_state_dir,
    usage_error,
)

app = command_app()


@app.command("gpus")
def gpus_cmd(directory: DirArg = Path(DEFAULT_DIR), host: HostNameOpt = None) -> None:
    """Print the GPU inventory: declared in cluster.yaml, or read through NVML."""
    raw = read_desired(directory, None)
    result = validate_here(raw, check_paths=False)
    if result.desired is None:
        print_problems(result.errors, Format.text)
        raise typer.Exit(1)
    desired, name = result.desired, host_name(host)
    stranger = undeclared_host(desired, name, str(directory / HOSTS_DIR))
    if stranger is not None:
        print_problems([stranger], Format.text)
        raise typer.Exit(1)
    cluster = host_view(desired, name).cluster  # in a fleet: this host's hosts/<name>.yaml
    try:
        gpus = inventory(cluster)
    except InventoryError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from exc
    source = "declared" if isinstance(cluster.gpus, list) else "NVML"
    if desired.hosts:
        source += f" (host {name})"
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


class EstimateFormat(StrEnum):
    text = "text"
    json = "json"


@dataclass(frozen=True)
class Measured:
    """What an engine of one model's spec was measured to use on this host."""

    model_id: str
    spec_hash: str
    figures: MemoryFigures
    current: bool
    """the spec hash of the spec estimated (else: another spec of the model, for reference)"""


@app.command("estimate")
def estimate_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="a .gguf file, an HF directory, pkg:MODULE or a hub id; a model spec file "
            "(models/ID.yaml); or the id of a model in force here (the state directory's last "
            "valid desired state)",
            metavar="MODEL",
        ),
    ],
    ctx: Annotated[int | None, typer.Option("--ctx", help="context length")] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="how each part is computed, and what the model was measured to use here",
        ),
    ] = False,
    fmt: Annotated[
        EstimateFormat, typer.Option("--format", help="json always includes the explanation")
    ] = EstimateFormat.text,
    state_dir: StateDirOpt = None,
) -> None:
    """Estimate the GPU memory a model needs (weights + KV cache + buffers)."""
    directory = resolve_state_dir(state_dir)
    spec = _spec_of(model, directory)
    if spec is not None and ctx is not None:
        spec = _with_ctx(spec, ctx)
    estimate = estimate_spec(spec) if spec is not None else estimate_path(model, ctx)
    measured: list[Measured] = []
    chosen: tuple[str, Reservation] | None = None
    if explain or fmt is EstimateFormat.json:
        learned = read_learned(directory)
        subjects = [spec] if spec is not None else _specs_with_path(model, directory)
        measured = [m for s in subjects for m in _measured(learned, s)]
        chosen = _reservation(estimate, spec, subjects, learned)
    if fmt is EstimateFormat.json:
        out.print(json.dumps(_json(model, spec, estimate, measured, chosen), indent=1))
    elif explain:
        out.print(render_explain(estimate), markup=False)
        out.print(_render_learned(directory, measured, chosen), markup=False)
    else:
        out.print(render_estimate(estimate), markup=False)
    raise typer.Exit(0 if estimate.per_gpu_mb is not None else 1)


# ---- which spec, and what was learned of it ------------------------------------------------


def _spec_of(model: str, state_dir: Path) -> ModelSpec | None:
    """The spec MODEL names: a spec file, or a model in force here; None for a model path."""
    if model.endswith((".yaml", ".yml")) and Path(model).is_file():
        from pydantic import ValidationError
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            doc = YAML(typ="safe").load(Path(model).read_text(encoding="utf-8"))
            return ModelSpec.model_validate(doc)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise usage_error(f"{model}: not a model spec: {problems}") from exc
        except (OSError, YAMLError, ValueError) as exc:
            raise usage_error(f"{model}: not a model spec: {exc}") from exc
    if Path(model).exists():  # a model directory or file beats a model id of the same name
        return None
    return _in_force(state_dir).get(model)


def _in_force(state_dir: Path) -> dict[str, ModelSpec]:
    """The specs of the last valid desired state this state directory applied."""
    try:
        doc = json.loads((state_dir / LAST_VALID_FILE).read_text(encoding="utf-8"))
        return {m["id"]: ModelSpec.model_validate(m) for m in doc["models"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _specs_with_path(model_path: str, state_dir: Path) -> list[ModelSpec]:
    """Models in force that load this model path (as written, or the same local file)."""
    return [s for s in _in_force(state_dir).values() if _same_path(s.model_path, model_path)]


def _same_path(a: str, b: str) -> bool:
    if a == b:
        return True
    if ":" in a or ":" in b:  # pkg: names and URLs only match as written
        return False
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _with_ctx(spec: ModelSpec, ctx: int) -> ModelSpec:
    from reconciler.engines.registry import descriptor

    key = descriptor(spec.framework).context_parameter
    if key is None:
        return spec
    return spec.model_copy(update={"parameters": {**spec.parameters, key: ctx}})


def _measured(learned: Learned, spec: ModelSpec) -> list[Measured]:
    current = spec.spec_hash()
    by_hash = learned.get(spec.id, {})
    return [Measured(spec.id, h, f, h == current) for h, f in by_hash.items()]


def _reservation(
    estimate: Estimate, spec: ModelSpec | None, subjects: list[ModelSpec], learned: Learned
) -> tuple[str, Reservation] | None:
    """What the planner reserves per GPU for the spec estimated (a model path: the one model in
    force that loads it), with its reason; a bare path gets what its estimate would give."""
    if spec is None and len(subjects) == 1:
        spec = subjects[0]
    if spec is None:
        figures = MemoryFigures(estimated_mb=estimate.per_gpu_mb)
        return ("", reservation(None, figures)) if not subjects else None
    from reconciler.loop.planning import Requirements

    requirements = Requirements(lambda mid, h: learned.get(mid, {}).get(h))
    return spec.id, requirements.reservation_of(spec, None)


# ---- output --------------------------------------------------------------------------------


def _render_learned(
    state_dir: Path, measured: list[Measured], chosen: tuple[str, Reservation] | None
) -> str:
    lines = [""]
    if not measured:
        lines.append(f"measured here: nothing yet (state directory {state_dir})")
    for m in measured:
        f = m.figures
        how = {"nvml": "GPU memory, NVML", "rss": "resident memory standing in for GPU memory"}
        which = "this spec" if m.current else "another spec of it, not used for this one"
        ratio = ""
        if f.estimated_mb and f.peak_mb is not None:
            ratio = f", peak / estimate {f.peak_mb / f.estimated_mb:.2f}"
        lines.append(
            f"measured here: model {m.model_id} (spec {m.spec_hash}, {which}): "
            f"now {_mb(f.measured_mb)}, peak {_mb(f.peak_mb)} "
            f"({how.get(f.measured_by or '', f.measured_by or 'unknown')}); "
            f"estimate then {_mb(f.estimated_mb)}{ratio}"
        )
    if chosen is not None:
        model_id, r = chosen
        whose = f" for model {model_id}" if model_id else ""
        why = r.reason if r.basis in r.reason else f"{r.basis}: {r.reason}"
        lines.append(f"the planner reserves{whose}: {_mb(r.mb)} per GPU ({why})")
    return "\n".join(lines)


def _mb(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,} MiB"


def _json(
    model: str,
    spec: ModelSpec | None,
    estimate: Estimate,
    measured: list[Measured],
    chosen: tuple[str, Reservation] | None,
) -> dict[str, object]:
    parts = []
    for part, mb in estimate.breakdown.items():
        how = estimate.derivations.get(part)
        parts.append(
            {
                "part": part,
                "mb": mb,
                "formula": how.formula if how else None,
                "factors": how.factors if how else {},
                "bytes": how.size_bytes if how else None,
            }
        )
    return {
        "model": model,
        "model_id": spec.id if spec else None,
        "spec_hash": spec.spec_hash() if spec else None,
        "per_gpu_mb": estimate.per_gpu_mb,
        "gpu_count": estimate.gpu_count,
        "note": estimate.note,
        "parts": parts,
        "measured": [
            {"model_id": m.model_id, "spec_hash": m.spec_hash, "current": m.current}
            | asdict(m.figures)
            for m in measured
        ],
        "reservation": None
        if chosen is None
        else {"model_id": chosen[0] or None} | asdict(chosen[1]),
    }
