"""A GGUF header reader that reads only what an estimate needs.

gguf.GGUFReader parses every metadata value into Python objects, the tokenizer's vocabulary
included: ~10 s of CPU for a 262k-token vocabulary on a small machine. This reader walks the
same header over a read-only memory map: scalar values and small numeric arrays are decoded,
every string array (the vocabulary, its merges) is stepped over by its length prefixes and kept
only as its element count, and tensor sizes come from each tensor's shape and ggml type.
Tensor data is never touched. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
