"""Every refusal the gateway answers with, in OpenAI's error JSON so that clients' retry logic
works: {"error": {"message", "type", "code"}} (and Retry-After where waiting helps)."""

from __future__ import annotations

from aiohttp import web

MODEL_HEADER = "X-Reconciler-Model"
INSTANCE_HEADER = "X-Reconciler-Instance"
"""names the engine instance that answered (`gemma3-270m.1`; a model of one instance: its id)"""
HOST_HEADER = "X-Reconciler-Host"
"""in a fleet: the host whose gateway answered (a forwarded answer keeps the other host's)"""
FORWARDED_HEADER = "X-Reconciler-Forwarded"
"""on a request one host's gateway forwards to another's: the sender's name; such a request is
served by the receiving host's own instances only, never forwarded again"""
INVALID = "invalid_request_error"
UNAVAILABLE = "service_unavailable"
FORBIDDEN = "permission_error"
SHOWN_CHARS = 64
"""what a refusal echoes of a client's text (a model name, a path): enough to recognise it,
never a multi-megabyte reflection"""


def shown(text: str) -> str:
    """A client's text as a refusal may repeat it: short, and printable (no escape sequences
    or surrogates from undecodable bytes reach the client's terminal)."""
    short = text[:SHOWN_CHARS].encode("ascii", "backslashreplace").decode("ascii")
    short = "".join(c if c.isprintable() else "?" for c in short)
    return short + ("..." if len(text) > SHOWN_CHARS else "")


class Refusal(Exception):
    def __init__(
        self, status: int, message: str, kind: str, code: str | None, *, retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.retry_after = retry_after

    def response(self, model: str) -> web.Response:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.code}}
        headers = {MODEL_HEADER: model}
        if self.retry_after:
            headers["Retry-After"] = str(self.retry_after)
        return web.json_response(body, status=self.status, headers=headers)


def unauthorized() -> Refusal:
    return Refusal(401, "a valid API key is required", "authentication_error", "invalid_api_key")


def keys_required() -> Refusal:
    return Refusal(
        401,
        "this gateway listens beyond loopback and no key is configured: "
        "set gateway.api_keys in cluster.yaml",
        "authentication_error",
        "invalid_api_key",
    )


def too_big(limit: int) -> Refusal:
    return Refusal(413, f"the request body is over {limit} bytes", INVALID, "body_too_large")


def bad_json(problem: Exception) -> Refusal:
    return Refusal(400, f"malformed JSON: {problem}", INVALID, "invalid_json")


def missing_model() -> Refusal:
    return Refusal(400, "the request needs a `model` (a string)", INVALID, "missing_model")


def unknown_model(name: str) -> Refusal:
    return Refusal(404, f"the model `{shown(name)}` does not exist", INVALID, "model_not_found")


def no_table(retry_after: int) -> Refusal:
    message = "the gateway has not loaded the reconciler's routing table yet"
    return Refusal(503, message, UNAVAILABLE, "routes_not_loaded", retry_after=retry_after)


def disabled(model: str) -> Refusal:
    return Refusal(404, f"the model `{model}` is disabled", INVALID, "model_disabled")


def unavailable(model: str, status: str, retry_after: int) -> Refusal:
    message = f"the model `{model}` is {status} and no fallback runs"
    return Refusal(503, message, UNAVAILABLE, "model_unavailable", retry_after=retry_after)


def queue_full(model: str, size: int, retry_after: int = 1) -> Refusal:
    # Retry-After: clients' retry logic (the openai package's among them) honours it on a 429
    message = f"the queue of `{model}` is full ({size})"
    return Refusal(429, message, "rate_limit_error", "queue_full", retry_after=retry_after)


def queue_timeout(model: str, seconds: float, retry_after: int, busy: str | None = None) -> Refusal:
    """`busy`: the remote model at its max_concurrency the request waited for, if that was it."""
    if busy is None:
        message = f"the model `{model}` did not become ready in {seconds:g} s"
    else:
        message = f"no request to `{busy}` (at its max_concurrency) ended in {seconds:g} s"
    return Refusal(503, message, UNAVAILABLE, "queue_timeout", retry_after=retry_after)


def no_upstream(model: str, problem: str, retry_after: int) -> Refusal:
    message = f"no instance of `{model}` answered: {problem}"
    # 503, not 502: no instance answering is the model being unavailable for now, which
    # clients retry after Retry-After (one engine's bad answer was already failed over)
    return Refusal(503, message, UNAVAILABLE, "upstream_unavailable", retry_after=retry_after)


def key_withheld(model: str) -> Refusal:
    # why (which variable, which host) is the operator's to read, in gateway.log
    message = f"the gateway may not send the key of the remote model `{model}` to its endpoint"
    # 502: the gateway cannot make a valid request upstream; retrying will not help until the
    # host's operator binds the key (a client's own mistake it is not)
    return Refusal(502, message, "server_error", "remote_key_withheld")


def fleet_key_withheld(model: str, host: str) -> Refusal:
    # which variable and which _HOSTS are the operator's to read, in gateway.log
    message = f"the gateway may not send the fleet key to host `{host}`, which runs `{model}`"
    return Refusal(502, message, "server_error", "fleet_key_withheld")


def not_here(model: str, retry_after: int) -> Refusal:
    """A forwarded request for a model this host cannot serve itself."""
    message = f"the model `{model}` has no instance on this host (a forwarded request stays)"
    return Refusal(503, message, UNAVAILABLE, "model_unavailable", retry_after=retry_after)


def not_found(method: str, path: str) -> Refusal:
    return Refusal(404, f"no route for {shown(method)} {shown(path)}", INVALID, "not_found")


def forbidden() -> Refusal:
    return Refusal(403, "loopback only", FORBIDDEN, None)


def too_deep() -> Refusal:
    return Refusal(400, "malformed JSON: nested too deeply", INVALID, "invalid_json")


def bad_path() -> Refusal:
    message = "the path has dot or empty segments, escapes or characters no route uses"
    return Refusal(400, message, INVALID, "invalid_path")


def bad_header() -> Refusal:
    message = "a header the gateway forwards or checks holds non-ASCII or control characters"
    return Refusal(400, message, INVALID, "invalid_header")


def foreign_host() -> Refusal:
    message = "the Host header does not name this gateway (localhost, 127.0.0.1 or its address)"
    return Refusal(421, message, INVALID, "misdirected_request")


def cross_site() -> Refusal:
    message = "cross-site requests are refused: this gateway has no API keys"
    return Refusal(403, message, FORBIDDEN, "cross_site")


def not_json() -> Refusal:
    message = "the request needs `Content-Type: application/json`"
    return Refusal(415, message, INVALID, "unsupported_media_type")


def body_timeout(seconds: float) -> Refusal:
    message = f"the request body did not arrive within {seconds:g} s"
    return Refusal(408, message, INVALID, "request_timeout")


def over_budget(limit_mb: float, retry_after: int) -> Refusal:
    message = f"the gateway holds {limit_mb:g} MB of request bodies already: try again later"
    return Refusal(503, message, UNAVAILABLE, "gateway_busy", retry_after=retry_after)


def internal() -> Refusal:
    message = "the gateway could not handle this request (see gateway.log)"
    return Refusal(500, message, "server_error", "internal_error")
