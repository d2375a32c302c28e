"""Read model files into the plain facts `reconciler.core.estimate` computes with (the I/O side).

GGUF headers are read with `gguf.GGUFReader` (it memory-maps the file; tensor data is never
read). Hugging Face directories are read from config.json and the JSON headers of the
safetensors files (8 bytes + header each, never the tensor data). Every failure becomes a
`FactsError` whose message names the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.core import estimate
from reconciler.core.estimate import Estimate, GGUFFacts, HFFacts, ModelFacts
from reconciler.core.spec import Framework, ModelSpec
from reconciler.models.files import ModelFileError, cache_dir, is_packaged, resolve

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
"""The safetensors format caps the JSON header at 100 MB; a larger length is a corrupt file."""

_SPLIT_GGUF = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class FactsError(Exception):
    """The model's files exist (or should) but cannot be read; the message says why."""


def read_facts(spec: ModelSpec) -> ModelFacts | None:
    """The facts of a spec's model files; None when there is nothing on this host to read.

    None: docker (the files live in the image) or a vLLM hub id that is neither a local path
    nor in the Hugging Face cache. Packaged models (`pkg:`) are assembled into the cache first.
    """
    if spec.framework == "docker":
        return None
    if spec.framework == "vllm" and _is_hub_id(spec.model_path):
        snapshot = hub_snapshot(spec.model_path)
        return None if snapshot is None else read_path(snapshot, "vllm")
    try:
        path = resolve(spec.model_path)
    except ModelFileError as exc:
        raise FactsError(str(exc)) from exc
    return read_path(path, spec.framework)


def read_path(path: Path, framework: Framework) -> ModelFacts:
    """Facts of a local model: a GGUF file for llama.cpp, a model directory for vLLM."""
    if not path.exists():
        raise FactsError(f"{path} does not exist")
    if framework == "llama_cpp":
        if path.is_dir():
            raise FactsError(f"{path} is a directory; llama.cpp needs a .gguf file")
        return read_gguf(path)
    if framework == "vllm":
        if not path.is_dir():
            raise FactsError(f"{path} is not a model directory (config.json + *.safetensors)")
        return read_hf_directory(path)
    raise FactsError(f"{framework} models have no files to read")


def estimate_path(
    model_path: str, ctx: int | None = None, framework: Framework | None = None
) -> Estimate:
    """`reconciler estimate MODEL_PATH [--ctx N]`: the estimate for one GPU, or why there is none.

    The framework is guessed from the path when not given: a file (or `pkg:`) is a GGUF for
    llama.cpp, a directory a vLLM model. `ctx` is ctx-size (llama.cpp) or max-model-len (vLLM).
    """
    framework = framework or _guess_framework(model_path)
    try:
        facts = _facts_of_path(model_path, framework)
    except (ModelFileError, FactsError) as exc:
        return Estimate(None, {}, str(exc))
    if isinstance(facts, GGUFFacts):
        parameters = {} if ctx is None else {"ctx-size": ctx}
        return estimate.llama_cpp_estimate(facts, parameters)
    parameters = {} if ctx is None else {"max-model-len": ctx}
    return estimate.vllm_estimate(facts, parameters)


def _facts_of_path(model_path: str, framework: Framework) -> ModelFacts:
    if framework == "vllm" and _is_hub_id(model_path):
        snapshot = hub_snapshot(model_path)
        if snapshot is None:
            raise FactsError(
                f"{model_path} is neither a local path nor downloaded to the Hugging Face "
                f"cache ({_hub_cache()}): cannot estimate a model that is not on this host"
            )
        return read_path(snapshot, "vllm")
    return read_path(resolve(model_path), framework)


def _guess_framework(model_path: str) -> Framework:
    """A .gguf file or packaged model is llama.cpp; a directory or a hub id is vLLM."""
    if is_packaged(model_path) or model_path.endswith(".gguf"):
        return "llama_cpp"
    if Path(model_path).expanduser().is_dir() or _is_hub_id(model_path):
        return "vllm"
    return "llama_cpp"


# ---- GGUF -----------------------------------------------------------------------------------


def read_gguf(path: Path) -> GGUFFacts:
    """Facts of a GGUF file (all splits of a split model).

    GGUFReader parses the whole vocabulary into Python objects: about 10 s of CPU for a
    262k-token vocabulary on a small machine, for every model on every reconciler start. The
    facts are therefore cached in memory and on disk, keyed by the path, size and mtime of
    every file of the model (a rewritten file is read again).
    """
    path = path.resolve()
    files = [path, *_other_splits(path)]
    try:
        identity = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError as exc:
        raise FactsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _read_gguf_cached(identity)


@functools.lru_cache(maxsize=64)
def _read_gguf_cached(identity: tuple[tuple[str, int, int], ...]) -> GGUFFacts:
    key = {"version": FACTS_CACHE_VERSION, "files": [list(f) for f in identity]}
    cached = _load_cached_facts(key)
    if cached is not None:
        return cached
    first, *others = (Path(name) for name, _, _ in identity)
    reader = _gguf_reader(first)
    tensor_bytes = _gguf_tensor_bytes(reader)
    for split in others:
        tensor_bytes.update(_gguf_tensor_bytes(_gguf_reader(split)))
    facts = _gguf_facts(str(first), reader, tensor_bytes)
    _store_cached_facts(key, facts)
    return facts


FACTS_CACHE_VERSION = 1
"""Bump when GGUFFacts or how it is computed changes: older cache entries are then ignored."""


def facts_cache_dir() -> Path:
    """Next to the assembled packaged models (RECONCILER_MODEL_CACHE moves both)."""
    return cache_dir().parent / "facts"


def _cache_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return facts_cache_dir() / f"gguf-{digest}.json"


def _load_cached_facts(key: dict[str, Any]) -> GGUFFacts | None:
    """The cached facts, or None for a missing, stale or damaged entry (then re-read)."""
    try:
        entry = json.loads(_cache_file(key).read_text(encoding="utf-8"))
        if entry.get("key") != key:
            return None
        return GGUFFacts(**entry["facts"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _store_cached_facts(key: dict[str, Any], facts: GGUFFacts) -> None:
    """Best effort: a cache that cannot be written only costs the next start its time."""
    target = _cache_file(key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"key": key, "facts": dataclasses.asdict(facts)}, out)
        os.replace(temp, target)  # concurrent readers see a whole entry or none
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _gguf_reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except FileNotFoundError as exc:
        raise FactsError(f"{path} does not exist") from exc
    except OSError as exc:
        raise FactsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # GGUFReader raises ValueError, IndexError, KeyError... on a truncated or foreign file;
        # any of them means the same thing to an operator.
        raise FactsError(f"{path} is not a valid GGUF file ({type(exc).__name__}: {exc})") from exc


def _other_splits(path: Path) -> list[Path]:
    """The other files of a split GGUF (name-00001-of-00003.gguf); llama.cpp loads them all."""
    match = _SPLIT_GGUF.match(path.name)
    if match is None:
        return []
    count = int(match["count"])
    others = [
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf")
        for i in range(1, count + 1)
        if i != int(match["index"])
    ]
    missing = [p.name for p in others if not p.exists()]
    if missing:
        raise FactsError(f"{path} is one part of a split model; missing: {', '.join(missing)}")
    return others


def _gguf_tensor_bytes(reader: Any) -> Counter[str]:
    return Counter({tensor.name: int(tensor.n_bytes) for tensor in reader.tensors})


_MISSING = object()


def _gguf_facts(path: str, reader: Any, tensor_bytes: Counter[str]) -> GGUFFacts:
    arch = _gguf_value(reader, "general.architecture", path)
    if not isinstance(arch, str):
        raise FactsError(f"{path}: general.architecture is not a string")

    def arch_value(key: str, default: Any = _MISSING) -> Any:
        return _gguf_value(reader, f"{arch}.{key}", path, default)

    n_embd = _largest(arch_value("embedding_length"), f"{arch}.embedding_length", path)
    n_head = _largest(arch_value("attention.head_count"), f"{arch}.attention.head_count", path)
    # Per-layer lists (hybrid and variable-width models): the largest layer, conservatively.
    n_head_kv = _largest(arch_value("attention.head_count_kv", n_head), "head_count_kv", path)
    head_dim = n_embd // n_head
    layer_bytes = sum(size for name, size in tensor_bytes.items() if name.startswith("blk."))
    # A tied output (no output.weight) reuses the token embeddings, which llama.cpp duplicates
    # onto the output layer's device.
    output_name = "output.weight" if "output.weight" in tensor_bytes else "token_embd.weight"
    return GGUFFacts(
        path=path,
        architecture=arch,
        weights_bytes=sum(tensor_bytes.values()),
        layer_weights_bytes=layer_bytes,
        output_weights_bytes=tensor_bytes[output_name] + tensor_bytes["output_norm.weight"],
        n_layer=_largest(arch_value("block_count"), f"{arch}.block_count", path),
        n_ctx_train=arch_value("context_length", None),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=arch_value("attention.key_length", head_dim),
        head_dim_v=arch_value("attention.value_length", head_dim),
        n_vocab=arch_value("vocab_size", None) or _vocabulary_size(reader, path),
    )


def _gguf_value(reader: Any, key: str, path: str, default: Any = _MISSING) -> Any:
    field = reader.get_field(key)
    if field is None:
        if default is _MISSING:
            raise FactsError(f"{path}: the GGUF header has no {key}")
        return default
    try:
        return field.contents()
    except Exception as exc:  # a malformed value: same meaning as a missing one
        raise FactsError(f"{path}: cannot read {key} ({exc})") from exc


def _largest(value: Any, key: str, path: str) -> int:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise FactsError(f"{path}: {key} is not a whole number ({value!r})")
    if max(values) <= 0:
        raise FactsError(f"{path}: {key} must be positive ({value!r})")
    return max(values)


def _vocabulary_size(reader: Any, path: str) -> int:
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is None:
        raise FactsError(f"{path}: the GGUF header has no vocabulary (tokenizer.ggml.tokens)")
    return len(tokens.data)  # one entry per array element


# ---- Hugging Face directories (vLLM) --------------------------------------------------------


def read_hf_directory(directory: Path) -> HFFacts:
    """Facts of a model directory: config.json and the safetensors headers vLLM would load."""
    config = _text_config(_read_json(directory / "config.json"), directory)
    tensor_bytes: Counter[str] = Counter()
    for file in _safetensors_files(directory):
        for dtype, size in _safetensors_dtype_bytes(file).items():
            tensor_bytes[dtype] += size

    def optional(*keys: str) -> int | None:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def required(*keys: str) -> int:
        value = optional(*keys)
        if value is None:
            raise FactsError(f"{directory / 'config.json'} has no {keys[0]}")
        return value

    hidden = required("hidden_size", "d_model", "n_embd")
    heads = required("num_attention_heads", "n_head")
    return HFFacts(
        path=str(directory),
        tensor_bytes=dict(tensor_bytes),
        num_hidden_layers=required("num_hidden_layers", "n_layer", "num_layers"),
        num_attention_heads=heads,
        num_key_value_heads=optional("num_key_value_heads") or heads,
        head_dim=optional("head_dim") or hidden // heads,
        hidden_size=hidden,
        # MLP width; 4 x hidden is the classic transformer ratio when a config omits it.
        intermediate_size=optional("intermediate_size", "ffn_dim") or 4 * hidden,
        vocab_size=required("vocab_size"),
        max_position_embeddings=optional(
            "max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"
        ),
        kv_lora_rank=optional("kv_lora_rank"),
        qk_rope_head_dim=optional("qk_rope_head_dim"),
    )


def _text_config(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Multimodal configs keep the language model's numbers under text_config."""
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        return {**config, **config["text_config"]}
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FactsError(f"{path} does not exist (not a Hugging Face model directory?)") from exc
    except OSError as exc:
        raise FactsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FactsError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FactsError(f"{path} is not a JSON object")
    return data


def _safetensors_files(directory: Path) -> list[Path]:
    """The shards vLLM loads: those the index names when there is one (repositories that also
    ship a consolidated copy would otherwise be counted twice), else every *.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise FactsError(f"{index} has no weight_map")
        return [directory / name for name in sorted(set(weight_map.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FactsError(
            f"{directory} has no *.safetensors files (PyTorch .bin checkpoints are not read: "
            "set resource_requirements.gpu_memory_mb)"
        )
    return files


def _safetensors_dtype_bytes(file: Path) -> Counter[str]:
    """Tensor bytes per dtype from one safetensors header: 8-byte little-endian length + JSON."""
    try:
        with file.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise FactsError(f"{file} is truncated (no header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > SAFETENSORS_MAX_HEADER:
                raise FactsError(f"{file} is not a safetensors file (header length {length})")
            header_bytes = handle.read(length)
            file_size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError as exc:
        raise FactsError(f"{file} does not exist (named by the shard index)") from exc
    except OSError as exc:
        raise FactsError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if len(header_bytes) < length:
        raise FactsError(f"{file} is truncated (header cut short)")
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FactsError(f"{file} has an unreadable header: {exc}") from exc
    if not isinstance(header, dict):
        raise FactsError(f"{file} has an unreadable header (not a JSON object)")
    return _header_dtype_bytes(file, header, data_size=file_size - 8 - length)


def _header_dtype_bytes(file: Path, header: dict[str, Any], data_size: int) -> Counter[str]:
    sizes: Counter[str] = Counter()
    end_of_data = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype = str(info["dtype"])
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise FactsError(f"{file}: tensor {name!r} has a malformed header entry") from None
        sizes[dtype] += end - begin
        end_of_data = max(end_of_data, end)
    if end_of_data > data_size:
        raise FactsError(
            f"{file} is truncated: the header describes {end_of_data} bytes of tensors, the file "
            f"holds {data_size} (an interrupted download?)"
        )
    return sizes


# ---- the Hugging Face hub cache -------------------------------------------------------------


def _is_hub_id(model_path: str) -> bool:
    """`org/name` that is not a local path (the rule modelfiles.missing_message uses)."""
    if is_packaged(model_path) or model_path.startswith(("/", ".", "~")):
        return False
    return not Path(model_path).exists()


def hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a hub model that vLLM (huggingface_hub) already downloaded."""
    cache = _hub_cache()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if snapshot.is_dir() else None


def _hub_cache() -> Path:
    # huggingface_hub's rule: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"
