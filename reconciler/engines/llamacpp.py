"""The llama.cpp HTTP server: `llama-server`, or llama-cpp-python's `python -m llama_cpp.server`.

Backend: $RECONCILER_LLAMA_SERVER (a llama-server executable) when set, else `llama-server` on
PATH, else llama-cpp-python's server run by the reconciler's own interpreter (the embedded
default: the portable wheel works on any CPU).

Spec parameters use llama-server's long names (reconciler/flags.py). llama-server gets them as
written; llama_cpp.server spells them differently and takes every boolean as a value
(`--use_mlock True`), so they are translated here. A parameter llama_cpp.server cannot express
(parallel, cont-batching, ...) is left out of command(), which stays pure and total, and
start() refuses the spec with an EngineError naming the parameters and the backend: running an
engine that silently ignores part of its spec would be worse than not running it.

Readiness: llama-server answers /health; llama_cpp.server has no /health and answers
/v1/models (health_path() substitutes it when a spec keeps the default /health).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.core.flags import (
    LLAMA_CPP_COMMA_LISTS,
    LLAMA_CPP_NEGATABLE,
    LLAMA_CPP_ON_OFF,
    LLAMA_CPP_SWITCHES,
)
from reconciler.core.spec import ModelSpec, ParameterValue, Scalar
from reconciler.engines.base import Command, EngineError, EnginePlacement
from reconciler.engines.process import ProcessEngine, find_executable
from reconciler.models import files as modelfiles

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


# ---- llama-server --------------------------------------------------------------------------


def llama_server_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as llama-server flags, in key order."""
    args: list[str] = []
    for key in sorted(parameters):
        args += _llama_server_flag(key, parameters[key])
    return args


def _llama_server_flag(key: str, value: ParameterValue) -> list[str]:
    flag = f"--{key}"
    if key in LLAMA_CPP_ON_OFF:
        return [flag, _on_off(value)]
    if isinstance(value, bool) and key in LLAMA_CPP_SWITCHES:
        if value:
            return [flag]
        return [f"--no-{key}"] if key in LLAMA_CPP_NEGATABLE else []
    if isinstance(value, list):
        if key in LLAMA_CPP_COMMA_LISTS:
            return [flag, ",".join(_text(v) for v in value)]
        return [part for v in value for part in (flag, _text(v))]
    return [flag, _text(value)]


def _on_off(value: ParameterValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---- llama_cpp.server (llama-cpp-python) ---------------------------------------------------

# ggml.h `enum ggml_type`: the KV cache types llama-server accepts by name, as the integers
# llama_cpp.server's --type_k/--type_v take.
GGML_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
# llama.h `enum llama_split_mode` and `enum llama_rope_scaling_type`.
SPLIT_MODES: dict[str, int] = {"none": 0, "layer": 1, "row": 2, "tensor": 3}
ROPE_SCALING: dict[str, int] = {"none": 0, "linear": 1, "yarn": 2, "longrope": 3}

Converter = Callable[[ParameterValue], list[str] | None]
"""A value -> the words after the flag; [] = leave the flag out; None = cannot be expressed."""


def _plain(value: ParameterValue) -> list[str] | None:
    if isinstance(value, list | bool):
        return None
    return [str(value)]


def _boolean(value: ParameterValue) -> list[str] | None:
    return [str(value)] if isinstance(value, bool) else None


def _inverted(value: ParameterValue) -> list[str] | None:
    """llama-server `--no-mmap: true` is llama_cpp.server `--use_mmap False`."""
    if not isinstance(value, bool):
        return None
    return ["False"] if value else []


def _flash_attn(value: ParameterValue) -> list[str] | None:
    # llama_cpp.server's flash_attn is a plain boolean: "auto" (llama-server's default) has no
    # equivalent, and leaving the flag out keeps llama-cpp-python's own default
    text = _on_off(value).lower() if isinstance(value, bool | str) else ""
    return {"on": ["True"], "off": ["False"], "auto": []}.get(text)


def _numbers(value: ParameterValue) -> list[str] | None:
    """llama-server `3,1` or [3, 1] -> llama_cpp.server nargs `3 1`."""
    items = value if isinstance(value, list) else str(value).split(",")
    words = [str(v).strip() for v in items]
    return words if all(words) else None


def _named(table: Mapping[str, int]) -> Converter:
    def convert(value: ParameterValue) -> list[str] | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return [str(value)]
        code = table.get(str(value).lower()) if isinstance(value, str) else None
        return None if code is None else [str(code)]

    return convert


# llama-server name -> (llama_cpp.server name, converter). Keys absent here cannot be expressed.
PYTHON_SERVER_FLAGS: dict[str, tuple[str, Converter]] = {
    "ctx-size": ("n_ctx", _plain),
    "n-gpu-layers": ("n_gpu_layers", _plain),
    "threads": ("n_threads", _plain),
    "threads-batch": ("n_threads_batch", _plain),
    "batch-size": ("n_batch", _plain),
    "ubatch-size": ("n_ubatch", _plain),
    "cache-type-k": ("type_k", _named(GGML_TYPES)),
    "cache-type-v": ("type_v", _named(GGML_TYPES)),
    "flash-attn": ("flash_attn", _flash_attn),
    "main-gpu": ("main_gpu", _plain),
    "split-mode": ("split_mode", _named(SPLIT_MODES)),
    "tensor-split": ("tensor_split", _numbers),
    "rope-scaling": ("rope_scaling_type", _named(ROPE_SCALING)),
    "rope-freq-base": ("rope_freq_base", _plain),
    "rope-freq-scale": ("rope_freq_scale", _plain),
    "mlock": ("use_mlock", _boolean),
    "no-mmap": ("use_mmap", _inverted),
    "no-kv-offload": ("offload_kqv", _inverted),
    "seed": ("seed", _plain),
    "alias": ("model_alias", _plain),
    "embedding": ("embedding", _boolean),
    "api-key": ("api_key", _plain),
    "lora": ("lora_path", _plain),
    "mmproj": ("clip_model_path", _plain),
    "verbose": ("verbose", _boolean),
}

# llama-cpp-python mlocks the model by default where it can; llama-server only with --mlock.
# Spec parameters mean what they mean to llama-server, defaults included.
PYTHON_SERVER_DEFAULTS: dict[str, str] = {"use_mlock": "False"}


def python_server_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as llama_cpp.server flags; inexpressible ones are left out."""
    words: dict[str, list[str]] = {k: [v] for k, v in PYTHON_SERVER_DEFAULTS.items()}
    for key in sorted(parameters):
        translated = _python_server_flag(key, parameters[key])
        if translated is not None:
            name, values = translated
            words[name] = values
    args: list[str] = []
    for name, values in words.items():
        if values:
            args += [f"--{name}", *values]
    return args


def python_server_unsupported(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """The parameters llama_cpp.server cannot express, sorted."""
    return sorted(k for k in parameters if _python_server_flag(k, parameters[k]) is None)


def _python_server_flag(key: str, value: ParameterValue) -> tuple[str, list[str]] | None:
    entry = PYTHON_SERVER_FLAGS.get(key)
    if entry is None:
        return None
    name, convert = entry
    values = convert(value)
    return None if values is None else (name, values)


# ---- the engine ----------------------------------------------------------------------------


class LlamaCppEngine(ProcessEngine):
    """llama.cpp engines as detached processes (see the module docstring)."""

    framework = "llama_cpp"

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

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        backend = self.backend
        base = [
            "--model",
            model_file(spec),
            "--host",
            placement.host,
            "--port",
            str(placement.port),
        ]
        if backend.kind == "llama-server":
            flags = llama_server_args(spec.parameters)
        else:
            flags = python_server_args(spec.parameters)
        return Command(argv=(*backend.prefix, *base, *flags), env=self.env(spec, placement))

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
            return "/v1/models"
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
