"""`reconciler run DIR` (local mode) follows a git working tree while it runs.

The daemon runs as a user starts it (a subprocess, `--no-api`, quick resyncs) against a real git
repository holding desired-state/, with stand-in vLLM engines on a simulated GPU. What is checked
is what an operator notices: which engine processes run (their pids and the spec hash each
carries), the daemon's own pid, the state file (revision, dirty mark) and the event log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apply_support import Host, managed_host, stand_in
from gitops_support import (
    RunProcess,
    Site,
    actions_since,
    daemon_running,
    engines,
    events_since,
    local_site,
    observe,
    passes_during,
    spec_hash,
    wait_actions,
    wait_running,
    wait_until,
)

QUICK = ("--no-api", "--resync", "5")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path / "site") as host:
        host.write_cluster([{"index": 0, "memory_mb": 8000}, {"index": 1, "memory_mb": 8000}])
        yield host


def setup(host: Host, *args: str) -> tuple[Site, dict[str, dict], tuple[str, ...]]:
    """alpha and beta committed; the arguments of `run` for this directory."""
    specs = {"alpha": stand_in("alpha"), "beta": stand_in("beta")}
    for spec in specs.values():
        host.write_model(spec)
    site = local_site(host)
    return site, specs, (str(host.desired), *QUICK, *args)


def hashes(specs: dict[str, dict]) -> dict[str, str]:
    return {model_id: spec_hash(spec) for model_id, spec in specs.items()}


def test_an_edit_is_applied_without_restarting_the_daemon(host: Host) -> None:
    site, specs, args = setup(host)
    with daemon_running(host, *args) as run:
        first = wait_running(host, hashes(specs), run)
        assert first.state is not None
        assert (first.state.revision, first.state.revision_dirty) == (site.head(), False)
        before, seen = first.pids(), len(host.events())

        # an uncommitted edit of alpha's engine flags
        specs["alpha"] = stand_in("alpha", parameters={"max-model-len": 2048})
        host.write_model(specs["alpha"])
        edited = wait_running(host, hashes(specs), run)

        assert run.alive(), "the daemon restarted or died"
        assert edited.pids()["beta"] == before["beta"], "an unrelated engine was restarted"
        assert edited.pids()["alpha"] != before["alpha"], "alpha's engine was not replaced"
        wait_actions(host, seen, [("restart", "alpha")], run)
        assert edited.state is not None
        assert (edited.state.revision, edited.state.revision_dirty) == (site.head(), True)
        wait_until(host, lambda _: events_since(host, seen, "applied"), "the applied event", run)
        (applied,) = events_since(host, seen, "applied")
        assert applied["revision"] == site.head() and applied["dirty"] is True
        assert "uncommitted" in applied["message"] and "alpha" in applied["message"]

        # committing what already runs records the commit and restarts nothing
        seen = len(host.events())
        head = site.commit("alpha: longer context")
        committed = wait_until(
            host,
            lambda o: o.state and (o.state.revision, o.state.revision_dirty) == (head, False),
            "the new commit recorded, not dirty",
            run,
        )
        assert committed.pids() == edited.pids(), "a commit of the running spec restarted engines"
        assert actions_since(host, seen) == []
        wait_until(host, lambda _: events_since(host, seen, "applied"), "the applied event", run)
        assert [e["revision"] for e in events_since(host, seen, "applied")] == [head]


def test_commits_that_add_change_and_remove_models_are_applied(host: Host) -> None:
    site, specs, args = setup(host)
    with daemon_running(host, *args) as run:
        beta = wait_running(host, hashes(specs), run).pids()["beta"]

        steps = [
            ("add gamma", lambda: specs.update(gamma=stand_in("gamma", priority=8))),
            (
                "gamma: more context",
                lambda: specs.update(gamma=stand_in("gamma", parameters={"max-model-len": 4096})),
            ),
            ("remove gamma", lambda: specs.pop("gamma")),
        ]
        for message, change in steps:
            seen = len(host.events())
            gamma_before = engines(host).get("gamma")
            change()
            if "gamma" in specs:
                host.write_model(specs["gamma"])
            else:
                host.remove_model("gamma")
            head = site.commit(message)
            now = wait_until(
                host,
                lambda o, head=head: (
                    o.running(hashes(specs))
                    and o.state is not None
                    and (o.state.revision, o.state.revision_dirty) == (head, False)
                ),
                f"{message}: applied at {head[:12]}",
                run,
            )
            assert now.pids()["beta"] == beta, f"{message}: beta was restarted"
            expected = {
                "add gamma": [("start", "gamma")],
                "gamma: more context": [("restart", "gamma")],
                "remove gamma": [("stop", "gamma")],
            }[message]
            wait_actions(host, seen, expected, run)
            if gamma_before and "gamma" in specs:
                assert now.pids()["gamma"] != gamma_before[0].pid
        assert run.alive()
        assert host.events("crashed") == [] and host.events("duplicate") == []


def test_committed_only_ignores_uncommitted_edits(host: Host) -> None:
    site, specs, args = setup(host, "--committed-only")
    with daemon_running(host, *args) as run:
        first = wait_running(host, hashes(specs), run)
        head, seen = site.head(), len(host.events())

        changed = {
            **specs,
            "alpha": stand_in("alpha", parameters={"max-model-len": 512}),
            "gamma": stand_in("gamma"),
        }
        host.write_model(changed["alpha"])
        host.write_model(changed["gamma"])
        edited_at = time.time()
        # a pass that began well after the edit has read the directory (the file change
        # triggers one; the resync every 5 s another)
        later = wait_until(
            host,
            lambda o: o.state and o.state.applied_at and o.state.applied_at > edited_at + 2,
            "a pass after the edit",
            run,
        )
        assert later.running(hashes(specs)), later.describe()
        assert later.pids() == first.pids()
        assert later.state is not None
        assert (later.state.revision, later.state.revision_dirty) == (head, False)
        assert actions_since(host, seen) == []

        # the commit moves HEAD: now it is applied
        new_head = site.commit("alpha shorter, gamma added")
        now = wait_until(
            host,
            lambda o: (
                o.running(hashes(changed))
                and o.state is not None
                and (o.state.revision, o.state.revision_dirty) == (new_head, False)
            ),
            "the commit applied",
            run,
        )
        assert now.pids()["beta"] == first.pids()["beta"]
        wait_actions(host, seen, [("restart", "alpha"), ("start", "gamma")], run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_daemon_leaves_engines_running_and_the_next_adopts_them(
    host: Host, sig: signal.Signals
) -> None:
    _, specs, args = setup(host)
    run = RunProcess(host, args).start()
    try:
        pids = wait_running(host, hashes(specs), run).pids()
    finally:
        code = run.stop(sig)
    assert code == 0, f"exit code {code} on {sig.name}\n{run.log()}"

    left = observe(host)
    assert left.pids() == pids, f"engines changed when the daemon stopped: {left.describe()}"
    for model_id in specs:  # still serving
        port = host.model(model_id).port
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200

    seen = len(host.events())
    with daemon_running(host, *args) as again:
        again.wait_first_pass()
        adopted = wait_running(host, hashes(specs), again)
        assert adopted.pids() == pids, "the new daemon did not adopt the engines"
        assert actions_since(host, seen) == [], "the new daemon started or stopped engines"


def test_stop_engines_on_exit_stops_them(host: Host) -> None:
    _, specs, args = setup(host, "--stop-engines-on-exit")
    run = RunProcess(host, args).start()
    try:
        pids = wait_running(host, hashes(specs), run).pids()
    finally:
        code = run.stop(signal.SIGTERM)
    assert code == 0, f"exit code {code}\n{run.log()}"
    assert engines(host) == {}, f"engines survived: {engines(host)}"
    stops = {e["model"] for e in host.events("stop")}
    assert stops == set(specs)
    assert all(host.model(m).status == "stopped" for m in specs), host.statuses()
    assert set(pids) == set(specs)


def test_the_loop_sleeps_between_deadlines_after_a_model_is_removed(host: Host) -> None:
    """A removed model's liveness deadline must not keep waking the loop (it once made passes
    back to back, a core busy on an idle host)."""
    site, specs, _ = setup(host)  # health probes every second
    with daemon_running(host, str(host.desired), "--no-api", "--resync", "30") as run:
        wait_running(host, hashes(specs), run)
        seen = len(host.events())
        host.remove_model("beta")
        del specs["beta"]
        head = site.commit("remove beta")
        wait_until(
            host,
            lambda o: o.running(hashes(specs)) and o.state and o.state.revision == head,
            "beta removed",
            run,
        )
        wait_actions(host, seen, [("stop", "beta")], run)
        # Only a failed probe makes a pass here (resync is 30 s), and probes are 1 s apart, so
        # even a machine loaded enough to fail every probe makes at most one pass a second; the
        # bug this guards against made passes back to back (hundreds in the window).
        window_s = 4.0
        passes = passes_during(host, window_s)
        assert passes <= window_s + 2, f"{passes} passes in {window_s} s on an idle host"
        assert wait_running(host, hashes(specs), run)


def test_a_hung_engine_is_found_by_liveness_probes_and_restarted(host: Host) -> None:
    """Probes run between passes; one that fails makes a pass, which counts the failures."""
    probes = {"interval_s": 1, "timeout_s": 1, "failure_threshold": 2}
    specs = {"alpha": stand_in("alpha", health_check=probes), "beta": stand_in("beta")}
    for spec in specs.values():
        host.write_model(spec)
    local_site(host)
    with daemon_running(host, str(host.desired), "--no-api", "--resync", "60") as run:
        before = wait_running(host, hashes(specs), run).pids()
        seen = len(host.events())
        os.kill(before["alpha"], signal.SIGSTOP)  # alive, but answers nothing
        try:
            now = wait_until(
                host,
                lambda o: o.running(hashes(specs)) and o.pids()["alpha"] != before["alpha"],
                "alpha restarted",
                run,
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(before["alpha"], signal.SIGCONT)
        assert now.pids()["beta"] == before["beta"]
        (crash,) = events_since(host, seen, "crashed")
        assert crash["model"] == "alpha" and "unhealthy" in crash["message"], crash
