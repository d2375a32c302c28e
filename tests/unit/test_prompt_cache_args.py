"""The llama.cpp engines' prompt cache: on with a bound by default where the bound holds, and a
spec's `cache-ram` (MiB, llama-server's meaning) reaching either server as that server spells it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from components import require_module

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EnginePlacement
from reconciler.engines.llama_cpp import LlamaBackend, LlamaCppEngine
from reconciler.engines.llama_cpp_python import python_server_args, python_server_unsupported

CPU = EnginePlacement(gpus=(), port=8124)


def spec(**parameters: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "m",
            "framework": "llama_cpp",
            "model_path": "/models/m.gguf",
            "parameters": {"ctx-size": 2048, **parameters},
        }
    )


def flags_after_port(argv: tuple[str, ...]) -> list[str]:
    return list(argv[argv.index("--port") + 2 :])


def test_llama_server_gets_a_one_gib_prompt_cache_unless_the_spec_says_otherwise(
    tmp_path: Path,
) -> None:
    engine = LlamaCppEngine(tmp_path, "x", backend=LlamaBackend.llama_server("/bin/llama-server"))
    # llama-server's own default would be 8192 MiB of host RAM per engine
    assert flags_after_port(engine.command(spec(), CPU).argv) == [
        "--cache-ram",
        "1024",
        "--ctx-size",
        "2048",
    ]
    assert flags_after_port(engine.command(spec(**{"cache-ram": 0}), CPU).argv) == [
        "--cache-ram",
        "0",
        "--ctx-size",
        "2048",
    ]
    assert "--cache-ram 4096" in " ".join(engine.command(spec(**{"cache-ram": 4096}), CPU).argv)


def test_python_server_keeps_its_ram_cache_off_unless_a_spec_bounds_it(tmp_path: Path) -> None:
    engine = LlamaCppEngine(tmp_path, "x", backend=LlamaBackend.python_server("/usr/bin/python3"))
    default = engine.command(spec(), CPU).argv
    assert not any(word.startswith("--cache") for word in default)
    cached = flags_after_port(engine.command(spec(**{"cache-ram": 64}), CPU).argv)
    assert cached == [
        "--use_mlock",
        "False",
        "--cache",
        "True",
        "--cache_type",
        "ram",
        "--cache_size",
        str(64 * 1024 * 1024),
        "--n_ctx",
        "2048",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, ["--cache", "False"]),
        ("0", ["--cache", "False"]),
        (1, ["--cache", "True", "--cache_type", "ram", "--cache_size", "1048576"]),
        ("512", ["--cache", "True", "--cache_type", "ram", "--cache_size", "536870912"]),
    ],
)
def test_cache_ram_in_mib_becomes_bytes(value: object, expected: list[str]) -> None:
    assert python_server_args({"cache-ram": value})[2:] == expected  # type: ignore[dict-item]


@pytest.mark.parametrize("value", [-1, True, 1.5, "1g", [64]])
def test_cache_ram_it_cannot_express_is_refused(value: object) -> None:
    # -1 is llama-server's "no limit": llama-cpp-python has no unbounded RAM cache to match it
    assert python_server_unsupported({"cache-ram": value}) == ["cache-ram"]  # type: ignore[dict-item]
    assert python_server_args({"cache-ram": value}) == ["--use_mlock", "False"]  # type: ignore[dict-item]


def test_the_installed_server_reads_the_cache_flags_as_meant() -> None:
    require_module("llama_cpp.server", "pip install 'llama-cpp-python[server]'")
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, Settings

    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)

    def settings(parameters: dict[str, object]) -> ModelSettings:
        words = ["--model", "/m.gguf", *python_server_args(parameters)]  # type: ignore[arg-type]
        return parse_model_from_args(ModelSettings, parser.parse_args(words))

    on = settings({"cache-ram": 64})
    assert (on.cache, on.cache_type, on.cache_size) == (True, "ram", 64 << 20)
    assert settings({"cache-ram": 0}).cache is False
    assert settings({}).cache is False
