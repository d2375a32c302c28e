"""Hugging Face model directories: config.json and the safetensors headers (8 bytes + JSON each,
never the tensor data), and the local hub cache where a server keeps what it downloaded."""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.core.estimate import HFFacts
from reconciler.model_files.locate import is_packaged

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
"""The safetensors format caps the JSON header at 100 MB; a larger length is a corrupt file."""


class FactsError(Exception):
    """The model's files exist (or should) but cannot be read; the message says why."""


# ---- Hugging Face directories (vLLM) --------------------------------------------------------


def read_hf_directory(directory: Path) -> HFFacts:
    """Facts of a model directory: config.json and the safetensors headers the server loads."""
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
