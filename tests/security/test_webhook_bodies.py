"""Issue 14, case 5a: a signed webhook body the JSON parser chokes on is a 400, never a 500.

First release: a correctly signed push event of deeply nested JSON raised RecursionError in the
handler, a 500. Whoever knows the webhook secret may send anything; the daemon answers 400,
starts no pass, and goes on serving. Malformed JSON, non-objects, bad signatures and huge bodies
were already handled: tests/integration/test_api.py (test_a_signed_malformed_body_is_400,
test_a_bad_signature_is_401_and_does_nothing, test_a_huge_body_is_413_and_the_daemon_lives_on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apply_support import stand_in, wait_for
from daemon_support import Daemon, running_daemon, sign

SECRET = "webhook-secret-for-tests"
DEPTH = 100_000
QUIET_ALPHA = stand_in("alpha", health_check={"interval_s": 3600})  # no liveness passes


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root: Path = tmp_path_factory.mktemp("webhook-site")
    with running_daemon(root, [QUIET_ALPHA], token="t0ken", secret=SECRET) as daemon:
        daemon.wait_ready(60)
        daemon.wait_statuses({"alpha": "running"}, timeout_s=60)
        yield daemon


def post_signed(daemon: Daemon, body: bytes) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={sign(SECRET, body)}",
    }
    return httpx.post(daemon.url + "/api/v1/hooks/git", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEPTH + b"]" * DEPTH,
        b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
        b'{"ref": "refs/heads/main", "commits": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        b'{"ref": "refs/heads/main", "after": ' + b"9" * 5000 + b"}",
    ],
    ids=["nested-arrays", "nested-objects", "nested-in-a-push", "huge-int"],
)
def test_a_signed_body_the_parser_chokes_on_is_400(daemon: Daemon, body: bytes) -> None:
    passes = quiet(daemon)
    response = post_signed(daemon, body)
    assert response.status_code == 400, response.text[:300]
    assert daemon.json("/healthz") == {"status": "ok"}
    assert quiet(daemon) == passes  # no pass was triggered
    assert daemon.statuses()["alpha"] == "running"


def quiet(daemon: Daemon, seconds: float = 0.5) -> int:
    """The pass count, once `seconds` went by without a pass."""
    assert wait_for(lambda: daemon.passes() == daemon.passes(), 10), "the loop never rests"
    before = daemon.passes()
    time.sleep(seconds)
    assert daemon.passes() == before, daemon.log()
    return before
