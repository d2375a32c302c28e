"""Validation: JSON Schema per file and the checks across files, each located as file:line.

Most tests compare the complete list of problems, so that a check that fires twice, at the wrong
line, or drags unrelated noise along fails as surely as one that does not fire at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.desired import Problem, RawDesiredState, ValidationResult
from reconciler.core.spec_checks import PathCheck, validate
from reconciler.engines.registry import catalog, missing_message
from reconciler.source.load import load_directory, parse_document

REPO = Path(__file__).resolve().parents[2]
CATALOG = catalog()
CLUSTER = "desired-state/cluster.yaml"


def path_of(model_id: str) -> str:
    return f"desired-state/models/{model_id}.yaml"


def model(model_id: str, *extra: str, framework: str = "llama_cpp") -> str:
    """A minimal valid spec: id on line 1, framework 2, model_path 3, `extra` lines from 4 on."""
    lines = [f"id: {model_id}", f"framework: {framework}", "model_path: /models/m.gguf", *extra]
    return "\n".join(lines) + "\n"


def raw_state(models: dict[str, str], cluster: str | None = None) -> RawDesiredState:
    """What load_directory would return for these texts, without touching the disk."""
    problems: list[Problem] = []
    docs = []
    for file, text in models.items():
        doc, problem = parse_document(file, text)
        if problem is not None:
            problems.append(problem)
        if doc is not None:
            docs.append(doc)
    cluster_doc = None
    if cluster is not None:
        cluster_doc, problem = parse_document(CLUSTER, cluster)
        if problem is not None:
            problems.append(problem)
    return RawDesiredState("desired-state", None, cluster_doc, docs, problems)


def check(
    models: dict[str, str],
    cluster: str | None = None,
    *,
    path_check: PathCheck | None = None,
) -> ValidationResult:
    return validate(raw_state(models, cluster), path_check=path_check, catalog=CATALOG)


def one(model_id: str, *extra: str, framework: str = "llama_cpp") -> ValidationResult:
    return check({path_of(model_id): model(model_id, *extra, framework=framework)})


def error(file: str, line: int, field: str, message: str) -> Problem:
    return Problem(file, line, field, message, "error")


def warning(file: str, line: int, field: str, message: str) -> Problem:
    return Problem(file, line, field, message, "warning")


TWO_GPUS = "gpus:\n  - {index: 0, memory_mb: 24000}\n  - {index: 1, memory_mb: 24000}\n"


# ---- the good cases -----------------------------------------------------------------------


def test_bundled_examples_are_valid() -> None:
    result = validate(load_directory(REPO / "desired-state"), catalog=CATALOG)
    assert result.problems == []
    assert result.valid
    assert result.desired is not None
    assert sorted(result.desired.models) == ["gemma3-270m", "qwen2-7b", "web-echo"]
    assert result.desired.cluster.placement == "spread"
    file, line = result.desired.origins["qwen2-7b"]
    assert file.endswith("desired-state/models/qwen2-7b.yaml")
    assert line == 6  # the id line, below the comment header


def test_minimal_spec_is_valid_with_defaults() -> None:
    result = one("a")
    assert result.problems == []
    assert result.desired is not None
    spec = result.desired.models["a"]
    assert (spec.priority, spec.port, spec.resource_requirements.gpu_count) == (5, None, 1)
    assert result.desired.origins["a"] == (path_of("a"), 1)


def test_an_invalid_state_has_no_desired_state() -> None:
    result = one("a", "priority: 11")
    assert not result.valid
    assert result.desired is None
    assert result.errors == result.problems


# ---- checks across files ------------------------------------------------------------------


def test_duplicate_id_names_both_files() -> None:
    result = check(
        {
            path_of("a"): model("a"),
            path_of("b"): "# second copy\n" + model("a"),
        }
    )
    assert result.problems == [
        error(path_of("b"), 2, "id", f"duplicate id 'a' (also in {path_of('a')}:1)"),
        warning(path_of("b"), 2, "id", "id 'a' does not match the file name 'b'"),
    ]
    assert not result.valid


def test_id_not_matching_the_file_name_is_a_warning_only() -> None:
    result = check({"desired-state/models/qwen.yml": model("qwen2")})
    assert result.problems == [
        warning(
            "desired-state/models/qwen.yml",
            1,
            "id",
            "id 'qwen2' does not match the file name 'qwen'",
        )
    ]
    assert result.valid
    assert result.desired is not None and "qwen2" in result.desired.models


def test_duplicate_fixed_port() -> None:
    result = check(
        {
            path_of("a"): model("a", "port: 8200"),
            path_of("b"): model("b", "priority: 3", "port: 8200"),
            path_of("c"): model("c", "port: 8201"),
        }
    )
    assert result.problems == [
        error(path_of("b"), 5, "port", f"port 8200 is also fixed in {path_of('a')}:4"),
    ]


def test_unknown_fallback() -> None:
    result = one("a", "priority: 9", "fallback: tiny")
    assert result.problems == [
        error(path_of("a"), 5, "fallback", "fallback 'tiny' is not a model in desired-state"),
    ]


def test_fallback_to_a_model_whose_file_is_broken_reports_only_the_broken_file() -> None:
    result = check(
        {
            path_of("a"): model("a", "fallback: b"),
            path_of("b"): model("b", "priority: high"),
        }
    )
    assert result.problems == [
        error(path_of("b"), 4, "priority", "'high' is not of type 'integer'"),
    ]


def test_fallback_to_a_valid_model_is_fine() -> None:
    result = check(
        {path_of("big"): model("big", "fallback: small"), path_of("small"): model("small")}
    )
    assert result.problems == []
    assert result.desired is not None
    assert result.desired.models["big"].fallback == "small"


def test_fallback_cycle_of_two() -> None:
    result = check(
        {
            path_of("a"): model("a", "fallback: b"),
            path_of("b"): model("b", "priority: 2", "fallback: a"),
        }
    )
    assert result.problems == [
        error(path_of("a"), 4, "fallback", "fallback cycle: a -> b -> a"),
        error(path_of("b"), 5, "fallback", "fallback cycle: b -> a -> b"),
    ]


def test_fallback_cycle_of_three_is_reported_on_its_members_only() -> None:
    result = check(
        {
            path_of("head"): model("head", "fallback: x"),
            path_of("x"): model("x", "fallback: y"),
            path_of("y"): model("y", "fallback: z"),
            path_of("z"): model("z", "fallback: x"),
        }
    )
    assert result.problems == [
        error(path_of("x"), 4, "fallback", "fallback cycle: x -> y -> z -> x"),
        error(path_of("y"), 4, "fallback", "fallback cycle: y -> z -> x -> y"),
        error(path_of("z"), 4, "fallback", "fallback cycle: z -> x -> y -> z"),
    ]


def test_a_model_cannot_be_its_own_fallback() -> None:
    result = one("a", "fallback: a")
    assert result.problems == [
        error(path_of("a"), 4, "fallback", "a model cannot be its own fallback"),
    ]


def test_pinned_gpu_that_the_declared_inventory_lacks() -> None:
    result = check(
        {path_of("a"): model("a", "gpu_devices: [0, 3]", "resource_requirements: {gpu_count: 2}")},
        TWO_GPUS,
    )
    assert result.problems == [
        error(
            path_of("a"),
            4,
            "gpu_devices[1]",
            f"GPU 3 is not declared in {CLUSTER} (declared: 0, 1)",
        ),
    ]


def test_pinned_gpu_in_block_style_points_at_its_own_line() -> None:
    result = check(
        {path_of("a"): model("a", "gpu_devices:", "  - 7")},
        TWO_GPUS,
    )
    assert result.problems == [
        error(
            path_of("a"),
            5,
            "gpu_devices[0]",
            f"GPU 7 is not declared in {CLUSTER} (declared: 0, 1)",
        ),
    ]


def test_pinned_gpu_is_not_checked_against_an_nvml_inventory() -> None:
    # `gpus: auto` (or no cluster.yaml): the GPUs are only known on the host, at plan time
    assert check({path_of("a"): model("a", "gpu_devices: [5]")}, "gpus: auto\n").problems == []
    assert check({path_of("a"): model("a", "gpu_devices: [5]")}).problems == []


def test_more_gpus_needed_than_declared() -> None:
    result = check(
        {path_of("a"): model("a", "resource_requirements:", "  gpu_count: 3")},
        TWO_GPUS,
    )
    assert result.problems == [
        error(
            path_of("a"),
            5,
            "resource_requirements.gpu_count",
            "needs 3 GPUs but only 2 are declared",
        ),
    ]


# ---- checks within one spec ---------------------------------------------------------------


def test_gpu_devices_length_differs_from_gpu_count() -> None:
    result = one("a", "gpu_devices: [0, 1]", "resource_requirements: {gpu_count: 1}")
    assert result.problems == [
        error(
            path_of("a"), 4, "gpu_devices", "pins 2 GPU(s) but resource_requirements.gpu_count is 1"
        ),
    ]


def test_the_same_gpu_pinned_twice() -> None:
    result = one("a", "gpu_devices: [1, 1]", "resource_requirements: {gpu_count: 2}")
    assert result.problems == [
        error(path_of("a"), 4, "gpu_devices", "the same GPU is pinned twice"),
    ]


def test_docker_without_image() -> None:
    result = one(
        "a", "resource_requirements: {gpu_count: 1, gpu_memory_mb: 1024}", framework="docker"
    )
    assert result.problems == [
        error(path_of("a"), 1, "image", "framework docker needs an image"),
    ]


def test_docker_without_gpu_memory() -> None:
    result = one(
        "a", "image: busybox:1", "resource_requirements:", "  gpu_count: 1", framework="docker"
    )
    assert result.problems == [
        error(
            path_of("a"),
            5,
            "resource_requirements",
            "framework docker needs resource_requirements.gpu_memory_mb: "
            "a container's memory cannot be estimated",
        ),
    ]


def test_docker_on_the_cpu_needs_no_gpu_memory() -> None:
    result = one(
        "a", "image: busybox:1", "resource_requirements: {gpu_count: 0}", framework="docker"
    )
    assert result.problems == []


def test_image_on_a_non_docker_model_is_a_warning() -> None:
    result = one("a", "image: busybox:1")
    assert result.problems == [
        warning(path_of("a"), 4, "image", "image is ignored for framework llama_cpp"),
    ]
    assert result.valid


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("{nested: 1}", "{'nested': 1}"),
        ("[1, [2]]", "[1, [2]]"),
        ("[{a: 1}]", "[{'a': 1}]"),
        ("null", "None"),
    ],
)
def test_parameter_value_that_is_not_a_scalar_or_a_list_of_scalars(value: str, shown: str) -> None:
    result = one("a", "parameters:", "  threads: 2", f"  ctx-size: {value}")
    assert result.problems == [
        error(
            path_of("a"),
            6,
            "parameters.ctx-size",
            f"parameter value must be a scalar or a list of scalars, got {shown}",
        ),
    ]


def test_parameter_values_that_are_scalars_or_lists_of_scalars_are_fine() -> None:
    result = one(
        "a",
        "parameters: {ctx-size: 2048, rope-freq-scale: 0.5, jinja: true, alias: x, lora: [a, b]}",
    )
    assert result.problems == []
    assert result.desired is not None
    assert result.desired.models["a"].parameters["lora"] == ["a", "b"]


def test_parameters_must_be_a_mapping() -> None:
    result = one("a", "parameters: [ctx-size]")
    assert [(p.line, p.field) for p in result.problems] == [(4, "parameters")]
    assert not result.valid


def test_unknown_field_with_did_you_mean() -> None:
    result = one("a", "priorty: 3")
    assert result.problems == [
        error(path_of("a"), 4, "priorty", "unknown field 'priorty' (did you mean 'priority'?)"),
    ]


def test_unknown_nested_field_with_did_you_mean() -> None:
    result = one("a", "health_check:", "  path: /health", "  interval: 5")
    assert result.problems == [
        error(
            path_of("a"),
            6,
            "health_check.interval",
            "unknown field 'interval' (did you mean 'interval_s'?)",
        ),
    ]


def test_unknown_field_without_a_close_match_lists_the_known_ones() -> None:
    [problem] = one("a", "colour: blue").problems
    assert (problem.file, problem.line, problem.field) == (path_of("a"), 4, "colour")
    assert problem.message.startswith("unknown field 'colour'; known fields: id, name, framework")


def test_every_unknown_field_is_reported() -> None:
    result = one("a", "fallbak: b", "enabeld: false")
    assert [(p.line, p.field) for p in result.problems] == [(4, "fallbak"), (5, "enabeld")]


def test_unknown_cluster_field() -> None:
    result = check({}, "gpus: auto\nplacment: pack\n")
    assert result.problems == [
        error(CLUSTER, 2, "placment", "unknown field 'placment' (did you mean 'placement'?)"),
    ]


@pytest.mark.parametrize(
    ("framework", "key", "hint"),
    [
        ("llama_cpp", "ctx_size", "(did you mean 'ctx-size'?)"),
        ("llama_cpp", "n-gpu-layer", "(did you mean 'n-gpu-layers'?)"),
        ("vllm", "max_model_len", "(did you mean 'max-model-len'?)"),
        ("vllm", "xyzzy", None),  # nothing close: the known flags are listed instead
    ],
)
def test_unknown_engine_parameter(framework: str, key: str, hint: str | None) -> None:
    [problem] = one("a", "parameters:", f"  {key}: 1", framework=framework).problems
    assert (problem.file, problem.line, problem.field, problem.severity) == (
        path_of("a"),
        5,
        f"parameters.{key}",
        "error",
    )
    assert problem.message.startswith(f"unknown {framework} parameter '{key}'")
    if hint:
        assert problem.message.endswith(hint)
    else:
        assert "max-model-len" in problem.message  # the known flags are listed instead


def test_every_known_engine_parameter_is_accepted() -> None:
    for framework in ("llama_cpp", "vllm"):
        known = CATALOG[framework].parameters
        assert known
        params = ", ".join(f"{key}: 1" for key in sorted(known))
        result = one("a", f"parameters: {{{params}}}", framework=framework)
        assert result.problems == [], framework


def test_docker_takes_any_parameter() -> None:
    result = one(
        "a",
        "image: busybox:1",
        "resource_requirements: {gpu_count: 0}",
        "parameters: {anything-goes: 1}",
        framework="docker",
    )
    assert result.problems == []


def test_engine_parameters_are_not_checked_without_the_known_lists() -> None:
    raw = raw_state({path_of("a"): model("a", "parameters: {ctx_size: 1}")})
    assert validate(raw).problems == []


def test_without_a_catalog_any_framework_name_passes() -> None:
    raw = raw_state({path_of("a"): model("a", framework="tgi")})
    assert validate(raw).problems == []


# ---- model files on this host -------------------------------------------------------------


def test_model_path_missing_on_this_host_is_a_warning(tmp_path: Path) -> None:
    missing = tmp_path / "absent.gguf"
    text = f"id: a\nframework: llama_cpp\nmodel_path: {missing}\n"
    result = check({path_of("a"): text}, path_check=missing_message)
    assert result.problems == [
        warning(path_of("a"), 3, "model_path", f"{missing} does not exist on this host"),
    ]
    assert result.valid
    assert result.desired is not None and "a" in result.desired.models


def test_model_path_present_on_this_host_gives_no_warning(tmp_path: Path) -> None:
    present = tmp_path / "m.gguf"
    present.write_bytes(b"GGUF")
    text = f"id: a\nframework: llama_cpp\nmodel_path: {present}\n"
    assert check({path_of("a"): text}, path_check=missing_message).problems == []


def test_model_path_that_cannot_be_checked_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    too_long = str(tmp_path / ("x" * 300 + ".gguf"))  # longer than a file name may be: ENAMETOOLONG
    text = f"id: a\nframework: llama_cpp\nmodel_path: {too_long}\n"
    result = check({path_of("a"): text}, path_check=missing_message)
    [problem] = result.problems
    assert (problem.line, problem.field, problem.severity) == (3, "model_path", "warning")
    assert problem.message.startswith(f"cannot check '{too_long}' on this host")
    assert result.valid


def test_path_check_is_skipped_without_a_checker() -> None:
    text = "id: a\nframework: llama_cpp\nmodel_path: /surely/not/here.gguf\n"
    assert check({path_of("a"): text}).problems == []


# ---- types and values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ("priority: high", "priority", "'high' is not of type 'integer'"),
        ("priority: 11", "priority", "11 is greater than the maximum of 10"),
        ("priority: 0", "priority", "0 is less than the minimum of 1"),
        ("priority: 5.5", "priority", "5.5 is not of type 'integer'"),
        ("enabled: yes", "enabled", "'yes' is not of type 'boolean'"),
        ("port: 70000", "port", "70000 is greater than the maximum of 65535"),
        ("port: 0", "port", "0 is less than the minimum of 1"),
        ("port: http", "port", "'http' must be one of: integer, null"),
        ("name: 5", "name", "5 must be one of: string, null"),
        ("env: {A: 1}", "env.A", "1 is not of type 'string'"),
        ("gpu_devices: [-1]", "gpu_devices[0]", "-1 is less than the minimum of 0"),
        ("gpu_devices: 0", "gpu_devices", "0 is not of type 'array'"),
        (
            "framework2: vllm",
            "framework2",
            "unknown field 'framework2' (did you mean 'framework'?)",
        ),
        (
            "health_check: {interval_s: 0}",
            "health_check.interval_s",
            "0 is less than or equal to the minimum of 0",
        ),
        (
            "resource_requirements: {gpu_memory_mb: 0}",
            "resource_requirements.gpu_memory_mb",
            "0 is less than the minimum of 1",
        ),
        (
            "health_check: {path: '@example.com/'}",
            "health_check.path",
            "'@example.com/' must start with '/': a path on the engine's own address",
        ),
        (
            "health_check: {timeout_s: 1e300}",
            "health_check.timeout_s",
            "1e+300 is greater than the maximum of 86400",
        ),
        (
            "fallback: Tiny_Model",
            "fallback",
            "'Tiny_Model' is not a DNS label (lowercase letters, digits and '-')",
        ),
    ],
)
def test_wrong_type_or_value(line: str, field: str, message: str) -> None:
    assert one("a", line).problems == [error(path_of("a"), 4, field, message)]


def test_missing_required_fields_point_at_line_1() -> None:
    result = check({path_of("a"): "# a comment\nid: a\nname: nothing else\n"})
    assert result.problems == [
        error(path_of("a"), 1, "", "missing required field 'framework'"),
        error(path_of("a"), 1, "", "missing required field 'model_path'"),
    ]


@pytest.mark.parametrize(
    ("framework", "message"),
    [
        ("ollama", "unknown framework 'ollama' (did you mean 'llama_cpp'?)"),
        ("vlm", "unknown framework 'vlm' (did you mean 'vllm'?)"),
        (
            "tgi",
            "unknown framework 'tgi'; known frameworks: docker, llama_cpp, remote, sglang, vllm",
        ),
    ],
)
def test_wrong_framework(framework: str, message: str) -> None:
    text = f"id: a\nframework: {framework}\nmodel_path: x\n"
    assert check({path_of("a"): text}).problems == [error(path_of("a"), 2, "framework", message)]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Qwen2", "'Qwen2'"),
        ("qwen_2", "'qwen_2'"),
        ("-qwen", "'-qwen'"),
        ("qwen-", "'qwen-'"),
        ("qwen.2", "'qwen.2'"),
        ("''", "''"),
        ("a" * 64, "'" + "a" * 64 + "'"),
        ('"qwen\\n"', "'qwen\\n'"),  # Python's `$` matches before a final newline: still wrong
    ],
)
def test_id_that_is_not_a_dns_label(value: str, shown: str) -> None:
    result = check({path_of("m"): f"framework: vllm\nmodel_path: x\nid: {value}\n"})
    assert result.problems == [
        error(
            path_of("m"), 3, "id", f"{shown} is not a DNS label (lowercase letters, digits and '-')"
        )
    ]


def test_id_of_63_characters_is_a_dns_label() -> None:
    long_id = "a" + "-" * 61 + "b"
    assert one(long_id).problems == []


def test_id_that_is_not_a_string() -> None:
    result = check({path_of("m"): "id: 5\nframework: vllm\nmodel_path: x\n"})
    assert result.problems == [error(path_of("m"), 1, "id", "5 is not of type 'string'")]


# ---- cluster.yaml -------------------------------------------------------------------------


def test_port_range_first_after_last() -> None:
    result = check({}, "gpus: auto\nport_range: [9000, 8000]\n")
    assert result.problems == [
        error(CLUSTER, 2, "port_range", "first port 9000 is after last 8000"),
    ]


def test_duplicate_gpu_index_in_cluster() -> None:
    result = check(
        {},
        "gpus:\n"
        "  - {index: 0, memory_mb: 1000}\n"
        "  - {index: 1, memory_mb: 1000}\n"
        "  - index: 0\n"
        "    memory_mb: 2000\n",
    )
    assert result.problems == [
        error(CLUSTER, 4, "gpus[2].index", "GPU index 0 declared twice (first on line 2)"),
    ]


def test_declared_gpu_missing_memory_points_at_that_gpu() -> None:
    result = check({}, "gpus:\n  - {index: 0, memory_mb: 1000}\n  - {index: 1}\n")
    assert result.problems == [
        error(CLUSTER, 3, "gpus[1]", "missing required field 'memory_mb'"),
    ]


def test_gpus_neither_auto_nor_a_list() -> None:
    result = check({}, "gpus: none\n")
    assert result.problems == [error(CLUSTER, 1, "gpus", "'none' must be one of: 'auto', array")]


def test_an_invalid_cluster_does_not_hide_model_problems() -> None:
    result = check({path_of("a"): model("a", "priority: 11")}, "placement: fast\n")
    assert [(p.file, p.line, p.field) for p in result.problems] == [
        (CLUSTER, 1, "placement"),
        (path_of("a"), 4, "priority"),
    ]


# ---- YAML problems and ordering ---------------------------------------------------------------


def test_yaml_problems_are_part_of_the_result() -> None:
    result = check(
        {
            path_of("a"): model("a"),
            path_of("b"): "id: b\nid: c\n",
            path_of("c"): "",
            path_of("d"): "- a list\n",
        }
    )
    assert [(p.file, p.line) for p in result.problems] == [
        (path_of("b"), 2),
        (path_of("c"), 1),
        (path_of("d"), 1),
    ]
    assert not result.valid


def test_problems_are_sorted_by_file_then_line() -> None:
    result = check(
        {
            path_of("b"): model("b", "priority: 0", "port: 0"),
            path_of("a"): model("a", "parameters: {ctx_size: 1}", "enabled: 1"),
        }
    )
    assert [(p.file, p.line, p.field) for p in result.problems] == [
        (path_of("a"), 5, "enabled"),  # a spec that fails its schema gets no further checks
        (path_of("b"), 4, "priority"),
        (path_of("b"), 5, "port"),
    ]


def test_problem_renders_as_file_line() -> None:
    [problem] = one("a", "priority: 11").problems
    assert str(problem) == (
        f"{path_of('a')}:4: error: priority: 11 is greater than the maximum of 10"
    )
    assert problem.to_dict() == {
        "file": path_of("a"),
        "line": 4,
        "field": "priority",
        "message": "11 is greater than the maximum of 10",
        "severity": "error",
    }
