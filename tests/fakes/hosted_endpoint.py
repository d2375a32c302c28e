#!/usr/bin/env python3
"""A stand-in for a hosted OpenAI-compatible API (the endpoint of a `framework: remote` model).

    python tests/fakes/hosted_endpoint.py --port P --cert C --key K --api-key X --name N
                                          [--model NAME]... [--keys-file PATH] [--delay-ms D]
                                          [--stream-gate PATH] [--host 127.0.0.1]

HTTPS only (the certificate C and its key K: tests make them with `trustme`), under /v1 as the
hosted APIs are: GET /v1/models, POST /v1/chat/completions, streamed (server-sent events, one word
per chunk, `data: [DONE]`) or not. Like OpenAI it wants `Authorization: Bearer <key>` on every
/v1 route and answers 401 with its error JSON otherwise; a `model` it does not serve (--model,
default "gpt-upstream") is a 404 `model_not_found`: a gateway that forwards the client's name
instead of `upstream_model` is caught. Usage is in every answer, and in a stream's last chunk
when the client asks (`stream_options.include_usage`), as OpenAI sends it.

Every answer names the stand-in (--name): the text is "<name> says ...", and `system_fingerprint`
is the name, so that a test can tell who answered through a gateway.

Test knobs: --keys-file PATH adds the keys listed there (one a line), read on every request, so
that a test revokes a key by rewriting the file; --delay-ms D waits D ms before each answer (a busy
provider); --stream-gate PATH holds every stream after its first word while PATH does not exist
(the test decides when the rest is sent: a relay that buffers is caught, with no sleep to race).
GET /stand-in/stats (no key: not a real route) says what it received, in order:
{"requests": [{"method", "path", "model", "authorization", "host", "content", "stream"}]}: the
`model` of each body, the Authorization and Host headers as they came, and the user's text.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

SERVED = "gpt-upstream"


class Endpoint:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.name
        self.served: list[str] = args.model or [SERVED]
        self.keys: list[str] = args.api_key or []
        self.keys_file: Path | None = args.keys_file
        self.delay_s: float = args.delay_ms / 1000
        self.gate: Path | None = args.stream_gate
        self.received: list[dict[str, object]] = []

    # -- what a request is allowed ---------------------------------------------------------

    def accepted_keys(self) -> list[str]:
        listed: list[str] = []
        if self.keys_file is not None and self.keys_file.exists():
            listed = [k.strip() for k in self.keys_file.read_text().splitlines() if k.strip()]
        return self.keys + listed

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].encode()
        return any(hmac.compare_digest(given, k.encode()) for k in self.accepted_keys())

    def record(self, request: web.Request, body: dict[str, object]) -> None:
        messages = body.get("messages")
        content = ""
        if isinstance(messages, list):
            content = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        self.received.append(
            {
                "method": request.method,
                "path": request.path,
                "model": body.get("model"),
                "authorization": request.headers.get("Authorization"),
                "host": request.headers.get("Host"),
                "content": content,
                "stream": body.get("stream") is True,
            }
        )

    # -- routes ------------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.StreamResponse:
        self.record(request, {})
        if not self.authorized(request):
            return invalid_key()
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": self.name} for n in self.served
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return error(400, "We could not parse the JSON body of your request.", "invalid_json")
        self.record(request, body)
        if not self.authorized(request):
            return invalid_key()
        model = body.get("model")
        if model not in self.served:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return error(404, message, "model_not_found")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        prompt = self.received[-1]["content"]
        words = [f"{self.name}", "says", "hello", "to", "you"]
        usage = {
            "prompt_tokens": len(str(prompt).split()),
            "completion_tokens": len(words),
            "total_tokens": len(str(prompt).split()) + len(words),
        }
        if body.get("stream") is True:
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self.stream(request, str(model), words, usage if with_usage else None)
        answer = {
            **self.head(str(model), "chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return web.json_response(answer)

    async def stream(
        self, request: web.Request, model: str, words: list[str], usage: dict[str, int] | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = self.head(model, "chat.completion.chunk")
        deltas: list[dict[str, object]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
        for index, delta in enumerate(deltas):
            if index == 2:  # the role, then the first word: the rest waits for the gate
                await self.gate_open()
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await response.write(event(chunk))
        last = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(event(last))
        if usage is not None:
            await response.write(event({**head, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def gate_open(self, limit_s: float = 300.0) -> None:
        deadline = time.monotonic() + limit_s
        while self.gate is not None and not self.gate.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def head(self, model: str, kind: str) -> dict[str, object]:
        return {
            "id": f"chatcmpl-{self.name}-{len(self.received)}",
            "object": kind,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": self.name,
        }

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"requests": self.received})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/stand-in/stats", self.stats)
        return app


def event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def error(status: int, message: str, code: str) -> web.Response:
    """OpenAI's error shape."""
    kind = "invalid_request_error"
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(payload, status=status)


def invalid_key() -> web.Response:
    return error(401, "Incorrect API key provided.", "invalid_api_key")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True, help="PEM certificate chain")
    parser.add_argument("--key", type=Path, required=True, help="PEM private key")
    parser.add_argument("--api-key", action="append", help="a key it accepts (repeatable)")
    parser.add_argument("--keys-file", type=Path, default=None)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", action="append", help=f"a name it serves (default {SERVED})")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--stream-gate", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    endpoint = Endpoint(args)
    where = f"https://{args.host}:{args.port}/v1"
    print(f"INFO: hosted endpoint {args.name} serving {endpoint.served} on {where}", flush=True)
    # run_app stops cleanly on SIGTERM and SIGINT
    web.run_app(
        endpoint.app(), host=args.host, port=args.port, ssl_context=tls, print=None, access_log=None
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
