"""The gateway's upstream client against engines that answer anything: over a real socket, a
tiny server on 127.0.0.1 replays bytes that hypothesis chose (well-formed answers, and answers
with hostile lengths, chunk sizes, heads and cuts), and the client must end every time, quickly,
without spinning or growing, in either the right body or an UpstreamError.

"The right body" is h11's reading of the same bytes (a well-kept HTTP/1.1 parser): the client
may refuse more than h11 does, never accept something h11 refuses or read another body.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import tracemalloc
from dataclasses import dataclass

import h11
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconciler.gateway.framing import MAX_CHUNK_LINE_BYTES, ChunkDecoder, UpstreamError
from reconciler.gateway.upstream import Pool, Response

try:
    import uvloop
except ImportError:  # the gateway runs on asyncio's own loop then; so does this test
    uvloop = None

WELL_FORMED_IDLE_S = 30.0
"""never reached by a well-formed answer: they all end by themselves"""
HOSTILE_IDLE_S = 1.0
"""how long an answer that never ends makes the client wait"""
WALL_LIMIT_S = 60.0
CPU_LIMIT_S = 2.0
"""a client that spins burns its whole wait; one that waits burns milliseconds"""
MEMORY_SLACK_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Replay:
    pieces: tuple[bytes, ...]
    """the answer, written piece by piece"""
    close: bool
    """close after the last piece; else hold the connection open"""

    @property
    def wire(self) -> bytes:
        return b"".join(self.pieces)


@dataclass
class Outcome:
    body: bytes | None = None
    error: UpstreamError | None = None
    unexpected: BaseException | None = None
    cpu_s: float = 0.0
    peak_bytes: int = 0


# -- the bytes ---------------------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
FRAMINGS = ("length", "chunked", "close")


def head(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [status_line, *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk_lines(sizes: list[int], draw: st.DrawFn) -> list[bytes]:
    lines = []
    for size in sizes:
        digits = f"{size:x}"
        digits = digits.upper() if draw(st.booleans()) else digits
        digits = "0" * draw(st.integers(0, 3)) + digits
        ext = draw(st.sampled_from(["", ";a=b", ';name="v"', ";x"]))
        lines.append(f"{digits}{ext}".encode())
    return lines


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, bytes, list, dict]:
    """A well-formed answer: (framing, body, parts to assemble it, its fields)."""
    framing = draw(st.sampled_from(FRAMINGS))
    body = draw(st.binary(max_size=3000))
    status = draw(st.sampled_from([200, 201, 400, 404, 500, 502, 503]))
    extra = [(f"x-{k}", v) for k, v in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4))]
    interim = draw(st.booleans())
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    parts = [p for p in parts if p]
    fields = {
        "status": status,
        "extra": extra,
        "interim": interim,
        "sizes": [len(p) for p in parts],
        "trailer": draw(st.booleans()),
    }
    return framing, body, parts, fields


def assemble(
    framing: str,
    body: bytes,
    parts: list[bytes],
    fields: dict,
    length: str | None = None,
    sizes: list[bytes] | None = None,
) -> bytes:
    headers = [("Content-Type", "application/json"), *fields["extra"]]
    version = "HTTP/1.1"
    if framing == "length":
        headers.append(("Content-Length", str(len(body)) if length is None else length))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    else:
        headers.append(("Connection", "close"))
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" if fields["interim"] else b""
    wire += head(f"{version} {fields['status']} Whatever", headers)
    if framing != "chunked":
        return wire + body
    lines = sizes if sizes is not None else [f"{n:x}".encode() for n in fields["sizes"]]
    for line, part in zip(lines, [*parts, *[b""] * len(lines)], strict=False):
        wire += line + b"\r\n" + part + b"\r\n"
    wire += b"0\r\n" + (b"X-Trailer: yes\r\n" if fields["trailer"] else b"") + b"\r\n"
    return wire


@st.composite
def pieces_of(draw: st.DrawFn, wire: bytes) -> tuple[bytes, ...]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=5))))
    bounds = [0, *[c for c in cuts if c < len(wire)], len(wire)]
    return tuple(wire[a:b] for a, b in itertools.pairwise(bounds) if b > a)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[Replay, bytes]:
    framing, body, parts, fields = draw(answers())
    if framing == "chunked":
        fields["sizes"] = [len(p) for p in parts]
        wire = assemble(framing, body, parts, fields, sizes=chunk_lines(fields["sizes"], draw))
    else:
        wire = assemble(framing, body, parts, fields)
    close = framing == "close" or draw(st.booleans())
    return Replay(draw(pieces_of(wire)), close), body


HOSTILE_LENGTHS = ["-1", "+5", "5 5", "0x10", "1e3", "", " ", "5,6", "99999999999999999999"]
HOSTILE_LENGTHS += ["\u0665", "-0", "12abc", "9" * 400]
HOSTILE_SIZES = [b"-6", b"+5", b"5 5", b"0x5", b"g", b"", b" ", b"-0", b"F" * 40, b"1" * 5000]
HOSTILE_SIZES += [b"5;\x00", b"\xff", b"-1;ext"]


@st.composite
def hostile(draw: st.DrawFn) -> Replay:
    framing, body, parts, fields = draw(answers())
    kind = draw(
        st.sampled_from(
            ["length", "size", "truncate", "insert", "replace", "big-head", "no-head", "te"]
        )
    )
    if kind == "length":
        bad = draw(st.sampled_from(HOSTILE_LENGTHS) | st.text(max_size=8))
        wire = assemble("length", body, parts, fields, length=bad)
    elif kind == "size":
        sizes = chunk_lines(fields["sizes"], draw) or [b"5"]
        sizes[draw(st.integers(0, len(sizes) - 1))] = draw(
            st.sampled_from(HOSTILE_SIZES) | st.binary(max_size=8)
        )
        wire = assemble("chunked", body, parts or [b"hello"], fields, sizes=sizes)
    elif kind == "big-head":
        fields["extra"] = [("X-Big", "a" * draw(st.sampled_from([70_000, 200_000])))]
        wire = assemble(framing, body, parts, fields)
    elif kind == "no-head":
        wire = draw(st.binary(max_size=3000)).replace(b"\r\n\r\n", b"")
    elif kind == "te":
        coding = draw(st.sampled_from(["gzip", "chunked, chunked", "gzip, chunked", "identity"]))
        fields["extra"] = [("Transfer-Encoding", coding)]
        wire = assemble("length" if draw(st.booleans()) else "close", body, parts, fields)
    else:
        wire = assemble(framing, body, parts, fields)
        at = draw(st.integers(0, len(wire)))
        if kind == "truncate":
            wire = wire[:at]
        elif kind == "insert":
            wire = wire[:at] + draw(st.binary(min_size=1, max_size=8)) + wire[at:]
        else:
            wire = wire[:at] + draw(st.binary(min_size=1, max_size=1)) + wire[at + 1 :]
    return Replay(draw(pieces_of(wire)), draw(st.booleans()))


# -- the oracle --------------------------------------------------------------------------


def h11_reading(replay: Replay) -> bytes | None:
    """The body h11 reads from the replay as the answer to a POST, or None when it refuses
    it or it never ends."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=10 * 1024 * 1024)
    conn.send(h11.Request(method="POST", target="/v1/x", headers=[("Host", "e")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(replay.wire)
    if replay.close:
        conn.receive_data(b"")
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return body
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None


# -- the socket ----------------------------------------------------------------------------


async def exchange(replay: Replay, idle_timeout_s: float) -> bytes:
    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            request_head = await reader.readuntil(b"\r\n\r\n")
            length = int(request_head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            for piece in replay.pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
            if not replay.close:
                await reader.read()  # held until the client gives up
        writer.close()

    server = await asyncio.start_server(engine, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool()
    response: Response | None = None
    try:
        response = await pool.post(
            f"http://127.0.0.1:{port}",
            "/v1/chat/completions",
            b'{"model": "m"}',
            {"Content-Type": "application/json"},
            idle_timeout_s=idle_timeout_s,
        )
        return await response.read()
    finally:
        if response is not None:
            response.close()
        pool.close()
        server.close()
        await server.wait_closed()


def run_client(replay: Replay, idle_timeout_s: float) -> Outcome:
    """The exchange on a loop of its own thread, so that a client that spins in plain code
    (which no asyncio timeout can interrupt) fails the test instead of hanging it."""
    outcome = Outcome()

    def work() -> None:
        loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        started = time.thread_time()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            outcome.body = loop.run_until_complete(exchange(replay, idle_timeout_s))
        except UpstreamError as exc:
            outcome.error = exc
        except BaseException as exc:  # reported by the test, with what the engine sent
            outcome.unexpected = exc
        finally:
            outcome.peak_bytes = tracemalloc.get_traced_memory()[1] - base
            outcome.cpu_s = time.thread_time() - started
            loop.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(WALL_LIMIT_S)
    assert not thread.is_alive(), f"the client hung or spins on {replay.wire[:300]!r}"
    return outcome


def check_bounds(outcome: Outcome, replay: Replay) -> None:
    assert outcome.unexpected is None, f"{outcome.unexpected!r} on {replay.wire[:300]!r}"
    assert outcome.cpu_s < CPU_LIMIT_S, f"{outcome.cpu_s:.2f} s of CPU on {replay.wire[:300]!r}"
    limit = MEMORY_SLACK_BYTES + 4 * len(replay.wire)
    assert outcome.peak_bytes < limit, f"{outcome.peak_bytes} bytes on {replay.wire[:300]!r}"


@contextlib.contextmanager
def traced():
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FUZZ
@given(well_formed())
def test_a_well_formed_answer_is_read_whole(case: tuple[Replay, bytes]) -> None:
    replay, body = case
    assert h11_reading(replay) == body  # the generator itself speaks HTTP/1.1
    with traced():
        outcome = run_client(replay, WELL_FORMED_IDLE_S)
    check_bounds(outcome, replay)
    assert outcome.error is None, f"{outcome.error} on {replay.wire[:300]!r}"
    assert outcome.body == body


NEGATIVE_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}"
NEGATIVE_CHUNK = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-6\r\nworld!\r\n0\r\n\r\n"
)


@FUZZ
@given(hostile())
@example(Replay((NEGATIVE_LENGTH,), close=False))
@example(Replay((NEGATIVE_LENGTH,), close=True))
@example(Replay((NEGATIVE_CHUNK,), close=False))
@example(Replay((NEGATIVE_CHUNK[:60], NEGATIVE_CHUNK[60:]), close=True))
@example(Replay((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",), close=False))
@example(Replay((b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000,), close=False))
def test_a_hostile_answer_ends_in_an_error_or_the_body_h11_reads(replay: Replay) -> None:
    with traced():
        outcome = run_client(replay, HOSTILE_IDLE_S)
    check_bounds(outcome, replay)
    if outcome.error is None:
        assert outcome.body == h11_reading(replay), f"read {outcome.body!r} from {replay.wire!r}"


@settings(max_examples=200, deadline=None, database=None)
@given(well_formed(), st.data())
def test_chunks_decode_the_same_however_the_bytes_arrive(
    case: tuple[Replay, bytes], data: st.DataObject
) -> None:
    replay, body = case
    wire = replay.wire
    if b"Transfer-Encoding: chunked" not in wire:
        return
    start = wire.index(b"\r\n\r\n") + 4
    if wire.startswith(b"HTTP/1.1 100"):  # the interim head first
        start = wire.index(b"\r\n\r\n", start) + 4
    encoded = wire[start:]
    decoder, buffer, out = ChunkDecoder(), bytearray(), b""
    for piece in data.draw(pieces_of(encoded)):
        buffer += piece
        out += decoder.feed(buffer)
        assert len(buffer) <= MAX_CHUNK_LINE_BYTES + 1  # only an unfinished line stays behind
    assert (out, decoder.finished, bytes(buffer)) == (body, True, b"")
