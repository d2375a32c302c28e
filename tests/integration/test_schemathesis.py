"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis).

`schemathesis run` (its CLI: the interface CI users run, and one that does not depend on pytest
internals) generates requests from /openapi.json, valid and invalid, and sends them over real
HTTP to a real daemon. No response may be a server error, and every response must match what
the document says (status codes, content types, schemas). Bounded: a few dozen examples per
operation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from apply_support import stand_in
from components import missing
from daemon_support import Daemon, running_daemon

TOKEN = "schemathesis-token"
SECRET = "schemathesis-secret"
MAX_EXAMPLES = 30
TIMEOUT_S = 300
STREAM = "/api/v1/events/stream"  # endless by design: tested in test_api.py instead
# Every check that applies to a read-only API with two authenticated actions; the ones about
# resources created and deleted through the API (use_after_free...) have nothing to act on.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
)


def schemathesis_cli() -> str:
    found = Path(sys.executable).with_name("schemathesis")
    if found.exists():
        return str(found)
    on_path = shutil.which("schemathesis")
    if on_path is None:
        missing("schemathesis", "pip install -e '.[dev]'")
    return on_path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("schemathesis")
    quiet = {"health_check": {"interval_s": 60}}
    models = [
        stand_in("alpha", priority=7, **quiet),
        stand_in("huge", resource_requirements={"gpu_memory_mb": 100_000}, **quiet),
    ]
    with running_daemon(root, models, token=TOKEN, secret=SECRET) as d:
        d.wait_ready()
        d.wait_statuses({"alpha": "running"})
        yield d


def test_schemathesis_finds_no_server_error(daemon: Daemon, tmp_path: Path) -> None:
    argv = [
        schemathesis_cli(),
        "run",
        f"{daemon.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--exclude-path",
        STREAM,
        # with the token, so that the actions are exercised past authentication
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "15",
        "--workers",
        "2",
        "--seed",
        "20241125",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        # schemathesis 4.32's coverage phase sometimes crashes inside its own generator
        # (restrict() in _negative_type), failing the run with an internal error that says
        # nothing about the API; the other phases still send valid and invalid requests.
        "--phases",
        "examples,fuzzing,stateful",
        "--no-color",
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
        check=False,
    )
    report = done.stdout[-12000:] + done.stderr[-3000:]
    assert done.returncode == 0, report
    print(done.stdout[-3000:])  # the summary, for `pytest -s`
    assert daemon.json("/healthz") == {"status": "ok"}
    # the stateful phase follows links (GET /models -> POST /models/{id}/restart): alpha may
    # have been restarted, and must come back
    daemon.wait_statuses({"alpha": "running"})
