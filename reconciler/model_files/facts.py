"""A spec's model files on this host: where they are (the shell side of model_path), and the plain
facts `reconciler.core.estimate` computes with, read from them. Every failure becomes a
`FactsError` whose message names the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from reconciler.core.estimate import GGUFFacts, ModelFacts, ModelFiles
from reconciler.model_files.headers import (
    ArrayInfo,
    FactsError,
    GGUFHeader,
    read_header,
    read_hf_directory,
)

PKG_PREFIX = "pkg:"


class ModelFileError(Exception):
    """The model's files cannot be found or prepared on this host."""


def cache_dir() -> Path:
    base = os.environ.get("RECONCILER_MODEL_CACHE") or Path.home() / ".cache" / "reconciler"
    return Path(base) / "models"


def is_packaged(model_path: str) -> bool:
    return model_path.startswith(PKG_PREFIX)


def is_local_path(model_path: str) -> bool:
    """A path on this host (or a packaged model) rather than a Hugging Face hub id."""
    return is_packaged(model_path) or model_path.startswith(("/", ".", "~"))


def resolve(model_path: str, *, assemble: bool = True) -> Path:
    """The local path of a model; assembles a packaged model into the cache when needed."""
    if not is_packaged(model_path):
        return Path(model_path).expanduser()
    module_name = model_path[len(PKG_PREFIX) :]
    if importlib.util.find_spec(module_name) is None:
        raise ModelFileError(
            f"Python package module '{module_name}' is not installed "
            f"(pip install {module_name.replace('_', '-')})"
        )
    module = importlib.import_module(module_name)
    target: Path = cache_dir() / module_name / module.MODEL_NAME
    if assemble:
        try:
            _assemble_once(module, target)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"cannot assemble {model_path}: {exc}") from exc
    return target


def _assemble_once(module: ModuleType, target: Path) -> None:
    """module.assemble() hashes the whole file on every call (0.2 s for Gemma 3 270M, twice per
    pass). A stamp next to the file remembers the size and mtime it last verified."""
    stamp = target.with_name(target.name + ".verified")
    try:
        stat = target.stat()
        if stamp.read_text() == f"{stat.st_size} {stat.st_mtime_ns}":
            return
    except OSError:
        pass
    module.assemble(target)
    stat = target.stat()
    temp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    temp.write_text(f"{stat.st_size} {stat.st_mtime_ns}")
    temp.replace(stamp)


def missing_message(model_path: str, kind: str, *, hub_ids: bool = False) -> str | None:
    """A warning when the model's files are not on this host; None when present or not needed.

    `kind` is what the engine loads ("none": the files live in its image or a volume);
    `hub_ids`: a name that is not a local path is a hub id the engine downloads itself.
    """
    if kind == "none":
        return None
    if is_packaged(model_path):
        module_name = model_path[len(PKG_PREFIX) :]
        if importlib.util.find_spec(module_name) is None:
            return f"packaged model module '{module_name}' is not installed on this host"
        return None
    if hub_ids and not model_path.startswith(("/", ".", "~")):
        return None  # a Hugging Face hub id: the engine fetches it
    if not Path(model_path).expanduser().exists():
        return f"{model_path} does not exist on this host"
    return None


_SPLIT_GGUF = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def read_facts(model_path: str, kind: ModelFiles) -> ModelFacts | None:
    """The facts of a spec's model files; None when there is nothing on this host to read.

    None: an engine that loads no files here (a container) or a hub id that is neither a local
    path nor in the Hugging Face cache. Packaged models (`pkg:`) are assembled first.
    """
    if kind == "none":
        return None
    if kind == "hf" and is_hub_id(model_path):
        snapshot = hub_snapshot(model_path)
        return None if snapshot is None else read_path(snapshot, "hf")
    try:
        path = resolve(model_path)
    except ModelFileError as exc:
        raise FactsError(str(exc)) from exc
    return read_path(path, kind)


def read_path(path: Path, kind: ModelFiles) -> ModelFacts:
    """Facts of a local model: a GGUF file, or a Hugging Face model directory."""
    if not path.exists():
        raise FactsError(f"{path} does not exist")
    if kind == "gguf":
        if path.is_dir():
            raise FactsError(f"{path} is a directory; llama.cpp needs a .gguf file")
        return read_gguf(path)
    if kind == "hf":
        if not path.is_dir():
            raise FactsError(f"{path} is not a model directory (config.json + *.safetensors)")
        return read_hf_directory(path)
    raise FactsError(f"{path}: this engine's models have no files to read")


def read_model_path(model_path: str, kind: ModelFiles) -> ModelFacts:
    """Facts for `reconciler estimate MODEL_PATH`: like read_facts, but a hub id that is not
    downloaded is an error that says so."""
    if kind == "hf" and is_hub_id(model_path):
        snapshot = hub_snapshot(model_path)
        if snapshot is None:
            raise FactsError(
                f"{model_path} is neither a local path nor downloaded to the Hugging Face "
                f"cache ({hub_cache()}): cannot estimate a model that is not on this host"
            )
        return read_path(snapshot, "hf")
    return read_path(resolve(model_path), kind)


def guess_files(model_path: str) -> ModelFiles:
    """A .gguf file or packaged model is a GGUF; a directory or a hub id a Hugging Face model."""
    if is_packaged(model_path) or model_path.endswith(".gguf"):
        return "gguf"
    if Path(model_path).expanduser().is_dir() or is_hub_id(model_path):
        return "hf"
    return "gguf"


# ---- GGUF -----------------------------------------------------------------------------------


def read_gguf(path: Path) -> GGUFFacts:
    """Facts of a GGUF file (all splits of a split model).

    The header walk steps over the vocabulary (a few tenths of a second for 262k tokens, where
    a full parse took ~10 s); the facts are still cached in memory and on disk, keyed by the
    path, size and mtime of every file of the model (a rewritten file is read again).
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
    header = _gguf_header(first)
    tensor_bytes = Counter(header.tensor_bytes)
    for split in others:
        tensor_bytes.update(_gguf_header(split).tensor_bytes)
    facts = _gguf_facts(str(first), header, tensor_bytes)
    _store_cached_facts(key, facts)
    return facts


FACTS_CACHE_VERSION = 1
"""Bump when GGUFFacts or how it is computed changes: older cache entries are then ignored."""


def facts_cache_dir() -> Path:
    """Next to the assembled packaged models (RECONCILER_MODEL_CACHE moves both)."""
    return cache_dir().parent / "facts"


def _cache_file(key: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return facts_cache_dir() / f"gguf-{digest}.json"


def _load_cached_facts(key: dict[str, object]) -> GGUFFacts | None:
    """The cached facts, or None for a missing, stale or damaged entry (then re-read)."""
    try:
        entry = json.loads(_cache_file(key).read_text(encoding="utf-8"))
        if entry.get("key") != key:
            return None
        return GGUFFacts(**entry["facts"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _store_cached_facts(key: dict[str, object], facts: GGUFFacts) -> None:
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


def _gguf_header(path: Path) -> GGUFHeader:
    try:
        return read_header(path)
    except FileNotFoundError as exc:
        raise FactsError(f"{path} does not exist") from exc
    except OSError as exc:
        raise FactsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # GGUFError; mmap of an empty file raises ValueError too
        raise FactsError(f"{path} is not a valid GGUF file ({exc})") from exc


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


_MISSING = object()


def _gguf_facts(path: str, header: GGUFHeader, tensor_bytes: Counter[str]) -> GGUFFacts:
    arch = _gguf_value(header, "general.architecture", path)
    if not isinstance(arch, str):
        raise FactsError(f"{path}: general.architecture is not a string")

    def arch_value(key: str, default: Any = _MISSING) -> Any:
        return _gguf_value(header, f"{arch}.{key}", path, default)

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
        n_vocab=arch_value("vocab_size", None) or _vocabulary_size(header, path),
    )


def _gguf_value(header: GGUFHeader, key: str, path: str, default: Any = _MISSING) -> Any:
    if key not in header.fields:
        if default is _MISSING:
            raise FactsError(f"{path}: the GGUF header has no {key}")
        return default
    value = header.fields[key]
    if isinstance(value, ArrayInfo):  # a long array where a number is expected: malformed
        raise FactsError(f"{path}: cannot read {key} (an array of {value.count} values)")
    return value


def _largest(value: object, key: str, path: str) -> int:
    values = value if isinstance(value, list) else [value]
    whole = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if not values or len(whole) != len(values):
        raise FactsError(f"{path}: {key} is not a whole number ({value!r})")
    if max(whole) <= 0:
        raise FactsError(f"{path}: {key} must be positive ({value!r})")
    return max(whole)


def _vocabulary_size(header: GGUFHeader, path: str) -> int:
    tokens = header.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise FactsError(f"{path}: the GGUF header has no vocabulary (tokenizer.ggml.tokens)")
    return tokens.count if isinstance(tokens, ArrayInfo) else len(tokens)


# ---- the Hugging Face hub cache -------------------------------------------------------------


def is_hub_id(model_path: str) -> bool:
    """`org/name` that is not a local path (the rule modelfiles.missing_message uses)."""
    if is_packaged(model_path) or model_path.startswith(("/", ".", "~")):
        return False
    return not Path(model_path).exists()


def hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a hub model that vLLM (huggingface_hub) already downloaded."""
    cache = hub_cache()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if snapshot.is_dir() else None


def hub_cache() -> Path:
    # huggingface_hub's rule: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"
