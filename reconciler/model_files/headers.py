"""Model file headers, read only as far as an estimate needs: a GGUF header (its fields and tensor
sizes, stepping over the vocabulary; tensor data is never read) and a Hugging Face directory
(config.json and the JSON headers of its safetensors files: 8 bytes + JSON each).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.estimate import HFFacts

MAGIC = b"GGUF"
SMALL_ARRAY = 4096
"""Numeric arrays up to this many elements are decoded (per-layer head counts); longer ones
(token types, scores) are kept as their element count only."""

# gguf_type -> struct format of one element
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9

# ggml_type -> (elements per block, bytes per block), as ggml.c's type traits (and
# gguf.constants.GGML_QUANT_SIZES) define them.
GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}


class GGUFError(ValueError):
    """Not a GGUF file this reader understands (truncated, foreign, unknown type)."""


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array kept as its element count (a vocabulary, token scores...)."""

    count: int


@dataclass(frozen=True)
class GGUFHeader:
    fields: dict[str, Any]
    """key -> value: str, int, float, bool, a list of numbers, or ArrayInfo"""
    tensor_bytes: dict[str, int]
    """tensor name -> bytes of its data"""


def read_header(path: Path) -> GGUFHeader:
    """The metadata and tensor sizes of one GGUF file; OSError or GGUFError."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _Parser(data).header()
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as exc:
            raise GGUFError(f"truncated or malformed header ({exc})") from exc


class _Parser:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.offset = 0
        self.order = "<"

    def header(self) -> GGUFHeader:
        if self.data[:4] != MAGIC:
            raise GGUFError("no GGUF magic number")
        self.offset = 4
        version = self._unpack("I")
        if version & 0xFFFF == 0:  # a big-endian file read as little-endian
            self.order = ">"
            version = struct.unpack(">I", self.data[4:8])[0]
        if version < 2:
            raise GGUFError(f"GGUF version {version} is not supported (2 or later)")
        tensor_count = self._unpack("Q")
        kv_count = self._unpack("Q")
        fields = {}
        for _ in range(kv_count):
            key = self._string()
            fields[key] = self._value(self._unpack("I"))
        tensors = {}
        for _ in range(tensor_count):
            name = self._string()
            dims = [self._unpack("Q") for _ in range(self._unpack("I"))]
            ggml_type = self._unpack("I")
            self._unpack("Q")  # offset of the data: not needed
            tensors[name] = _tensor_bytes(name, dims, ggml_type)
        return GGUFHeader(fields, tensors)

    def _unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._unpack("Q")
        end = self.offset + length
        if end > len(self.data):
            raise GGUFError("a string runs past the end of the file")
        text = self.data[self.offset : end].decode("utf-8")
        self.offset = end
        return text

    def _value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self._unpack(_SCALARS[kind])
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            return self._array(self._unpack("I"), self._unpack("Q"))
        raise GGUFError(f"unknown metadata type {kind}")

    def _array(self, kind: int, count: int) -> list[Any] | ArrayInfo:
        if kind in _SCALARS:
            fmt = _SCALARS[kind]
            size = struct.calcsize(fmt) * count
            if self.offset + size > len(self.data):
                raise GGUFError("an array runs past the end of the file")
            if count <= SMALL_ARRAY:
                values = struct.unpack_from(f"{self.order}{count}{fmt}", self.data, self.offset)
                self.offset += size
                return list(values)
            self.offset += size
            return ArrayInfo(count)
        if kind == _STRING:
            # step over each string by its length prefix: decoding 262k tokens is the cost
            # this reader exists to avoid
            length = struct.Struct(self.order + "Q")
            data, offset = self.data, self.offset
            for _ in range(count):
                offset += 8 + length.unpack_from(data, offset)[0]
            if offset > len(data):
                raise GGUFError("a string array runs past the end of the file")
            self.offset = offset
            return ArrayInfo(count)
        if kind == _ARRAY:
            for _ in range(count):
                self._array(self._unpack("I"), self._unpack("Q"))
            return ArrayInfo(count)
        raise GGUFError(f"unknown array element type {kind}")


def _tensor_bytes(name: str, dims: list[int], ggml_type: int) -> int:
    if ggml_type not in GGML_BLOCKS:
        raise GGUFError(f"tensor {name} has an unknown ggml type {ggml_type}")
    block, size = GGML_BLOCKS[ggml_type]
    elements = 1
    for dim in dims:
        elements *= dim
    return elements * size // block


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
