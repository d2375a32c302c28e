#!/usr/bin/env python3
"""A single-slot engine: it answers one completion at a time, as llama-cpp-python's server does,
and its health route waits for the slot (as that server's /v1/models waits for the model lock),
so a probe sent while it streams a long answer times out although the engine works.

It takes the argv of `vllm serve MODEL --host H --port P [--flag value]...` (extra flags are
ignored). POST /v1/chat/completions and /v1/completions with `"stream": true` send `max_tokens`
server-sent events, one every FAKE_BUSY_TOKEN_S seconds (default 0.02), holding the slot; without
`stream` the whole answer comes at the end. FAKE_BUSY_STALL_AFTER=N: after N events the engine
keeps the slot and sends nothing more (a hung engine with a request in flight) until the client
leaves. Only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOT = threading.Lock()


def event(model: str, index: int, last: bool) -> bytes:
    choice = {"index": 0, "delta": {"content": f" w{index}"}, "finish_reason": None}
    if last:
        choice["finish_reason"] = "length"
    chunk = {"object": "chat.completion.chunk", "model": model, "choices": [choice]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fake_busy")
    parser.add_argument("command")
    parser.add_argument("model")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    pause = float(os.environ.get("FAKE_BUSY_TOKEN_S", "0.02"))
    stall = os.environ.get("FAKE_BUSY_STALL_AFTER")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path not in ("/health", "/v1/models"):
                self._send(404, b"{}")
                return
            with SLOT:  # the model's lock: no answer while a completion holds it
                models = {"object": "list", "data": [{"id": args.model, "object": "model"}]}
                self._send(200, b"" if self.path == "/health" else json.dumps(models).encode())

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            tokens = int(body.get("max_tokens") or 16)
            with SLOT:
                if not body.get("stream"):
                    time.sleep(pause * tokens)
                    text = "".join(f" w{i}" for i in range(tokens))
                    message = {"role": "assistant", "content": text}
                    choice = {"index": 0, "message": message, "finish_reason": "length"}
                    usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": 1}
                    answer = {"object": "chat.completion", "choices": [choice], "usage": usage}
                    self._send(200, json.dumps(answer).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for index in range(tokens):
                    if stall is not None and index >= int(stall):
                        self.connection.settimeout(None)
                        while self.connection.recv(65536):  # silent until the client leaves
                            pass
                        self.close_connection = True
                        return
                    self._chunk(event(args.model, index, index == tokens - 1))
                    time.sleep(pause)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"fake busy engine serving {args.model} on {args.host}:{args.port}", flush=True)
    with server:
        server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
