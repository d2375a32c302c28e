"""A remote model's key goes only to a host the operator binds, and `plan` names where it goes."""

from __future__ import annotations

import pytest

from reconciler.core.cluster import ClusterSpec
from reconciler.core.secrets import SecretUse, remote_key_refusal, secret_uses
from reconciler.core.spec import ModelSpec

KEY = "RECONCILER_SECRET_OPENAI"
KEY_VALUE = "sk-very-secret-value"


def hosted(
    endpoint: str = "https://api.example.com/v1", key: str | None = KEY, mid: str = "gpt"
) -> ModelSpec:
    return ModelSpec(id=mid, framework="remote", endpoint=endpoint, api_key_env=key)


# (endpoint, environment, expected refusal: None = may send, else words the reason holds)
CASES = [
    ("https://api.example.com/v1", {KEY: KEY_VALUE, f"{KEY}_HOSTS": "api.example.com"}, None),
    # host names are case-insensitive, a trailing dot is the same host, lists are comma-separated
    ("https://API.Example.com./v1", {KEY: KEY_VALUE, f"{KEY}_HOSTS": "x.org, api.example.com"},
     None),
    ("http://10.0.0.5:8000/v1", {KEY: KEY_VALUE, f"{KEY}_HOSTS": "10.0.0.5"}, None),
    # not bound: no _HOSTS at all, another host, a parent domain of the bound host
    ("https://api.example.com/v1", {KEY: KEY_VALUE},
     f"api.example.com is not listed in {KEY}_HOSTS"),
    ("https://evil.example.net/v1", {KEY: KEY_VALUE, f"{KEY}_HOSTS": "api.example.com"},
     f"evil.example.net is not listed in {KEY}_HOSTS"),
    ("https://example.com/v1", {KEY: KEY_VALUE, f"{KEY}_HOSTS": "api.example.com"},
     f"example.com is not listed in {KEY}_HOSTS"),
    # bound but not set on this host: nothing to send
    ("https://api.example.com/v1", {f"{KEY}_HOSTS": "api.example.com"}, f"{KEY} is not set"),
]  # fmt: skip


@pytest.mark.parametrize(("endpoint", "environ", "expected"), CASES)
def test_remote_key_refusal_table(
    endpoint: str, environ: dict[str, str], expected: str | None
) -> None:
    refusal = remote_key_refusal(hosted(endpoint), environ)
    if expected is None:
        assert refusal is None
    else:
        assert refusal is not None and expected in refusal
        assert KEY_VALUE not in refusal  # the reason is logged: never the key itself


def test_a_remote_model_without_a_key_sends_none_and_is_never_refused() -> None:
    assert remote_key_refusal(hosted(key=None), {}) is None


def test_secret_uses_list_each_remote_key_with_its_host() -> None:
    models = [hosted(mid="gpt"), hosted("https://llm.office.lan:8443/v1", mid="big-box")]
    models.append(hosted(key=None, mid="open"))
    uses = secret_uses(ClusterSpec(), models=models)
    assert uses == (
        SecretUse(KEY, "llm.office.lan", 'key of remote model "big-box"'),
        SecretUse(KEY, "api.example.com", 'key of remote model "gpt"'),
    )


def test_a_review_marks_a_new_destination_of_a_key_new() -> None:
    base = [hosted(mid="gpt")]
    head = [hosted("https://collector.example.net/v1", mid="gpt")]
    uses = secret_uses(ClusterSpec(), ClusterSpec(), models=head, base_models=base)
    assert [(u.destination, u.new) for u in uses] == [("collector.example.net", True)]
    same = secret_uses(ClusterSpec(), ClusterSpec(), models=base, base_models=base)
    assert [(u.destination, u.new) for u in same] == [("api.example.com", False)]
