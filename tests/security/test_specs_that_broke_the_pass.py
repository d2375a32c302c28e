"""Issue 14, case 2: a spec that passes `validate` must be one the engine start can take.

First release: an env name containing `=`, a NUL in an env value, or an integer parameter of
thousands of digits was "valid"; the pass then raised (ValueError, OverflowError) outside the
per-model error handling and no model was started or stopped again. Now `reconciler validate`
refuses each with file:line, and never prints a traceback while doing so (run_cli checks). The
loop's own isolation of a model that raises anyway is test_hostile_chaos.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import run_cli
from security_support import llama_spec


def problems_of(desired: Path, *extra: str) -> tuple[int, list[str]]:
    (desired / "models" / "evil.yaml").write_text(llama_spec("evil", *extra))
    proc = run_cli("validate", "desired-state", "--no-path-check", cwd=desired.parent)
    return proc.returncode, [x for x in proc.stdout.splitlines() if "evil.yaml" in x]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('env: {"A=B": x}', "env.A=B"),
        ('env: {"1ST": x}', "env.1ST"),
        ('env: {"A B": x}', "env.A B"),
        ('env: {"": x}', "env."),
    ],
)
def test_env_name_that_is_not_a_name_is_refused(desired: Path, line: str, field: str) -> None:
    code, lines = problems_of(desired, line)
    assert code == 1
    [problem] = lines
    assert problem.startswith(f"desired-state/models/evil.yaml:4: error: {field}: ")
    assert "is not an environment variable name" in problem


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('env: {A: "a\\0b"}', "env.A", "contains a NUL character"),
        ('parameters: {alias: "a\\0b"}', "parameters.alias", "contains a NUL character"),
        ('env: {A: "\\e[2J"}', "env.A", "contains the control character '\\x1b'"),
        (
            'parameters: {alias: "a\\rb\\u0007"}',
            "parameters.alias",
            "the control character '\\x07'",
        ),
    ],
)
def test_nul_and_control_characters_are_refused(
    desired: Path, line: str, field: str, message: str
) -> None:
    code, lines = problems_of(desired, line)
    assert code == 1
    [problem] = lines
    assert problem.startswith(f"desired-state/models/evil.yaml:4: error: {field}: ")
    assert message in problem


@pytest.mark.parametrize(
    ("path", "message"),
    [("/m\\0.gguf", "contains a NUL character"), ("/m\\n.gguf", "the control character '\\n'")],
)
def test_a_model_path_with_nul_or_a_line_break_is_refused(
    desired: Path, path: str, message: str
) -> None:
    text = f'id: evil\nframework: llama_cpp\nmodel_path: "{path}"\n'
    (desired / "models" / "evil.yaml").write_text(text)
    proc = run_cli("validate", "desired-state", "--no-path-check", cwd=desired.parent)
    assert proc.returncode == 1
    [problem] = [x for x in proc.stdout.splitlines() if "evil.yaml" in x]
    assert problem.startswith("desired-state/models/evil.yaml:3: error: model_path: ")
    assert message in problem


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("9" * 3000, "an integer of about 3001 digits"),  # decimal: thousands of digits
        ("0x" + "f" * 4000, "an integer of about 4817 digits"),  # more than Python will print
        (str(2**63), str(2**63)),
        (str(-(2**63) - 1), str(-(2**63) - 1)),
    ],
)
def test_integers_beyond_64_bits_are_refused(desired: Path, value: str, shown: str) -> None:
    code, lines = problems_of(desired, f"parameters: {{ctx-size: {value}}}")
    assert code == 1
    assert lines == [
        f"desired-state/models/evil.yaml:4: error: parameters.ctx-size: {shown} is out of range: "
        "engines parse -9223372036854775808..9223372036854775807"
    ]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_numbers_that_are_not_finite_are_refused(desired: Path, value: str) -> None:
    code, lines = problems_of(desired, f"parameters: {{rope-freq-base: {value}}}")
    assert code == 1
    [problem] = lines
    assert problem.startswith("desired-state/models/evil.yaml:4: error: parameters.rope-freq-base")
    assert "is not a finite number" in problem


def test_a_huge_integer_anywhere_is_reported_not_raised(desired: Path) -> None:
    code, lines = problems_of(desired, "priority: 0x" + "f" * 4000)
    assert code == 1
    assert lines == [
        "desired-state/models/evil.yaml:4: error: priority: an integer of about 4817 digits is "
        "out of range: engines parse -9223372036854775808..9223372036854775807"
    ]


def test_what_engines_can_take_stays_valid(desired: Path) -> None:
    # negative numbers, tabs and line breaks in values (a multi-line chat template), long names
    code, lines = problems_of(
        desired,
        "parameters: {seed: -1, rope-freq-scale: -0.5, alias: '-1', chat-template: \"a\\n\\tb\"}",
        "env: {_UNDER: x, LONG_NAME_2: 'multi\\nline\\ttext', GREETING: hello}",
    )
    assert (code, lines) == (0, [])
