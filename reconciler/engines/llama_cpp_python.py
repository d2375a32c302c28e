"""llama-cpp-python's server (`python -m llama_cpp.server`): spec parameters in its spelling.

Spec parameters use llama-server's long names. llama_cpp.server spells them differently and
takes every boolean as a value (`--use_mlock True`), so they are translated here. A parameter
llama_cpp.server cannot express (parallel, cont-batching, ...) is left out of the argv, and the
engine refuses the spec before starting (see llama_cpp.py).

Prompt cache: llama_cpp.server reuses its context for the longest common prefix with the prompt
it served last, and with `--cache True` keeps more prompts in a RAM cache (`LlamaRAMCache`,
`--cache_size` bytes). A spec's `cache-ram: MiB` turns that cache on with that bound (0: off),
but it is off by default, unlike llama-server's: llama-cpp-python counts only the KV state of
an entry against the bound, and each entry also holds a copy of the logits of up to n_batch
prompt tokens (n_batch x n_vocab x 4 bytes: 512 MiB for Gemma 3's 262,144-token vocabulary).
Measured with the bundled Gemma 3 270M and 1,340-token prompts: +1.4 GiB of RSS per cached
prompt while the cache counted 24 MB, so a 1 GiB bound would let one engine take ~60 GiB. An
operator who sets `cache-ram` should size it as KV state (the server logs `saving N bytes of
llama state` per entry). Host RAM either way, never GPU memory (llama_cpp_memory).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconciler.core.engine_args import check_value
from reconciler.core.spec import ParameterValue

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

HEALTH_PATH = "/openapi.json"
"""What the daemon probes when a spec keeps the default /health, which llama_cpp.server lacks.
Not /v1/models: that route takes the model's lock, so it waits while the engine generates (a
long answer made its probes time out and the engine was restarted mid-answer), and while it
waits it interrupts a streamed answer (llama_cpp.server's `interrupt_requests`, on by default,
ends a stream when another request waits for the lock). FastAPI's own /openapi.json is served
by the event loop, without the lock, so the engine answers it while it generates; the server
listens only once its model is loaded, so an answer still means ready."""

Converter = Callable[[ParameterValue], list[str] | None]
"""A value -> the words after the flag; [] = leave the flag out; None = cannot be expressed."""


def _plain(value: ParameterValue) -> list[str] | None:
    if isinstance(value, list | bool):
        return None
    return [str(value)]


def _on_off(value: ParameterValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


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
    # numbers only: "1,--host=0.0.0.0" must not become a word of its own after the split
    return words if all(_is_number(w) for w in words) else None


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _prompt_cache(value: ParameterValue) -> dict[str, list[str]] | None:
    """llama-server `--cache-ram MiB` -> llama_cpp.server's RAM cache; -1 (no limit) has none."""
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    if not text.isdigit():
        return None
    mib = int(text)
    if mib == 0:
        return {"cache": ["False"]}
    return {"cache": ["True"], "cache_type": ["ram"], "cache_size": [str(mib << 20)]}


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
    # llama-server's built-in template names (gemma, chatml, llama3, ...) are llama_cpp.server's
    # chat formats of the same names; a base model without a template needs one to chat
    "chat-template": ("chat_format", _plain),
    "embedding": ("embedding", _boolean),
    "api-key": ("api_key", _plain),
    "lora": ("lora_path", _plain),
    "mmproj": ("clip_model_path", _plain),
    "verbose": ("verbose", _boolean),
}

PROMPT_CACHE = "cache-ram"
"""The one parameter that becomes several llama_cpp.server flags (_prompt_cache)."""

# llama-cpp-python mlocks the model by default where it can; llama-server only with --mlock.
# Spec parameters mean what they mean to llama-server, defaults included.
PYTHON_SERVER_DEFAULTS: dict[str, str] = {"use_mlock": "False"}


def python_server_args(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Pure: spec parameters as llama_cpp.server flags; inexpressible ones are left out."""
    words: dict[str, list[str]] = {k: [v] for k, v in PYTHON_SERVER_DEFAULTS.items()}
    for key in sorted(parameters):
        check_value(key, parameters[key])
        words.update(_python_server_flags(key, parameters[key]) or {})
    args: list[str] = []
    for name, values in words.items():
        if values:
            args += [f"--{name}", *values]
    return args


def python_server_unsupported(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """The parameters llama_cpp.server cannot express, sorted."""
    return sorted(k for k in parameters if _python_server_flags(k, parameters[k]) is None)


def _python_server_flags(key: str, value: ParameterValue) -> dict[str, list[str]] | None:
    """llama_cpp.server flag name -> words for one spec parameter; None = inexpressible."""
    if key == PROMPT_CACHE:
        return _prompt_cache(value)
    entry = PYTHON_SERVER_FLAGS.get(key)
    if entry is None:
        return None
    name, convert = entry
    values = convert(value)
    return None if values is None else {name: values}
