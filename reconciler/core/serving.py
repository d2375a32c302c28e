"""How a spec is served: the names a client may send as `model` (ids and aliases, one model each),
and the engine instances of a spec with `replicas: N`, which the planner places one by one. Pure.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from reconciler.core.desired import DesiredState, Problem, SourceDoc
from reconciler.core.spec import ModelSpec


def alias_problems(
    specs: Sequence[tuple[SourceDoc, ModelSpec]], named: Collection[str]
) -> list[Problem]:
    """Aliases that clash across files. `named` holds the id of every file that names one,
    valid or not: an alias must not take the name of a model that is merely broken today."""
    ids = {spec.id: f"{doc.file}:{doc.line_of(('id',))}" for doc, spec in reversed(specs)}
    first_alias: dict[str, tuple[str, str]] = {}
    problems = []
    for doc, spec in specs:
        for i, alias in enumerate(spec.aliases):
            if alias == spec.id or alias in spec.aliases[:i]:
                continue  # the model's own problems (validate._check_model)
            line = doc.line_of(("aliases", i))
            where = f"aliases[{i}]"
            if alias in named:
                place = f" ({ids[alias]})" if alias in ids else ""
                message = f"alias '{alias}' is the id of another model{place}"
                problems.append(Problem(doc.file, line, where, message))
            elif alias in first_alias:
                owner, place = first_alias[alias]
                message = f"alias '{alias}' is also an alias of {owner} ({place})"
                problems.append(Problem(doc.file, line, where, message))
            else:
                first_alias[alias] = (spec.id, f"{doc.file}:{line}")
    return problems


SEPARATOR = "."


def instance_id(model_id: str, index: int) -> str:
    return model_id if index == 0 else f"{model_id}{SEPARATOR}{index}"


def model_of(instance: str) -> str:
    """The model an instance id belongs to (a model id is its own instance 0)."""
    return instance.split(SEPARATOR, 1)[0]


def index_of(instance: str) -> int:
    _, sep, index = instance.partition(SEPARATOR)
    return int(index) if sep and index.isdigit() else 0


def instance_ids(spec: ModelSpec) -> list[str]:
    return [instance_id(spec.id, i) for i in range(spec.replicas)]


def instances(spec: ModelSpec) -> list[ModelSpec]:
    """The specs of the instances of `spec`, instance 0 first."""
    if spec.replicas == 1:
        return [spec]
    # model_copy does not validate: an instance id has a '.', which a written id may not have
    return [spec.model_copy(update={"id": iid, "replicas": 1}) for iid in instance_ids(spec)]


def expand(desired: DesiredState) -> DesiredState:
    """`desired` with every model replaced by its instances (the planner's view)."""
    if all(spec.replicas == 1 for spec in desired.models.values()):
        return desired
    models: dict[str, ModelSpec] = {}
    origins = dict(desired.origins)
    for model_id, spec in desired.models.items():
        for copy in instances(spec):
            models[copy.id] = copy
            if model_id in desired.origins:
                origins[copy.id] = desired.origins[model_id]
    return replace(desired, models=models, origins=origins)


def per_instance(
    desired: DesiredState, usable: DesiredState, set_aside: Mapping[str, str]
) -> tuple[DesiredState, DesiredState, dict[str, str]]:
    """A pass's desired state, its usable part and its set-aside models (id -> why), from here
    on one spec per engine instance: `replicas: N` is N models to the planner, and every
    instance of a set-aside model is set aside with it."""
    broken: dict[str, str] = {}
    for model_id, why in set_aside.items():
        spec = desired.models.get(model_id)
        broken.update(dict.fromkeys(instance_ids(spec) if spec else [model_id], why))
    return expand(desired), expand(usable), broken


def group(ids: Iterable[str]) -> dict[str, list[str]]:
    """Instance ids by model, each model's instances in index order."""
    grouped: dict[str, list[str]] = {}
    for iid in sorted(ids, key=lambda i: (model_of(i), index_of(i))):
        grouped.setdefault(model_of(iid), []).append(iid)
    return grouped
