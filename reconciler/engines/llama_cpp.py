"""The llama.cpp HTTP server: `llama-server`, or llama-cpp-python's `python -m llama_cpp.server`.

Backend: $RECONCILER_LLAMA_SERVER (a llama-server executable) when set, else `llama-server` on
PATH, else llama-cpp-python's server run by the reconciler's own interpreter (the embedded
default: the portable wheel works on any CPU).

Spec parameters use llama-server's long names (PARAMETERS below). llama-server gets them as
written; llama_cpp.server spells them differently (llama_cpp_python.py). A parameter
llama_cpp.server cannot express (parallel, cont-batching, ...) is left out of command(), which
stays pure and total, and start() refuses the spec with an EngineError naming the parameters and
the backend: running an engine that silently ignores part of its spec would be worse than not
running it.

Listen address and port: llama-server also reads LLAMA_ARG_HOST / LLAMA_ARG_PORT, and
llama-cpp-python's server settings (pydantic-settings, case-insensitive) read HOST / PORT, which
beat its --host/--port: a spec may not set them, and they are removed from the environment the
engine inherits.

Prompt cache (a prompt's work kept beyond the one the engine just served, so that prefix
routing's repeated prefixes skip their processing): llama-server keeps one prompt per slot
(`--parallel`, auto = 4 in current builds, all sharing ctx-size) and more in host RAM up to
`--cache-ram` MiB, which is on by default there with an 8 GiB bound; llama_server_argv() passes
llama_cpp_memory.PROMPT_CACHE_MIB unless the spec sets `cache-ram`. Host RAM, not GPU memory,
so the planner does not count it (llama_cpp_memory says why). llama-cpp-python's server: see
llama_cpp_python.py (off unless a spec sets `cache-ram`: its bound does not bound its RAM).

Readiness: llama-server answers /health; llama_cpp.server has no /health, and health_path()
substitutes llama_cpp_python.HEALTH_PATH when a spec keeps the default (why that path: there).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.core.engine_args import FlagStyle, render_flags
from reconciler.core.spec import ModelSpec, ParameterValue
from reconciler.engines.base import (
    Command,
    EngineDescriptor,
    EngineError,
    EnginePlacement,
    KubernetesContainer,
)
from reconciler.engines.llama_cpp_memory import PROMPT_CACHE_MIB, estimate_hook
from reconciler.engines.llama_cpp_python import HEALTH_PATH as PYTHON_SERVER_HEALTH_PATH
from reconciler.engines.llama_cpp_python import python_server_args, python_server_unsupported
from reconciler.engines.process_engine import ProcessEngine
from reconciler.engines.processes import find_executable
from reconciler.model_files import facts as modelfiles

ENV_LLAMA_SERVER = "RECONCILER_LLAMA_SERVER"
PYTHON_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")

BackendKind = Literal["llama-server", "llama_cpp.server"]


@dataclass(frozen=True)
class LlamaBackend:
    """Which llama.cpp server runs, and the argv that starts it (before any flag)."""

    kind: BackendKind
    prefix: tuple[str, ...]

    @classmethod
    def llama_server(cls, executable: str) -> LlamaBackend:
        return cls("llama-server", (executable,))

    @classmethod
    def python_server(cls, python: str | None = None) -> LlamaBackend:
        return cls("llama_cpp.server", (python or sys.executable, "-m", "llama_cpp.server"))

    @property
    def description(self) -> str:
        if self.kind == "llama-server":
            return f"llama-server ({self.prefix[0]})"
        return "llama-cpp-python's server (python -m llama_cpp.server)"


def find_backend(environ: Mapping[str, str] | None = None) -> LlamaBackend:
    """$RECONCILER_LLAMA_SERVER, else llama-server on PATH, else llama-cpp-python."""
    environ = os.environ if environ is None else environ
    override = environ.get(ENV_LLAMA_SERVER)
    if override:
        return LlamaBackend.llama_server(override)
    found = shutil.which("llama-server", path=environ.get("PATH"))
    if found:
        return LlamaBackend.llama_server(found)
    return LlamaBackend.python_server()


# ---- llama-server's parameters ------------------------------------------------------------

# `llama-server --help` (long names). Flags the reconciler sets itself (--host, --port, --model)
# are not parameters. GPU indexes (main-gpu, tensor-split) count the GPUs the engine sees:
# CUDA_VISIBLE_DEVICES is set to the placed GPUs, so they are renumbered from 0.
PARAMETERS = frozenset(
    {
        "ctx-size",
        "n-gpu-layers",
        "threads",
        "threads-batch",
        "parallel",
        "batch-size",
        "ubatch-size",
        "cache-type-k",
        "cache-type-v",
        "flash-attn",
        "main-gpu",
        "split-mode",
        "tensor-split",
        "rope-scaling",
        "rope-freq-base",
        "rope-freq-scale",
        "mlock",
        "no-mmap",
        "no-kv-offload",
        "n-cpu-moe",
        "seed",
        "alias",
        "chat-template",
        "jinja",
        "reasoning-format",
        "embedding",
        "n-predict",
        "cont-batching",
        "api-key",
        "timeout",
        "metrics",
        "slots",
        "cache-reuse",
        "cache-ram",
        "lora",
        "mmproj",
        "verbose",
    }
)

STYLE = FlagStyle(
    switches=frozenset(
        {
            "mlock",
            "no-mmap",
            "no-kv-offload",
            "jinja",
            "embedding",
            "cont-batching",
            "metrics",
            "slots",
            "verbose",
        }
    ),
    # on by default: `false` must be said out loud
    negatable=frozenset({"cont-batching"}),
    # `-fa, --flash-attn [on|off|auto]` takes a value in current llama.cpp (a bare
    # `--flash-attn` would swallow the next argument)
    on_off=frozenset({"flash-attn"}),
    # `--tensor-split 3,1`: one comma-separated value, not a repeated flag
    comma_lists=frozenset({"tensor-split"}),
)

RESERVED_ENV = frozenset({"HOST", "PORT", "LLAMA_ARG_HOST", "LLAMA_ARG_PORT"})


def llama_server_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as llama-server flags, in key order."""
    return render_flags(parameters, STYLE)


def llama_server_argv(
    spec: ModelSpec, placement: EnginePlacement, launcher: tuple[str, ...]
) -> list[str]:
    """Pure: the descriptor's argv builder, `llama-server --model M --host H --port P ...`."""
    parameters = {"cache-ram": PROMPT_CACHE_MIB, **spec.parameters}
    return [*launcher, *_base_args(spec, placement), *llama_server_args(parameters)]


def _base_args(spec: ModelSpec, placement: EnginePlacement) -> list[str]:
    return ["--model", model_file(spec), "--host", placement.host, "--port", str(placement.port)]


# ---- the runtime engine and the descriptor ------------------------------------------------


class LlamaCppEngine(ProcessEngine):
    """llama.cpp engines as detached processes (see the module docstring)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        namespace: str | None = None,
        *,
        backend: LlamaBackend | None = None,
    ) -> None:
        super().__init__(state_dir, namespace)
        self._backend = backend

    @property
    def backend(self) -> LlamaBackend:
        """The pinned backend, else the one this host has now."""
        return self._backend or find_backend()

    @property
    def launcher(self) -> tuple[str, ...]:
        return self.backend.prefix

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        backend = self.backend
        if backend.kind == "llama-server":
            return super().command(spec, placement)
        flags = python_server_args(spec.parameters)
        argv = (*backend.prefix, *_base_args(spec, placement), *flags)
        return Command(argv=argv, env=self.env(spec, placement), unset_env=self.reserved_env)

    def preflight(self, spec: ModelSpec, placement: EnginePlacement) -> None:
        backend = self.backend
        check_backend(backend)
        if backend.kind == "llama_cpp.server":
            unsupported = python_server_unsupported(spec.parameters)
            if unsupported:
                raise EngineError(
                    f"{backend.description} cannot express parameter(s) "
                    f"{', '.join(unsupported)}; install llama-server (or set "
                    f"{ENV_LLAMA_SERVER}) or remove them from the spec"
                )
        prepare_model_file(spec)

    def health_path(self, spec: ModelSpec) -> str:
        path = spec.health_check.path
        if path == "/health" and self.backend.kind == "llama_cpp.server":
            return PYTHON_SERVER_HEALTH_PATH
        return path


def model_file(spec: ModelSpec) -> str:
    """Pure: the GGUF path the engine is given (a packaged model's cache path, unassembled)."""
    try:
        return str(modelfiles.resolve(spec.model_path, assemble=False))
    except modelfiles.ModelFileError:
        return spec.model_path  # start() reports the problem; command() stays total


def prepare_model_file(spec: ModelSpec) -> Path:
    """Assemble a packaged model when needed; EngineError when the file is not there."""
    try:
        path = modelfiles.resolve(spec.model_path)
    except modelfiles.ModelFileError as exc:
        raise EngineError(str(exc)) from exc
    if not path.is_file():
        raise EngineError(f"model file not found: {path}")
    return path


def check_backend(backend: LlamaBackend) -> None:
    """EngineError when the backend's executable or Python modules are missing."""
    if backend.kind == "llama-server":
        if find_executable(backend.prefix[0]) is None:
            raise EngineError(f"llama-server executable not found: {backend.prefix[0]}")
        return
    if find_executable(backend.prefix[0]) is None:
        raise EngineError(f"Python interpreter not found: {backend.prefix[0]}")
    if backend.prefix[0] == sys.executable:
        missing = [m for m in PYTHON_SERVER_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise EngineError(
                "no llama.cpp server is installed: llama-server is not on PATH (or "
                f"{ENV_LLAMA_SERVER}) and llama-cpp-python's server lacks {', '.join(missing)} "
                "(pip install 'llama-cpp-python[server]')"
            )


def _create(state_dir: str | os.PathLike[str], namespace: str) -> LlamaCppEngine:
    return LlamaCppEngine(state_dir, namespace)


DESCRIPTOR = EngineDescriptor(
    framework="llama_cpp",
    parameters=PARAMETERS,
    argv=llama_server_argv,
    estimate=estimate_hook,
    model_files="gguf",
    kubernetes=KubernetesContainer(
        image="ghcr.io/ggml-org/llama.cpp:server-cuda", launcher=("/app/llama-server",)
    ),
    create=_create,
    reserved_env=RESERVED_ENV,
    context_parameter="ctx-size",
)
LlamaCppEngine.descriptor = DESCRIPTOR
