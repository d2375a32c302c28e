"""Render a validated desired state: the output directory as text, notes, and problems."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from reconciler.core.cluster import KubernetesSpec
from reconciler.core.desired import DesiredState, RawDesiredState
from reconciler.core.flags import FlagValueError
from reconciler.core.problems import Problem
from reconciler.core.spec import ModelSpec
from reconciler.kubernetes.objects import (
    ModelContext,
    deployment,
    kustomization,
    model_notes,
    priority_class,
    service,
)
from reconciler.kubernetes.output import (
    KUSTOMIZATION,
    MODELS_DIR,
    PRIORITY_CLASSES,
    Rendered,
    RenderProblem,
    yaml_file,
)
from reconciler.kubernetes.pods import ModelPathError, PodModel, pod_model
from reconciler.models import files as modelfiles

WORKING_TREE = "working-tree"


def render(
    desired: DesiredState,
    *,
    namespace: str | None = None,
    memory: Mapping[str, int | None] | None = None,
    source_files: Mapping[str, str] | None = None,
) -> Rendered:
    """The output directory for `desired`. `memory`: MiB per GPU per model id (None = unknown);
    `source_files`: each model's spec file relative to the desired-state directory."""
    kube = desired.cluster.kubernetes
    problems = _cluster_problems(desired)
    pods: dict[str, PodModel] = {}
    for spec in _sorted_models(desired):
        try:
            pods[spec.id] = pod_model(spec, kube)
        except ModelPathError as exc:
            problems.append(_path_problem(spec.id, kube, str(exc)))
        if not spec.id[0].isalpha():
            message = f"id '{spec.id}' must start with a letter to name a Kubernetes Service"
            problems.append(RenderProblem(spec.id, ("id",), message))
    if problems:
        return Rendered(problems=problems)
    memory = memory or {}
    files: dict[str, str] = {}
    notes: list[str] = []
    for spec in _sorted_models(desired):
        ctx = ModelContext(
            namespace=namespace or kube.namespace,
            revision=desired.revision or WORKING_TREE,
            source_file=(source_files or {}).get(spec.id, f"{MODELS_DIR}/{spec.id}.yaml"),
            memory_mb=memory.get(spec.id),
            reserved_mb=desired.cluster.reserved_memory_mb,
        )
        try:
            docs = [deployment(spec, pods[spec.id], ctx, kube), service(spec, ctx, kube)]
        except FlagValueError as exc:
            problems.append(RenderProblem(spec.id, ("parameters",), str(exc)))
            continue
        these = model_notes(spec, ctx.memory_mb)
        notes += these
        files[f"{MODELS_DIR}/{spec.id}.yaml"] = yaml_file(docs, these)
    if problems:
        return Rendered(problems=problems)
    levels = sorted({spec.priority for spec in desired.models.values()})
    if levels:
        files[PRIORITY_CLASSES] = yaml_file([priority_class(p) for p in levels])
    files[KUSTOMIZATION] = yaml_file([kustomization(sorted(files))])
    return Rendered(dict(sorted(files.items())), notes)


def _sorted_models(desired: DesiredState) -> list[ModelSpec]:
    return [desired.models[k] for k in sorted(desired.models)]


def _path_problem(model_id: str, kube: KubernetesSpec, message: str) -> RenderProblem:
    """Blame the line that chose the path: cluster.yaml's model_paths entry, or the spec."""
    if model_id in kube.model_paths:
        return RenderProblem(None, ("kubernetes", "model_paths", model_id), message)
    return RenderProblem(model_id, ("model_path",), message)


def _cluster_problems(desired: DesiredState) -> list[RenderProblem]:
    unknown = sorted(set(desired.cluster.kubernetes.model_paths) - set(desired.models))
    return [
        RenderProblem(
            None, ("kubernetes", "model_paths", key), f"'{key}' is not a model in desired-state"
        )
        for key in unknown
    ]


# ---- from a loaded directory ---------------------------------------------------------------


def render_loaded(
    raw: RawDesiredState, desired: DesiredState, namespace: str | None = None
) -> tuple[Rendered, list[Problem]]:
    """Render a validated desired state; its problems located as file:line."""
    rendered = render(
        desired,
        namespace=namespace,
        memory=memory_requirements(desired),
        source_files=source_files(raw),
    )
    return rendered, [_locate(p, raw) for p in rendered.problems]


def memory_requirements(desired: DesiredState) -> dict[str, int | None]:
    """MiB per GPU of each GPU model whose need every rendering machine knows alike: declared in
    the spec, or estimated from a packaged model (its files come with an installed package)."""
    from reconciler.loop.planning import Requirements  # the planner's cache: only when rendering

    requirements = Requirements()
    found: dict[str, int | None] = {}
    for spec in _sorted_models(desired):
        known = spec.resource_requirements.gpu_memory_mb is not None
        if spec.resource_requirements.gpu_count and (
            known or modelfiles.is_packaged(spec.model_path)
        ):
            found[spec.id] = requirements.of(spec, None)
    return found


def source_files(raw: RawDesiredState) -> dict[str, str]:
    """Model id -> its spec file relative to the desired-state directory (not to the current
    directory, which would make the output depend on where the command ran)."""
    return {
        doc.data["id"]: f"{MODELS_DIR}/{Path(doc.file).name}"
        for doc in raw.models
        if isinstance(doc.data.get("id"), str)
    }


def _locate(problem: RenderProblem, raw: RawDesiredState) -> Problem:
    dotted = ".".join(problem.field)
    if problem.model_id is None:
        doc = raw.cluster
    else:
        doc = next((d for d in raw.models if d.data.get("id") == problem.model_id), None)
    if doc is None:
        return Problem("cluster.yaml", 1, dotted, problem.message)
    return Problem(doc.file, doc.line_of(problem.field), dotted, problem.message)
