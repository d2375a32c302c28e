"""Hostile and broken input never crashes load + validate, and every problem is located.

Properties, for random text, mutated example files and random values in the examples' fields:
- parse_document, load_directory and validate never raise;
- a file is either a document or exactly one problem;
- every problem names one of the files, a line inside it (>= 1) and a message;
- `valid` is exactly "no problem is an error";
- a spec is refused exactly when something that would reach the engine is hostile (a value that
  starts a flag, a control character, an env name that is not one or that sets the engine's
  listen address or port, a number beyond 64 bits or not finite).
"""

from __future__ import annotations

import math
import re
import tempfile
from io import StringIO
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import Problem, RawDesiredState, SourceDoc, ValidationResult
from reconciler.core.spec import ModelSpec
from reconciler.core.spec_checks import _validator, accepted_strictly, validate
from reconciler.engines.registry import catalog, missing_message
from reconciler.source.load import load_directory, parse_document

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "desired-state"
EXAMPLES: dict[str, str] = {
    p.relative_to(EXAMPLE_DIR).as_posix(): p.read_text(encoding="utf-8")
    for p in sorted(EXAMPLE_DIR.rglob("*.yaml"))
}
CLUSTER = "cluster.yaml"
CATALOG = catalog()

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def n_lines(text: str) -> int:
    # YAML's line breaks, which the parsers count: a lone \r is one, \r\n one, NEL and the
    # Unicode separators too (ruamel)
    return len(re.split("\r\n|[\r\n\x85\u2028\u2029]", text))


def assert_located(problems: list[Problem], texts: dict[str, str]) -> None:
    for p in problems:
        assert p.file in texts, p
        assert isinstance(p.line, int), p
        # the line is inside the file (a parser at end of input may point one past the last)
        assert 1 <= p.line <= n_lines(texts[p.file]) + 1, p
        assert isinstance(p.message, str) and p.message.strip(), p
        assert p.severity in ("error", "warning"), p
        assert isinstance(p.field, str), p


def parse_all(texts: dict[str, str]) -> tuple[RawDesiredState, list[Problem]]:
    """Parse every text like load_directory does, checking the one-of contract of each."""
    cluster: SourceDoc | None = None
    models: list[SourceDoc] = []
    problems: list[Problem] = []
    for file, text in texts.items():
        doc, problem = parse_document(file, text)
        assert (doc is None) != (problem is None), (file, doc, problem)
        if problem is not None:
            assert problem.file == file
            assert problem.severity == "error"
            problems.append(problem)
        elif file == CLUSTER:
            cluster = doc
        else:
            assert doc is not None
            models.append(doc)
    return RawDesiredState("desired-state", None, cluster, models, problems), problems


def check_state(texts: dict[str, str]) -> ValidationResult:
    raw, parse_problems = parse_all(texts)
    assert_located(parse_problems, texts)
    result = validate(raw, path_check=missing_message, catalog=CATALOG)
    assert_located(result.problems, texts)
    assert set(parse_problems) <= set(result.problems)
    assert result.valid == (not any(p.is_error for p in result.problems))
    if result.desired is not None:
        assert len(result.desired.models) == len(raw.models)
        for model_id, (file, line) in result.desired.origins.items():
            assert result.desired.models[model_id].id == model_id
            assert file in texts and line >= 1
    return result


# ---- strategies -----------------------------------------------------------------------------

YAML_BITS = st.sampled_from(
    [
        ":",
        "- ",
        "[",
        "]",
        "{",
        "}",
        "#",
        "&a",
        "*a",
        "!",
        "!!",
        "|",
        ">",
        "'",
        '"',
        "%",
        "@",
        "`",
        "\t",
        "\n",
        "  ",
        "---",
        "...",
        "<<: ",
        "? ",
        ",",
        "\\",
        "\x00",
        "\ufeff",
        "\x85",
    ]
)

SCALAR_TEXT = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "true",
            "false",
            "yes",
            "null",
            "~",
            "",
            ".inf",
            "-.nan",
            "0o17",
            "0x_",
            "1_0",
            "2024-01-01",
            "'quoted'",
            '"a\\tb"',
            "*a",
            "&a x",
            "!!int x",
            "!!str 1",
            "!x y",
            "[]",
            "{}",
            "[1, [2, [3]]]",
            "{a: {b: {c: d}}}",
            "llama_cpp",
            "vllm",
            "docker",
            "gemma3-270m",
            "qwen2-7b",
            "web-echo",
            "8180",
            "-1",
            "11",
            "0",
            "high",
        ]
    ),
    st.text(max_size=12),
)


def line_index(draw: Any, lines: list[str]) -> int:
    return draw(st.integers(0, max(len(lines) - 1, 0)))


def delete_line(draw: Any, lines: list[str]) -> list[str]:
    if not lines:
        return lines
    i = line_index(draw, lines)
    return lines[:i] + lines[i + 1 :]


def duplicate_line(draw: Any, lines: list[str]) -> list[str]:
    if not lines:
        return lines
    i = line_index(draw, lines)
    return lines[: i + 1] + lines[i:]


def swap_chars(draw: Any, lines: list[str]) -> list[str]:
    i = line_index(draw, lines)
    if not lines or len(lines[i]) < 2:
        return lines
    line = lines[i]
    j = draw(st.integers(0, len(line) - 2))
    lines = list(lines)
    lines[i] = line[:j] + line[j + 1] + line[j] + line[j + 2 :]
    return lines


def random_value(draw: Any, lines: list[str]) -> list[str]:
    keyed = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]
    if not keyed:
        return lines
    i = draw(st.sampled_from(keyed))
    key = lines[i].split(":", 1)[0]
    lines = list(lines)
    lines[i] = f"{key}: {draw(SCALAR_TEXT)}\n"
    return lines


def random_nesting(draw: Any, lines: list[str]) -> list[str]:
    if not lines:
        return lines
    i = line_index(draw, lines)
    line = lines[i].rstrip("\n")
    kind = draw(st.sampled_from(["indent", "dedent", "item", "flow-list", "flow-map", "block"]))
    if kind == "indent":
        line = " " * draw(st.integers(1, 6)) + line
    elif kind == "dedent":
        line = line.lstrip()
    elif kind == "item":
        line = "- " + line
    elif ":" in line:
        key, value = line.split(":", 1)
        if kind == "flow-list":
            line = f"{key}: [{value.strip()}]"
        elif kind == "flow-map":
            line = f"{key}: {{x: {value.strip() or 'null'}}}"
        else:
            line = f"{key}:\n  nested:\n    - {value.strip() or '~'}"
    lines = list(lines)
    lines[i] = line + "\n"
    return lines


def insert_bits(draw: Any, lines: list[str]) -> list[str]:
    lines = list(lines) or [""]
    i = line_index(draw, lines)
    j = draw(st.integers(0, len(lines[i])))
    bits = "".join(draw(st.lists(YAML_BITS, min_size=1, max_size=4)))
    lines[i] = lines[i][:j] + bits + lines[i][j:]
    return lines


def insert_line(draw: Any, lines: list[str]) -> list[str]:
    i = draw(st.integers(0, len(lines)))
    new = draw(st.one_of(st.text(max_size=30), SCALAR_TEXT.map(lambda v: f"extra: {v}")))
    return [*lines[:i], new + "\n", *lines[i:]]


MUTATIONS = [
    delete_line,
    duplicate_line,
    swap_chars,
    random_value,
    random_nesting,
    insert_bits,
    insert_line,
]


@st.composite
def mutated_examples(draw: Any) -> dict[str, str]:
    """All examples, one or two of them mutated a few times."""
    texts = dict(EXAMPLES)
    for name in draw(st.lists(st.sampled_from(sorted(EXAMPLES)), min_size=1, max_size=2)):
        lines = texts[name].splitlines(keepends=True)
        for mutate in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=5)):
            lines = mutate(draw, lines)
        texts[name] = "".join(lines)
    return texts


# ruamel's dumper writes NEL and the Unicode line/paragraph separators raw inside quoted scalars,
# where YAML folds them into a space: a dumper bug, so the round trip leaves them out.
DUMPABLE_TEXT = st.characters(blacklist_characters="\x85\u2028\u2029")
KEYS = st.one_of(
    st.sampled_from(["id", "gpus", "index", "memory_mb", "priority", "ctx-size", "image", "x"]),
    st.text(DUMPABLE_TEXT, min_size=1, max_size=8),
).filter(lambda k: k != "<<")  # a dumper writes `<<` plain, which YAML reads as a merge
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(DUMPABLE_TEXT, max_size=10)
    | st.sampled_from(["auto", "gemma3-270m", "docker", "2024-01-01", "yes", "0o17", "1_000"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=12,
)


def dump(data: Any) -> str:
    stream = StringIO()
    yaml = YAML(typ="safe", pure=True)
    # block style, as people write specs: in a flow list ruamel (YAML 1.2) writes the string
    # "?0" plain, `[?0]`, which libyaml (YAML 1.1 there) reads as a mapping key
    yaml.default_flow_style = False
    yaml.dump(data, stream)
    return stream.getvalue()


def plain_examples() -> dict[str, Any]:
    out = {}
    for name, text in EXAMPLES.items():
        doc, problem = parse_document(name, text)
        assert doc is not None, problem
        out[name] = doc.data
    return out


PLAIN = plain_examples()


@st.composite
def examples_with_random_values(draw: Any) -> tuple[str, Any]:
    """One example's data with a field (top level or nested) replaced or added."""
    name = draw(st.sampled_from(sorted(PLAIN)))
    data = dict(PLAIN[name])
    key = draw(st.sampled_from([*data, "extra"]))
    value = draw(VALUES)
    if isinstance(data.get(key), dict) and draw(st.booleans()):
        inner = dict(data[key])
        inner[draw(st.sampled_from([*inner, "extra"]) if inner else KEYS)] = value
        value = inner
    data[key] = value
    return name, data


# ---- properties ----------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=300))
def test_random_text_never_raises(text: str) -> None:
    check_state({"models/random.yaml": text, CLUSTER: text})


@FUZZ
@given(st.lists(st.one_of(YAML_BITS, st.text(max_size=8)), max_size=40).map("".join))
def test_random_yaml_punctuation_never_raises(text: str) -> None:
    check_state({"models/random.yaml": text})


@settings(FUZZ, max_examples=250)
@given(mutated_examples())
def test_mutated_examples_never_raise(texts: dict[str, str]) -> None:
    check_state(texts)


@FUZZ
@given(examples_with_random_values())
def test_random_values_in_fields(case: tuple[str, Any]) -> None:
    name, data = case
    text = dump(data)
    texts = {**EXAMPLES, name: text}
    # anything a YAML library writes reads back: same values, no problem from the loader
    doc, problem = parse_document(name, text)
    assert problem is None, (problem, text)
    assert doc is not None and doc.data == data
    check_state(texts)


@FUZZ
@given(st.recursive(st.text(max_size=3), lambda c: st.lists(c, max_size=2), max_leaves=60))
def test_random_nesting_in_parameters(value: Any) -> None:
    text = EXAMPLES["models/gemma3-270m.yaml"] + f"\nextra_nesting: {value!r}\n"
    result = check_state({**EXAMPLES, "models/gemma3-270m.yaml": text})
    assert not result.valid  # an unknown field, or a YAML error: never silently accepted


@settings(FUZZ, max_examples=25, suppress_health_check=list(HealthCheck))
@given(mutated_examples(), st.binary(max_size=40))
def test_load_directory_with_mutated_files_never_raises(texts: dict[str, str], junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in texts.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8")
        (root / "models/junk.yaml").write_bytes(junk)
        raw = load_directory(root)
        result = validate(raw, path_check=missing_message, catalog=CATALOG)
        texts = {**texts, "models/junk.yaml": junk.decode("utf-8", "replace")}
        relative = [
            Problem(
                Path(p.file).resolve().relative_to(root.resolve()).as_posix(),
                p.line,
                p.field,
                p.message,
                p.severity,
            )
            for p in result.problems
        ]
        assert_located(relative, texts)
        assert result.valid == (not result.errors)


HOSTILE_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(
        ["--host=0.0.0.0", "-1", "-0.5", "-x", "a\x00b", "\x1b[2J", "a\nb", "A=B", "HOST", "port"]
    ),
)
HOSTILE_NUMBER = st.one_of(
    st.sampled_from([2**63, -(2**63) - 1, 16**4000, float("inf"), float("nan"), 2**63 - 1]),
    st.integers(),
    st.floats(),
)
HOSTILE_VALUE = st.one_of(HOSTILE_TEXT, HOSTILE_NUMBER, st.booleans())
CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@st.composite
def llama_specs(draw: Any) -> dict[str, Any]:
    known = CATALOG["llama_cpp"].parameters
    assert known
    value = st.one_of(HOSTILE_VALUE, st.lists(HOSTILE_VALUE, max_size=3))
    return {
        "id": "a",
        "framework": "llama_cpp",
        "model_path": draw(st.one_of(st.just("/m/a.gguf"), HOSTILE_TEXT.filter(bool))),
        "parameters": draw(st.dictionaries(st.sampled_from(sorted(known)), value, max_size=3)),
        "env": draw(st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3)),
        "resource_requirements": {"gpu_count": 0},
    }


def hostile(spec: dict[str, Any]) -> bool:
    """An oracle written apart from the validator: would this spec harm the engine start?"""
    listen = {n.upper() for n in CATALOG["llama_cpp"].reserved_env | {"HOST", "PORT"}}
    path = spec["model_path"]
    values = [v for x in spec["parameters"].values() for v in (x if isinstance(x, list) else [x])]
    flags = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    env = spec["env"]
    return (
        any(ord(c) < 32 or c == "\x7f" for c in path)
        or path.startswith("-")
        or any(CONTROL_IN_VALUE.search(t) for t in [*flags, *env.values()])
        or any(t.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", t) for t in flags)
        or any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) or n.upper() in listen for n in env)
        or any(isinstance(n, float) and not math.isfinite(n) for n in numbers)
        or any(isinstance(n, int) and not -(2**63) <= n < 2**63 for n in numbers)
    )


@FUZZ
@given(llama_specs())
def test_hostile_values_are_refused_and_never_raise(spec: dict[str, Any]) -> None:
    doc = SourceDoc("models/a.yaml", spec, {(): 1})
    result = validate(RawDesiredState("desired-state", None, None, [doc], []), catalog=CATALOG)
    assert result.valid != hostile(spec), result.problems
    assert all(p.file == "models/a.yaml" and p.line == 1 for p in result.problems)


def test_the_fuzzers_start_from_valid_examples() -> None:
    # the mutations are only meaningful if the unmutated state is valid
    result = check_state(dict(EXAMPLES))
    assert result.valid


@settings(max_examples=400, deadline=None)
@given(examples_with_random_values())
def test_the_strict_fast_path_accepts_only_what_the_schema_accepts(example: tuple[str, Any]):
    # oracle: the JSON Schema (jsonschema) and pydantic's lax validation, the slow path
    name, data = example
    model, kind = (ClusterSpec, "cluster") if name == "cluster.yaml" else (ModelSpec, "model")
    fast = accepted_strictly(data, model)
    if fast is None:
        return
    assert list(_validator(kind).iter_errors(data)) == []
    assert model.model_validate(data) == fast
