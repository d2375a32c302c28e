"""A remote model's spec: what parses, what validation refuses (file:line, one problem per
field, both ways: engine fields on an endpoint, endpoint fields on an engine), and overflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_validate import TWO_GPUS, check, error, one, path_of

from reconciler.core.desired import Problem, ValidationResult
from reconciler.core.spec import ModelSpec
from reconciler.engines import registry
from reconciler.engines.base import EngineError, EnginePlacement

ENDPOINT = "https://api.example.com/v1"


def remote(model_id: str, *extra: str, endpoint: str | None = ENDPOINT) -> str:
    """A remote spec: id on line 1, framework 2, endpoint 3, `extra` lines from 4 on."""
    lines = [f"id: {model_id}", "framework: remote"]
    lines.append(f"endpoint: {endpoint}" if endpoint is not None else "priority: 5")
    return "\n".join([*lines, *extra]) + "\n"


def check_remote(model_id: str, *extra: str, endpoint: str | None = ENDPOINT) -> ValidationResult:
    return check({path_of(model_id): remote(model_id, *extra, endpoint=endpoint)})


def test_a_remote_spec_needs_no_model_path_and_probes_its_models_list() -> None:
    result = check_remote(
        "gpt", "upstream_model: gpt-4o-mini", "api_key_env: RECONCILER_SECRET_OPENAI"
    )
    assert result.problems == []
    assert result.desired is not None
    spec = result.desired.models["gpt"]
    assert spec.is_remote and spec.endpoint == ENDPOINT
    assert spec.served_upstream == "gpt-4o-mini"
    probe = spec.health_check
    assert (probe.path, probe.interval_s, probe.timeout_s) == ("/models", 30, 5)


def test_upstream_model_defaults_to_the_id_and_a_written_probe_is_kept() -> None:
    result = check_remote("gpt", "health_check: {path: /health, interval_s: 7}")
    assert result.desired is not None
    spec = result.desired.models["gpt"]
    assert spec.served_upstream == "gpt"
    assert (spec.health_check.path, spec.health_check.interval_s) == ("/health", 7)


def test_a_local_model_keeps_the_engine_probe() -> None:
    spec = ModelSpec(id="a", framework="llama_cpp", model_path="/m.gguf")
    assert (spec.health_check.path, spec.health_check.interval_s) == ("/health", 10)
    assert not spec.is_remote


def test_a_remote_spec_without_endpoint_is_refused() -> None:
    assert check_remote("gpt", endpoint=None).problems == [
        error(path_of("gpt"), 1, "endpoint", "framework remote needs an endpoint "
              "(its OpenAI-compatible base URL)"),
    ]  # fmt: skip


def test_an_engine_still_needs_its_model_path() -> None:
    result = check({path_of("a"): "id: a\nframework: vllm\n"})
    assert result.problems == [error(path_of("a"), 1, "", "missing required field 'model_path'")]


def test_endpoints_that_are_not_a_base_url_are_refused_at_their_line() -> None:
    for bad in (
        "ftp://api.example.com/v1",
        "https://user:pw@api.example.com/v1",  # user info could hide the real host
        "https://api.example.com/v1?key=1",
        "https://api.example.com/v1#x",
        "api.example.com/v1",
        "https://api.example.com:99999/v1",
        "https://:8080/v1",
    ):
        problems = check_remote("gpt", endpoint=bad).problems
        assert [(p.line, p.field) for p in problems] == [(3, "endpoint")], bad


# What a remote model refuses: the line written on line 4, and the field named in the problem.
ENGINE_ONLY_LINES = {
    "model_path": "model_path: /models/m.gguf",
    "image": "image: nginx",
    "parameters": "parameters: {ctx-size: 4096}",
    "gpu_devices": "gpu_devices: [0]",
    "resource_requirements": "resource_requirements: {gpu_count: 0}",
    "port": "port: 8123",
    "env": "env: {A: b}",
    "replicas": "replicas: 2",
    "activation": "activation: on_demand",
    "idle_timeout_s": "idle_timeout_s: 60",
    "overflow": "overflow: {model: other, queue_over: 2}",
}


def test_each_engine_field_on_a_remote_model_is_one_problem_at_its_line() -> None:
    for field_name, line in ENGINE_ONLY_LINES.items():
        result = check(
            {
                path_of("gpt"): remote("gpt", line),
                path_of("other"): remote("other"),
            }
        )
        assert [(p.file, p.line, p.field, p.severity) for p in result.problems] == [
            (path_of("gpt"), 4, field_name, "error")
        ], field_name
        assert "framework remote" in result.problems[0].message


def test_defaults_written_out_on_a_remote_model_are_not_refused() -> None:
    result = check_remote("gpt", "replicas: 1", "activation: always", "env: {}", "port: null")
    assert result.problems == []


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from(sorted(ENGINE_ONLY_LINES))))
def test_problems_name_exactly_the_engine_fields_written(fields: set[str]) -> None:
    lines = [ENGINE_ONLY_LINES[f] for f in sorted(fields)]
    result = check({path_of("gpt"): remote("gpt", *lines), path_of("other"): remote("other")})
    by_field = {p.field: p.line for p in result.problems}
    assert len(result.problems) == len(fields)
    assert by_field == {f: 4 + i for i, f in enumerate(sorted(fields))}


REMOTE_ONLY_LINES = {
    "endpoint": f"endpoint: {ENDPOINT}",
    "upstream_model": "upstream_model: gpt-4o",
    "api_key_env": "api_key_env: RECONCILER_SECRET_OPENAI",
    "max_concurrency": "max_concurrency: 4",
}


def test_each_endpoint_field_on_an_engine_is_one_problem_at_its_line() -> None:
    for field_name, line in REMOTE_ONLY_LINES.items():
        assert one("a", line).problems == [
            error(path_of("a"), 4, field_name,
                  f"{field_name} is for framework remote only, not llama_cpp"),
        ], field_name  # fmt: skip


def test_api_key_env_must_be_a_reconciler_secret() -> None:
    problems = check_remote("gpt", "api_key_env: OPENAI_API_KEY").problems
    assert [(p.line, p.field) for p in problems] == [(4, "api_key_env")]


def test_max_concurrency_is_at_least_one() -> None:
    problems = check_remote("gpt", "max_concurrency: 0").problems
    assert [(p.line, p.field) for p in problems] == [(4, "max_concurrency")]


def test_a_remote_model_needs_no_declared_gpu() -> None:
    result = check({path_of("gpt"): remote("gpt")}, "gpus: []\n")
    assert result.problems == []


# ---- fallback and overflow ---------------------------------------------------------------------


def test_a_local_model_may_fall_back_and_overflow_to_a_remote_model() -> None:
    result = check(
        {
            path_of("a"): "id: a\nframework: llama_cpp\nmodel_path: /m.gguf\nfallback: gpt\n"
            "overflow: {model: gpt, queue_over: 4}\n",
            path_of("gpt"): remote("gpt", "fallback: b"),
            path_of("b"): "id: b\nframework: llama_cpp\nmodel_path: /b.gguf\n",
        },
        TWO_GPUS,
    )
    assert result.problems == []
    assert result.desired is not None
    overflow = result.desired.models["a"].overflow
    assert overflow is not None and (overflow.model, overflow.queue_over) == ("gpt", 4)


def overflow_problems(target: str, queue_over: str = "2") -> list[Problem]:
    return check(
        {
            path_of("a"): f"id: a\nframework: llama_cpp\nmodel_path: /m.gguf\n"
            f"overflow:\n  model: {target}\n  queue_over: {queue_over}\n",
            path_of("gpt"): remote("gpt"),
        }
    ).problems


def test_overflow_to_itself_or_to_nobody_is_refused_at_the_model_line() -> None:
    assert overflow_problems("a") == [
        error(path_of("a"), 5, "overflow.model", "a model cannot overflow to itself")
    ]
    assert overflow_problems("nobody") == [
        error(
            path_of("a"),
            5,
            "overflow.model",
            "overflow model 'nobody' is not a model in desired-state",
        )
    ]


def test_overflow_queue_over_cannot_be_negative() -> None:
    assert [(p.line, p.field) for p in overflow_problems("gpt", "-1")] == [
        (6, "overflow.queue_over")
    ]


# ---- the engine plug-in: a descriptor that says "no engine process" ----------------------------


def test_the_remote_framework_is_a_plug_in_with_no_engine_process(tmp_path: Path) -> None:
    d = registry.descriptor("remote")
    assert d.remote and registry.catalog()["remote"].remote
    assert [f for f in registry.FRAMEWORKS if registry.descriptor(f).remote] == ["remote"]
    spec = ModelSpec(id="gpt", framework="remote", endpoint=ENDPOINT)
    engine = registry.engines(tmp_path)["remote"]
    assert engine.observe() == []  # nothing of a remote model is ever found on this host
    with pytest.raises(EngineError, match="no engine process"):
        engine.start(spec, EnginePlacement(gpus=(), port=8100))
    assert registry.estimate_spec(spec).per_gpu_mb is None  # and no GPU memory is reckoned
    assert registry.missing_message(spec) is None  # nor files looked for


def test_an_endpoint_change_restarts_nothing_of_the_engines() -> None:
    # the remote fields join the spec hash of remote models only: engines keep their hash
    engine = ModelSpec(id="a", framework="llama_cpp", model_path="/m.gguf")
    assert engine.spec_hash() == "9317f13d9f8ddcf4"  # its hash before remote models existed
    one_url = ModelSpec(id="gpt", framework="remote", endpoint=ENDPOINT)
    other = ModelSpec(id="gpt", framework="remote", endpoint="https://other.example.com/v1")
    assert one_url.spec_hash() != other.spec_hash()


def test_a_remote_spec_reads_back_from_its_own_dump() -> None:
    # the state directory keeps the last valid desired state as JSON dumps of the specs
    spec = ModelSpec(id="gpt", framework="remote", endpoint=ENDPOINT, max_concurrency=2)
    assert ModelSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_an_empty_model_path_is_refused_on_an_engine_at_its_line() -> None:
    problems = one("a", framework="vllm").problems  # model_path on line 3
    assert problems == []
    result = check({path_of("a"): "id: a\nframework: vllm\nmodel_path: ''\n"})
    assert [(p.line, p.field) for p in result.problems] == [(3, "model_path")]
