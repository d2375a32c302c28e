"""The OpenAI-shaped HTTP server shared by the engine stand-ins (fake_vllm.py, fake_sglang.py).

Endpoints every stand-in serves: GET /health, GET /v1/models, POST /v1/completions and
POST /v1/chat/completions (deterministic text; `"stream": true` gets it as server-sent events,
one word per chunk, in chunked HTTP/1.1 as the real servers send it); a stand-in adds its
engine's own GET routes. Like vLLM, a request whose `model` is not one of the served names is a
404 in vLLM's error shape: a gateway that forwards the client's name instead of the engine's is
caught. GET /stand-in/stats says what it was asked: {"answered": {status: count}, "models":
[each POST's model]} (not a real engine's route: tests read it).

Test knobs (environment, with the stand-in's prefix, e.g. FAKE_VLLM_): <PREFIX>STARTUP_S delays
listening (model loading); <PREFIX>IGNORE_SIGTERM=1 makes it ignore SIGTERM (a hung engine);
<PREFIX>EXIT_IF_EXISTS=PATH makes it exit 1 at once while PATH exists (a broken dependency that
an operator can repair: the engine crashes at start until then); <PREFIX>HOLD_MB=N makes it hold
N MiB of resident memory (a model's weights and KV cache, as far as memory measurement can tell);
<PREFIX>ANSWER_STATUS=N answers every POST with status N and an error body (an overloaded or
broken engine: 502, 503); <PREFIX>STREAM_GATE=PATH holds every stream after its first chunk
until PATH exists (the test decides when the second chunk is sent: no sleep to race).
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPORTED_ENV = ("CUDA_VISIBLE_DEVICES",)
MARKER_PREFIX = "RECONCILER_"


@dataclass
class StandIn:
    """What differs between stand-ins: names, the model served, extra GET routes."""

    name: str
    """"vllm", "sglang": the JSON report key is fake_<name>, the env prefix FAKE_<NAME>_"""
    title: str
    model: str
    served: list[str]
    host: str
    port: int
    owned_by: str
    routes: Mapping[str, Callable[[], object]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"FAKE_{self.name.upper()}_"


def completion_text(model: str, prompt: str) -> str:
    """Deterministic: the same model and prompt always give the same text."""
    digest = hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()[:8]
    return f" stand-in completion {digest}"


def _usage(prompt: str, text: str, max_tokens: int) -> dict[str, int]:
    completion_tokens = min(max_tokens, len(text.split()))
    return {
        "prompt_tokens": len(prompt.split()),
        "completion_tokens": completion_tokens,
        "total_tokens": len(prompt.split()) + completion_tokens,
    }


def not_served(model: str) -> dict[str, object]:
    """vLLM's answer (HTTP 404) to a `model` it does not serve."""
    return {
        "object": "error",
        "message": f"The model `{model}` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


def _answer(path: str, body: dict, default_model: str) -> dict | None:
    model = body.get("model") or default_model
    if path == "/v1/completions":
        prompt = str(body.get("prompt", ""))
        text = completion_text(default_model, prompt)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        kind = "text_completion"
    elif path == "/v1/chat/completions":
        messages = body.get("messages") or []
        prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        text = completion_text(default_model, prompt)
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        kind = "chat.completion"
    else:
        return None
    return {
        "id": "cmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:12],
        "object": kind,
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": _usage(prompt, text, int(body.get("max_tokens", 16))),
    }


def stream_events(answer: dict) -> list[dict]:
    """`answer` as the chunks a streaming server sends: one word of its text per chunk."""
    choice = answer["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    chat = answer["object"] == "chat.completion"
    events = []
    for word in text.split(" ")[1:]:
        piece = {"delta": {"content": " " + word}} if chat else {"text": " " + word}
        events.append(
            {
                "id": answer["id"],
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 0,
                "model": answer["model"],
                "choices": [{"index": 0, **piece, "finish_reason": None}],
            }
        )
    return events


def wait_for_gate(gate: str | None, limit_s: float = 300.0) -> None:
    """Hold until the file `gate` exists (the test opens it), or `limit_s` passed."""
    deadline = time.monotonic() + limit_s
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


def make_handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    status_env = os.environ.get(standin.prefix + "ANSWER_STATUS")
    forced_status = int(status_env) if status_env else None
    gate = os.environ.get(standin.prefix + "STREAM_GATE")
    answered: dict[str, int] = {}
    models: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # as uvicorn answers: kept-alive, chunked streams

        def do_GET(self) -> None:
            if self.path == "/stand-in/stats":
                with lock:
                    self._send(200, {"answered": dict(answered), "models": list(models)})
            elif self.path == "/health":
                self._send(200, None)
            elif self.path == "/v1/models":
                data = [
                    {
                        "id": n,
                        "object": "model",
                        "owned_by": standin.owned_by,
                        "root": standin.model,
                    }
                    for n in standin.served
                ]
                self._send(200, {"object": "list", "data": data})
            elif self.path in standin.routes:
                self._send(200, standin.routes[self.path]())
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "invalid JSON"}})
                return
            body = body if isinstance(body, dict) else {}
            model = body.get("model")
            with lock:
                models.append(str(model))
            answer = _answer(self.path, body, standin.served[0])
            if forced_status is not None:
                self._send(forced_status, {"error": {"message": f"stand-in {forced_status}"}})
            elif answer is None:
                self._send(404, {"detail": "Not Found"})
            elif model is not None and model not in standin.served:
                self._send(404, not_served(str(model)))
            elif body.get("stream") is True:
                self._stream(answer)
            else:
                self._send(200, answer)

        def _stream(self, answer: dict) -> None:
            self._count(200)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = [json.dumps(e).encode() for e in stream_events(answer)] + [b"[DONE]"]
            for index, event in enumerate(events):
                if index == 1:
                    wait_for_gate(gate)
                data = b"data: " + event + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def _count(self, status: int) -> None:
            with lock:
                answered[str(status)] = answered.get(str(status), 0) + 1

        def _send(self, status: int, payload: object) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            if self.command == "POST":
                self._count(status)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stdout.write(f"INFO: {self.address_string()} {format % args}\n")
            sys.stdout.flush()

    return Handler


def serve(standin: StandIn, argv: list[str]) -> int:
    """Report the argv and environment, honour the knobs, serve until SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k in REPORTED_ENV or k.startswith(MARKER_PREFIX)}
    print(json.dumps({f"fake_{standin.name}": {"argv": argv, "env": env}}), flush=True)
    broken = os.environ.get(standin.prefix + "EXIT_IF_EXISTS")
    if broken and os.path.exists(broken):
        print(f"ERROR: fake {standin.title} cannot start while {broken} exists", flush=True)
        return 1
    hung = os.environ.get(standin.prefix + "IGNORE_SIGTERM") == "1"
    if hung:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(os.environ.get(standin.prefix + "STARTUP_S", "0")))
    held = _hold(int(os.environ.get(standin.prefix + "HOLD_MB", "0")))
    server = ThreadingHTTPServer((standin.host, standin.port), make_handler(standin))
    if not hung:
        # the real servers shut down cleanly on SIGTERM and exit 0
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    where = f"http://{standin.host}:{standin.port}"
    print(f"INFO: fake {standin.title} serving {standin.model} on {where}", flush=True)
    with server:
        server.serve_forever(poll_interval=0.1)
    del held  # resident until here, as a model's memory is
    print(f"INFO: fake {standin.title} stopped", flush=True)
    return 0


def _hold(mib: int) -> bytearray:
    """N MiB written page by page, so that they are resident, not just reserved."""
    held = bytearray(mib << 20)
    for offset in range(0, len(held), 4096):
        held[offset] = 1
    return held
