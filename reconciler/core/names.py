"""The names a client may send as `model`: ids and aliases, one model each. Pure.

An alias is looked up by the gateway beside the ids, so it must never be another model's id or
another model's alias: the request would reach a model its author did not mean. Each clash is
reported at the alias, with the file:line of the name it clashes with.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from reconciler.core.desired import SourceDoc
from reconciler.core.problems import Problem
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
