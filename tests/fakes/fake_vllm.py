#!/usr/bin/env python3
"""A stand-in for the `vllm` executable, for hosts where vLLM cannot run (no CUDA GPU).

It accepts exactly the argv shape the reconciler gives `vllm serve`:
    vllm serve MODEL --host H --port P --tensor-parallel-size N [--flag [value]]...
where every extra flag must be one of reconciler.core.flags.VLLM (or its --no- form where vLLM has
one); anything else fails like vLLM's argparse does (exit 2, "unrecognized arguments").

On start it prints one JSON line to stdout, `{"fake_vllm": {"argv": [...], "env": {...}}}`, with
the argv after the program name and the environment vLLM would care about
(CUDA_VISIBLE_DEVICES and the reconciler markers). Then it serves the OpenAI-shaped endpoints
vLLM serves: GET /health, GET /v1/models, POST /v1/completions (deterministic text).

Test knobs (environment): FAKE_VLLM_STARTUP_S delays listening (model loading);
FAKE_VLLM_IGNORE_SIGTERM=1 makes it ignore SIGTERM (a hung engine);
FAKE_VLLM_EXIT_IF_EXISTS=PATH makes it exit 1 at once while PATH exists (a broken dependency
that an operator can repair: the engine crashes at start until then).
Only the standard library is used, so it starts in a few milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[2])
)  # the repository: reconciler.core.flags

from reconciler.core.flags import VLLM, VLLM_MULTI_VALUE, VLLM_NEGATABLE, VLLM_SWITCHES

REPORTED_ENV = ("CUDA_VISIBLE_DEVICES",)
MARKER_PREFIX = "RECONCILER_"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--tensor-parallel-size", type=int, required=True)
    for key in sorted(VLLM):
        if key in VLLM_SWITCHES:
            serve.add_argument(f"--{key}", action="store_true")
            if key in VLLM_NEGATABLE:
                serve.add_argument(f"--no-{key}", action="store_true")
        elif key in VLLM_MULTI_VALUE:
            serve.add_argument(f"--{key}", nargs="+")
        else:
            serve.add_argument(f"--{key}")
    return parser.parse_args(argv)


def completion_text(model: str, prompt: str) -> str:
    """Deterministic: the same model and prompt always give the same text."""
    digest = hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()[:8]
    return f" stand-in completion {digest}"


def make_handler(args: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    names = args.served_model_name or [args.model]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, None)
            elif self.path == "/v1/models":
                data = [
                    {"id": n, "object": "model", "owned_by": "vllm", "root": args.model}
                    for n in names
                ]
                self._send(200, {"object": "list", "data": data})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            if self.path != "/v1/completions":
                self._send(404, {"detail": "Not Found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "invalid JSON"}})
                return
            prompt = str(body.get("prompt", ""))
            text = completion_text(names[0], prompt)
            completion_tokens = min(int(body.get("max_tokens", 16)), len(text.split()))
            self._send(
                200,
                {
                    "id": "cmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:12],
                    "object": "text_completion",
                    "created": 0,
                    "model": body.get("model") or names[0],
                    "choices": [
                        {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
                    ],
                    "usage": {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": completion_tokens,
                        "total_tokens": len(prompt.split()) + completion_tokens,
                    },
                },
            )

        def _send(self, status: int, payload: object) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stdout.write(f"INFO: {self.address_string()} {format % args}\n")
            sys.stdout.flush()

    return Handler


def main(argv: list[str]) -> int:
    args = parse(argv)
    env = {k: v for k, v in os.environ.items() if k in REPORTED_ENV or k.startswith(MARKER_PREFIX)}
    print(json.dumps({"fake_vllm": {"argv": argv, "env": env}}), flush=True)
    broken = os.environ.get("FAKE_VLLM_EXIT_IF_EXISTS")
    if broken and os.path.exists(broken):
        print(f"ERROR: fake vLLM cannot start while {broken} exists", flush=True)
        return 1
    if os.environ.get("FAKE_VLLM_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(os.environ.get("FAKE_VLLM_STARTUP_S", "0")))
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args))
    if os.environ.get("FAKE_VLLM_IGNORE_SIGTERM") != "1":
        # vLLM shuts down cleanly on SIGTERM and exits 0
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"INFO: fake vLLM serving {args.model} on http://{args.host}:{args.port}", flush=True)
    with server:
        server.serve_forever(poll_interval=0.1)
    print("INFO: fake vLLM stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
