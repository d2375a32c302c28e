"""Every refusal the gateway answers with, in OpenAI's error JSON so that clients' retry logic
works: {"error": {"message", "type", "code"}} (and Retry-After where waiting helps)."""

from __future__ import annotations

from aiohttp import web

MODEL_HEADER = "X-Reconciler-Model"
INVALID = "invalid_request_error"
UNAVAILABLE = "service_unavailable"


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
    return Refusal(404, f"the model `{name}` does not exist", INVALID, "model_not_found")


def disabled(model: str) -> Refusal:
    return Refusal(404, f"the model `{model}` is disabled", INVALID, "model_disabled")


def unavailable(model: str, status: str, retry_after: int) -> Refusal:
    message = f"the model `{model}` is {status} and no fallback runs"
    return Refusal(503, message, UNAVAILABLE, "model_unavailable", retry_after=retry_after)


def queue_full(model: str, size: int) -> Refusal:
    return Refusal(
        429, f"the queue of `{model}` is full ({size})", "rate_limit_error", "queue_full"
    )


def queue_timeout(model: str, seconds: float, retry_after: int) -> Refusal:
    message = f"the model `{model}` did not become ready in {seconds:g} s"
    return Refusal(503, message, UNAVAILABLE, "queue_timeout", retry_after=retry_after)


def no_upstream(model: str, problem: str, retry_after: int) -> Refusal:
    message = f"no instance of `{model}` answered: {problem}"
    return Refusal(502, message, UNAVAILABLE, "upstream_unavailable", retry_after=retry_after)


def not_found(method: str, path: str) -> Refusal:
    return Refusal(404, f"no route for {method} {path}", INVALID, "not_found")


def forbidden() -> Refusal:
    return Refusal(403, "loopback only", "permission_error", None)
