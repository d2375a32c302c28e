"""HTTP/1.1 response framing as the gateway reads it from engines: strict, bounded, no guessing.

Any spec author can run an engine, so nothing an engine sends is trusted: the head must parse
exactly, Content-Length is plain digits, chunk sizes are hex digits (with an optional
extension), and heads, chunk-size lines and trailers are bounded. Whatever does not parse is an
UpstreamError; the client that reads it (upstream.py) drops the connection.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_HEAD_BYTES = 65536
MAX_CHUNK_LINE_BYTES = 4096
"""a chunk-size line with its extensions; the trailers after the last chunk get MAX_HEAD_BYTES"""

_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_FIELD = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*"
"""a token, a colon, a value without control characters (tab allowed)"""
_HEADER = re.compile(_FIELD)
_FIELDS = re.compile(rf"(?:{_FIELD}\r\n)*{_FIELD}")
_LENGTH = re.compile(r"[0-9]{1,18}")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?[ \t]*")


class UpstreamError(Exception):
    """The engine's connection failed or broke before its answer was complete, or the engine
    answered something that is not HTTP/1.1 as this client reads it."""


class Head(NamedTuple):
    version: int
    """the minor version: 1.0 or 1.1"""
    status: int
    headers: dict[str, str]
    """lower-cased names; repeated fields joined with ", " (Content-Length must repeat equal)"""


def parse_head(raw: bytes) -> Head:
    """A response head without its final blank line; UpstreamError for anything malformed."""
    text = raw.decode("latin-1")
    status_line, _, fields = text.partition("\r\n")
    status = _STATUS_LINE.fullmatch(status_line)
    if status is None:
        raise UpstreamError(f"bad status line from the engine: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    if fields:
        if _FIELDS.fullmatch(fields) is None:  # obs-fold, bare CR or LF, controls: not guessed
            bad = next(line for line in fields.split("\r\n") if not _HEADER.fullmatch(line))
            raise UpstreamError(f"bad header line from the engine: {bad[:80]!r}")
        for line in fields.split("\r\n"):  # every line matched _FIELD above
            name, _, value = line.partition(":")
            name, value = name.lower(), value.strip(" \t")
            if name not in headers:
                headers[name] = value
            elif name != "content-length":
                headers[name] = f"{headers[name]}, {value}"
            elif headers[name] != value:
                raise UpstreamError("the engine sent two different Content-Length values")
    return Head(int(status.group(1)), int(status.group(2)), headers)


class Framing(NamedTuple):
    length: int | None
    """the body's exact size, or None"""
    chunked: bool
    keep_alive: bool
    """the connection may carry the next request once this body was read to its end"""


def framing(head: Head) -> Framing:
    """How the body of `head` ends (RFC 9112 section 6.3, for answers to a POST). Only what
    engines send is taken: a length of plain digits, or `chunked` alone; anything else, or
    both at once, is an UpstreamError (which of two framings counts is how answers get
    smuggled)."""
    headers = head.headers
    connection = headers.get("connection")
    if connection is None:
        keep_alive = head.version == 1
    else:
        tokens = {t.strip().lower() for t in connection.split(",")}
        keep_alive = "close" not in tokens and (head.version == 1 or "keep-alive" in tokens)
    coding = headers.get("transfer-encoding")
    length = headers.get("content-length")
    if coding is not None and (length is not None or coding.lower() != "chunked"):
        raise UpstreamError(f"bad Transfer-Encoding from the engine: {coding[:80]!r}")
    if length is not None and _LENGTH.fullmatch(length) is None:
        raise UpstreamError(f"bad Content-Length from the engine: {length[:80]!r}")
    if head.status in (204, 304):
        return Framing(0, False, keep_alive)
    if coding is not None:
        return Framing(None, True, keep_alive)
    if length is not None:
        return Framing(int(length), False, keep_alive)
    return Framing(None, False, False)  # the body ends with the connection


class ChunkDecoder:
    """Chunked transfer coding, decoded as the bytes come: each feed takes what it can from the
    buffer (partial chunks too, so that a huge chunk is relayed without being held whole)."""

    def __init__(self) -> None:
        self.finished = False
        self._remaining = 0
        """data bytes of the current chunk still to come"""
        self._crlf = False
        """the CRLF that ends a chunk's data is next"""
        self._trailer_bytes = -1
        """-1 until the last chunk; then the size of the trailers so far"""

    def feed(self, buffer: bytearray) -> bytes:
        """Decode (and remove) what `buffer` holds; the data decoded, maybe b""."""
        parts = []
        pos, end = 0, len(buffer)
        while not self.finished:
            if remaining := self._remaining:
                take = min(remaining, end - pos)
                if take:
                    parts.append(buffer[pos : pos + take])
                    pos += take
                self._remaining = remaining = remaining - take
                if remaining:
                    break
                self._crlf = True
            if self._crlf:
                if end - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise UpstreamError("a chunk from the engine is longer than its size")
                pos += 2
                self._crlf = False
            eol = buffer.find(b"\r\n", pos, pos + MAX_CHUNK_LINE_BYTES + 2)
            if eol < 0:
                if end - pos > MAX_CHUNK_LINE_BYTES:
                    raise UpstreamError("a chunk-size line from the engine has no end")
                break
            line, pos = buffer[pos:eol], eol + 2
            if self._trailer_bytes >= 0:
                self._trailer(line)
                continue
            if 0 < len(line) < 16 and not line.translate(None, _HEX_DIGITS):
                self._remaining = int(line, 16)  # hex digits alone: what engines send
            elif size := _CHUNK_SIZE.fullmatch(line):
                self._remaining = int(size.group(1), 16)
            else:
                raise UpstreamError(f"bad chunk size from the engine: {bytes(line[:80])!r}")
            if not self._remaining:
                self._trailer_bytes = 0
        del buffer[:pos]
        return b"".join(parts)

    def _trailer(self, line: bytearray) -> None:
        self._trailer_bytes += len(line) + 2
        if not line:
            self.finished = True
        elif self._trailer_bytes > MAX_HEAD_BYTES:
            raise UpstreamError("the engine's trailers have no end")
        elif _HEADER.fullmatch(line.decode("latin-1")) is None:
            raise UpstreamError(f"bad trailer line from the engine: {bytes(line[:80])!r}")
