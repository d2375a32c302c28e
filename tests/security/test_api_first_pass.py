"""The API never answers with what it does not know: until the daemon of this run has published
its first pass, the routes that show the loop's view answer 503 with Retry-After, and /readyz
says not ready; /healthz stays a liveness probe.

The first pass is held back by something real: the daemon follows a git remote served over
plain HTTP (git's "dumb" protocol: the bare repository's files), and that server does not answer
until the test lets it. The daemon's API is up meanwhile, as it is while a real clone is slow,
beside the bulletin an earlier run left (a restarted daemon).
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from apply_support import managed_host, stand_in
from daemon_support import Daemon, free_port, git, init_repo

from reconciler.loop.bulletin import Bulletin, publish
from reconciler.state.directory import BULLETIN_FILE

QUIET = {"health_check": {"interval_s": 3600}}
HOLD_S = 120.0
"""the longest the git server holds a request (the test releases it long before)"""
LOOP_VIEWS = (
    "/api/v1/status",
    "/api/v1/models",
    "/api/v1/models/alpha",
    "/api/v1/gpus",
    "/api/v1/plan",
)


class HeldGitServer:
    """A bare repository served as static files over HTTP, each request held until release()."""

    def __init__(self, repository: Path) -> None:
        self.released = threading.Event()
        self.asked = threading.Event()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.asked.set()
                server.released.wait(HOLD_S)
                super().do_GET()

            def log_message(self, *_args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(repository))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HeldGitServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Daemon, HeldGitServer]]:
    with managed_host(tmp_path / "site") as host:
        host.write_model(stand_in("alpha", **QUIET))
        init_repo(host)
        bare = tmp_path / "remote.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(host.root), str(bare)], check=True)
        git(bare, "update-server-info")  # what a dumb-HTTP client reads first
        # a daemon restarted on this host: the earlier run's bulletin is still there, and is not
        # this run's first pass
        host.state_dir.mkdir(mode=0o700)
        earlier = Bulletin(run_id="an-earlier-run", pid=1, passes=42, last_pass_at=1.0)
        publish(host.state_dir / BULLETIN_FILE, earlier)
        with HeldGitServer(bare) as server:
            args = ("--repo", server.url, "--path", "desired-state", "--resync", "3600")
            daemon = Daemon(host, free_port(), None, None, extra_args=args)
            try:
                daemon.start()  # returns once /healthz answers: before any pass
                yield daemon, server
            finally:
                server.released.set()
                daemon.stop()


def test_the_loops_views_answer_503_with_retry_after_until_the_first_pass(
    held: tuple[Daemon, HeldGitServer],
) -> None:
    daemon, server = held
    assert server.asked.wait(60), f"the daemon never asked the git server\n{daemon.log()}"
    # the clone is held: no pass can have finished
    assert daemon.get("/healthz").status_code == 200  # alive, if not ready
    ready = daemon.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"ready": False, "passes": 0}
    for path in LOOP_VIEWS:
        r = daemon.get(path)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert int(r.headers["retry-after"]) >= 1, path
        assert r.headers["content-type"] == "application/json", path
        assert "first pass" in r.json()["detail"], (path, r.text)
    # events do not come from the loop's view: the log is there from the start
    assert daemon.get("/api/v1/events").status_code == 200

    server.released.set()
    daemon.wait_ready(60)
    assert daemon.json("/readyz")["ready"] is True
    models = daemon.json("/api/v1/models")
    assert [m["id"] for m in models] == ["alpha"]
    for path in LOOP_VIEWS:
        assert daemon.get(path).status_code == 200, path
    daemon.wait_statuses({"alpha": "running"}, 60)
