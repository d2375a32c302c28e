"""Issue 14, case 1: a spec cannot choose where its engine listens.

First release: `env: {HOST: 0.0.0.0}` made the llama.cpp engine listen on every interface
(llama-cpp-python's settings read HOST/PORT from the environment, and they beat --host/--port);
`env: {PORT: "18777"}` moved it off its assigned port; a list parameter
`tensor-split: [1, "--host=0.0.0.0"]` became two argv words, the second read as the engine's own
flag. All three were "valid". Now `reconciler validate` (and so the hooks and the loop) refuses
each with file:line. What an engine does anyway is caught by the socket check
(test_engine_sockets.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import run_cli
from security_support import llama_spec


def validate(desired: Path) -> tuple[int, list[str]]:
    proc = run_cli("validate", "desired-state", "--no-path-check", cwd=desired.parent)
    return proc.returncode, proc.stdout.splitlines()


@pytest.mark.parametrize(
    ("line", "field", "name"),
    [
        ("env: {HOST: 0.0.0.0}", "env.HOST", "HOST"),
        ('env: {PORT: "18777"}', "env.PORT", "PORT"),
        ("env: {host: 0.0.0.0}", "env.host", "host"),  # pydantic-settings ignores case
    ],
)
def test_env_that_sets_the_listen_address_or_port_is_refused(
    desired: Path, line: str, field: str, name: str
) -> None:
    (desired / "models" / "evil.yaml").write_text(llama_spec("evil", line))
    code, lines = validate(desired)
    assert code == 1
    [problem] = [x for x in lines if "evil.yaml" in x]
    assert problem.startswith(f"desired-state/models/evil.yaml:4: error: {field}: llama_cpp reads")
    assert f"'{name}' as its listen address or port" in problem


def test_a_list_parameter_cannot_smuggle_a_flag(desired: Path) -> None:
    spec = llama_spec("evil", "parameters:", '  tensor-split: [1, "--host=0.0.0.0"]')
    (desired / "models" / "evil.yaml").write_text(spec)
    code, lines = validate(desired)
    assert code == 1
    assert (
        "desired-state/models/evil.yaml:5: error: parameters.tensor-split[1]: value "
        "'--host=0.0.0.0' starts with '-': a value cannot start a new flag"
    ) in lines


@pytest.mark.parametrize("value", ["--host=0.0.0.0", "-h", "--port"])
def test_a_scalar_parameter_cannot_start_a_flag(desired: Path, value: str) -> None:
    (desired / "models" / "evil.yaml").write_text(
        llama_spec("evil", f"parameters: {{alias: '{value}'}}")
    )
    code, lines = validate(desired)
    assert code == 1
    assert any(
        x.startswith("desired-state/models/evil.yaml:4: error: parameters.alias: value ")
        and "a value cannot start a new flag" in x
        for x in lines
    ), lines


def test_a_model_path_cannot_start_a_flag(desired: Path) -> None:
    # `vllm serve MODEL_PATH ...`: the path is a positional word that argparse would read as a flag
    text = "id: evil\nframework: vllm\nmodel_path: --host=0.0.0.0\n"
    (desired / "models" / "evil.yaml").write_text(text)
    code, lines = validate(desired)
    assert code == 1
    assert (
        "desired-state/models/evil.yaml:3: error: model_path: model_path cannot start with '-': "
        "the engine would read a flag"
    ) in lines


def test_the_good_model_beside_them_is_still_valid_alone(desired: Path) -> None:
    code, lines = validate(desired)
    assert code == 0, lines
