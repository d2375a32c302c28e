"""The gateway's client checks (reconciler.gateway.clients) as plain values: what passes is a path
that means the same to every engine behind, and nothing a browser sends past a keyless gateway."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from reconciler.gateway.clients import Guard, host_name, is_json, path_problem, unforwardable

TARGET_CHARS = st.sampled_from(list("/.%2eEfF5cC0dDaA\\?#;=&vx1 \r\n\x00\u20ac"))


@given(st.text(TARGET_CHARS, max_size=24).map(lambda tail: "/v1/" + tail))
def test_a_path_that_passes_is_already_normal_and_means_the_same_decoded(target: str) -> None:
    """Never raises; what passes has no dot or empty segment, and no escape or character that an
    engine (or a proxy in front of it) could decode or normalise into another path."""
    path = target.partition("?")[0]
    if path_problem(target) is None:
        assert posixpath.normpath(path) == path
        assert unquote(path) == path and "\\" not in path
        assert all(32 < ord(c) < 127 for c in target)


def test_the_issue_s_paths_are_refused_and_the_openai_ones_pass() -> None:
    refused = ["/v1/../../admin", "/v1/%2e%2e/admin", "/v1//chat", "/v1/a%2fb", "//v1/models"]
    refused += ["http://x/v1/models", "/v1/./x", "/v1/x\\..\\y", "/v1/x?a=\r\n"]
    assert all(path_problem(p) is not None for p in refused)
    passing = ["/", "/v1/chat/completions", "/v1/models", "/metrics", "/v1/x?api-version=2%2B1"]
    assert all(path_problem(p) is None for p in passing)


def test_host_names_with_and_without_port() -> None:
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == "::1"
    assert host_name("127.0.0.1.") == "127.0.0.1"
    assert host_name("::1") == "::1"


def test_a_keyless_gateway_refuses_what_a_web_page_sends() -> None:
    guard = Guard("127.0.0.1")
    assert guard.browser_problem("127.0.0.1:8000", None, None) is None
    assert guard.browser_problem("localhost", "http://localhost:3000", "same-site") is None
    assert guard.browser_problem("attacker.example:8000", None, None).status == 421
    assert guard.browser_problem(None, None, None).status == 421
    assert guard.browser_problem("localhost", "http://attacker.example", None).status == 403
    assert guard.browser_problem("localhost", "null", None).status == 403
    assert guard.browser_problem("localhost", None, "cross-site").status == 403
    assert guard.browser_problem("localhost", "http://localhost.attacker.example", None)
    assert Guard("10.0.0.5").browser_problem("10.0.0.5:8000", "https://10.0.0.5", None) is None


def test_content_types_and_forwarded_headers() -> None:
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    assert not is_json(None) and not is_json("text/plain") and not is_json("application/jsonx")
    assert unforwardable(["application/json", "*/*"]) is None
    assert unforwardable(["application/json; x=\u20ac"]).status == 400
    assert unforwardable(["text/\udc80"]).status == 400
