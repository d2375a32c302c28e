#!/usr/bin/env python3
"""A minimal, fast OpenAI-shaped upstream: what the gateway bench and tests put behind it.

    python tests/bench/gateway_upstream.py --port P [--chunks N] [--chunk-delay-ms D] [--name ID]
                                           [--stream-bytes B]

Raw asyncio (uvloop when installed) with canned answers, so it serves well over 10k req/s on one
core and the gateway, not the upstream, is what a bench measures. It answers GET /health,
GET /v1/models, POST /v1/chat/completions, /v1/completions, /v1/embeddings (a body with
`"stream": true` gets N SSE chunks, then a usage chunk and [DONE]), and GET /stats:
{"requests": n, "streams_cut": n, "bytes_streamed": n} where streams_cut counts streams whose
client hung up. With --stream-bytes B a stream is B bytes of 64 KiB events, sent as fast as the
reader takes them (the engine side of a back-pressure test: it writes only while its socket
accepts, so what it has sent is what the gateway took).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

STATS = {"requests": 0, "streams_cut": 0, "bytes_streamed": 0}
BIG_EVENT = b"data: " + b"x" * (65536 - 8) + b"\n\n"
BIG_CHUNK = b"%x\r\n%s\r\n" % (len(BIG_EVENT), BIG_EVENT)


def canned(name: str) -> dict[bytes, bytes]:
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello from the upstream"},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    completion = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": name,
        "choices": [{"index": 0, "text": " hello", "logprobs": None, "finish_reason": "length"}],
        "usage": usage,
    }
    embedding = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": name,
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    models = {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "bench"}]}
    return {
        b"/v1/chat/completions": json.dumps(chat).encode(),
        b"/v1/completions": json.dumps(completion).encode(),
        b"/v1/embeddings": json.dumps(embedding).encode(),
        b"/v1/models": json.dumps(models).encode(),
        b"/health": b"{}",
    }


def response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def sse_chunk(name: str, index: int, text: str) -> bytes:
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": name,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    data = b"data: " + json.dumps(event).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream(asyncio.Protocol):
    def __init__(self, args: argparse.Namespace, answers: dict[bytes, bytes]) -> None:
        self.args, self.answers = args, answers
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task | None = None
        self.chunks = [sse_chunk(args.name, i, f" tok{i}") for i in range(args.chunks)]
        usage = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": args.name,
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": args.chunks,
                "total_tokens": 5 + args.chunks,
            },
        }
        tail = b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
        self.tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail)
        self.whole_stream = STREAM_HEAD + b"".join(self.chunks) + self.tail
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None and not self.streaming.done():
            STATS["streams_cut"] += 1
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            length = 0
            for line in head[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head[0].split(b" "), body)

    def handle(self, request_line: list[bytes], body: bytes) -> None:
        assert self.transport is not None
        STATS["requests"] += 1
        path = request_line[1] if len(request_line) > 1 else b"/"
        if path == b"/stats":
            self.transport.write(response(b"200 OK", json.dumps(STATS).encode()))
        elif path not in self.answers:
            self.transport.write(response(b"404 Not Found", b'{"detail":"Not Found"}'))
        elif (b'"stream": true' in body or b'"stream":true' in body) and self.args.stream_bytes:
            self.streaming = asyncio.ensure_future(self.stream_bytes())
        elif (b'"stream": true' in body or b'"stream":true' in body) and self.args.chunk_delay_ms:
            self.streaming = asyncio.ensure_future(self.stream())
        elif b'"stream": true' in body or b'"stream":true' in body:
            self.transport.write(self.whole_stream)
        else:
            self.transport.write(response(b"200 OK", self.answers[path]))

    async def stream(self) -> None:
        assert self.transport is not None
        self.transport.write(STREAM_HEAD)
        for chunk in self.chunks:
            await asyncio.sleep(self.args.chunk_delay_ms / 1000)
            self.transport.write(chunk)
        self.transport.write(self.tail)

    async def stream_bytes(self) -> None:
        assert self.transport is not None
        self.transport.write(STREAM_HEAD)
        sent = 0
        while sent < self.args.stream_bytes and not self.transport.is_closing():
            await self.writable.wait()
            self.transport.write(BIG_CHUNK)
            sent += len(BIG_CHUNK)
            STATS["bytes_streamed"] += len(BIG_CHUNK)
        self.transport.write(self.tail)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    answers = canned(args.name)
    server = await loop.create_server(
        lambda: Upstream(args, answers), args.host, args.port, backlog=2048, reuse_address=True
    )
    print(f"upstream listening on http://{args.host}:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="bench-model", help="model name in the answers")
    parser.add_argument("--chunks", type=int, default=8, help="SSE chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--stream-bytes", type=int, default=0, help="stream this many bytes")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
