"""The checked-in JSON Schemas: fresh, referenced by every example, and true to the examples.

An editor with yaml-language-server validates specs against schemas/*.schema.json as the
operator types, so those files must say exactly what the validator says.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from reconciler.cli.validate import SCHEMA_FILES, render, stale_schemas, write_schemas

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
EXAMPLES = sorted((REPO / "desired-state").rglob("*.y*ml"))
SCHEMA_LINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)\s*$", re.MULTILINE)


def expected_schema(example: Path) -> str:
    return "cluster.schema.json" if example.name == "cluster.yaml" else "model.schema.json"


def plain(path: Path) -> object:
    """The example as plain JSON-like data, read independently of reconciler.source.load."""
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def test_there_are_examples_of_both_kinds() -> None:
    names = {p.relative_to(REPO / "desired-state").as_posix() for p in EXAMPLES}
    assert "cluster.yaml" in names
    assert any(n.startswith("models/") for n in names)


def test_checked_in_schemas_are_fresh() -> None:
    stale = stale_schemas(SCHEMAS)
    assert stale == [], f"regenerate with `reconciler schema export schemas`: {stale}"


def test_stale_schemas_notices_an_edited_and_a_missing_file(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    assert stale_schemas(tmp_path / "schemas") == []
    model = tmp_path / "schemas/model.schema.json"
    model.write_text(model.read_text().replace('"priority"', '"prio"'), encoding="utf-8")
    (tmp_path / "schemas/cluster.schema.json").unlink()
    assert sorted(stale_schemas(tmp_path / "schemas")) == [
        "cluster.schema.json",
        "model.schema.json",
    ]


def test_write_schemas_produces_fresh_files(tmp_path: Path) -> None:
    written = write_schemas(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(SCHEMA_FILES)
    assert stale_schemas(tmp_path / "out") == []
    for path in written:
        assert path.read_text(encoding="utf-8") == render(path.name)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_checked_in_schema_is_a_valid_json_schema(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    assert schema["$id"] == name
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["additionalProperties"] is False  # typos must be errors in the editor too


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_points_at_its_schema(example: Path) -> None:
    match = SCHEMA_LINE.search(example.read_text(encoding="utf-8"))
    assert match, f"{example}: no `# yaml-language-server: $schema=` line"
    target = (example.parent / match.group(1)).resolve()
    assert target.is_file(), f"{example}: {match.group(1)} does not exist"
    assert target == (SCHEMAS / expected_schema(example)).resolve()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_against_the_checked_in_schema(example: Path) -> None:
    schema = json.loads((SCHEMAS / expected_schema(example)).read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(plain(example))
    ]
    assert errors == []


def test_the_checked_in_schema_rejects_what_the_validator_rejects() -> None:
    schema = json.loads((SCHEMAS / "model.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    good = plain(REPO / "desired-state/models/gemma3-270m.yaml")
    assert isinstance(good, dict)
    assert validator.is_valid(good)
    for broken in (
        {**good, "priority": 11},
        {**good, "id": "Not_A_Label"},
        {**good, "priorty": 3},
        {**good, "parameters": {"ctx-size": {"nested": 1}}},
        {k: v for k, v in good.items() if k != "framework"},
    ):
        assert not validator.is_valid(broken), broken
