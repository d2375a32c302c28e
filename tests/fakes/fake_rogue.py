#!/usr/bin/env python3
"""An engine that does not listen where it is told: for the reconciler's socket check.

It takes the argv of `vllm serve MODEL --host H --port P [--flag value]...` (extra flags are
ignored) and serves GET /health and GET /v1/models like the vLLM stand-in, but the environment
can move it, as real engines can be moved by settings they read (llama-cpp-python's HOST and
PORT beat --host and --port):

- FAKE_ROGUE_HOST=ADDR   serve on ADDR instead of --host;
- FAKE_ROGUE_PORT=PORT   serve on PORT instead of --port;
- FAKE_ROGUE_EXTRA=ADDR:PORT  also listen there (port 0: any free port);
- FAKE_ROGUE_CHILD=ADDR:PORT  a child process listens there (the check covers the process tree);
- FAKE_ROGUE_HANG_FILE=PATH  while PATH holds this process's pid, /health never answers (a hung
  engine; an engine restarted in its place has another pid and answers).
- FAKE_ROGUE_ANSWER=KIND  every POST gets a malformed or missing answer, and the connection is
  held open until the client drops it: `negative-length` (Content-Length: -1), `negative-chunk`
  (a chunk size of -6; an SSE stream when the request asks for one), `silent` (nothing at all),
  `stall` (a stream's head and first event, then nothing). GET /stats counts the POSTs and the
  connections the client dropped: {"posts": n, "dropped": n}.

Without them it behaves. Only the standard library: it starts in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHILD = """
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
time.sleep(3600)
"""


def listen(where: str) -> socket.socket:
    host, _, port = where.rpartition(":")
    sock = socket.socket()
    sock.bind((host, int(port)))
    sock.listen()
    return sock


def hung() -> bool:
    path = os.environ.get("FAKE_ROGUE_HANG_FILE")
    try:
        return bool(path) and Path(path).read_text().strip() == str(os.getpid())
    except OSError:
        return False


ANSWERS = {
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: -1\r\n\r\n{}",
    "negative-chunk": b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n-6\r\ndata: {}\n\n\r\n",
    "silent": b"",
    "stall": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked"
    b'\r\n\r\n1a\r\ndata: {"choices": []}\n\n\r\n',
}
STATS = {"posts": 0, "dropped": 0}
STATS_LOCK = threading.Lock()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fake_rogue")
    parser.add_argument("command")
    parser.add_argument("model")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args(argv)
    host = os.environ.get("FAKE_ROGUE_HOST", args.host)
    port = int(os.environ.get("FAKE_ROGUE_PORT", args.port))
    held = []
    if os.environ.get("FAKE_ROGUE_EXTRA"):
        held.append(listen(os.environ["FAKE_ROGUE_EXTRA"]))  # bound before it serves
    if os.environ.get("FAKE_ROGUE_CHILD"):
        child_host, _, child_port = os.environ["FAKE_ROGUE_CHILD"].rpartition(":")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, child_host, child_port], stdout=subprocess.PIPE
        )
        assert child.stdout is not None
        child.stdout.readline()  # it listens before the parent answers: no race in tests

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            deadline = time.monotonic() + 60
            while self.path == "/health" and hung() and time.monotonic() < deadline:
                time.sleep(0.05)
            body = b"" if self.path == "/health" else json.dumps({"data": []}).encode()
            if self.path == "/stats":
                with STATS_LOCK:
                    body = json.dumps(STATS).encode()
            self.send_response(200 if self.path in ("/health", "/v1/models", "/stats") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with STATS_LOCK:
                STATS["posts"] += 1
            answer = ANSWERS[os.environ.get("FAKE_ROGUE_ANSWER", "silent")]
            if b"%s" in answer:
                stream = b'"stream": true' in body or b'"stream":true' in body
                answer = answer % (b"text/event-stream" if stream else b"application/json")
            self.wfile.write(answer)
            self.wfile.flush()
            self.connection.settimeout(None)
            while self.connection.recv(65536):  # held until the client drops it
                pass
            with STATS_LOCK:
                STATS["dropped"] += 1
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"fake rogue serving on {host}:{port}", flush=True)
    with server:
        server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
