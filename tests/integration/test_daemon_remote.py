"""`reconciler run --repo URL --branch main --path desired-state` follows a git remote.

The remote is a bare repository in tmp_path (the git server); an operator works in a clone of it
(the host's root) and pushes. The daemon keeps its own clone under its state directory, fetches
every second (`--poll 1`) and fast-forwards only. Engines are stand-in vLLM processes on a
simulated GPU; what is checked is what an operator notices: the engine processes (pids, spec
hashes), the state file (revision, problems with file:line), the event log and the daemon log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apply_support import Host, managed_host, stand_in
from daemon_support import free_port, push_body, sign
from gitops_support import (
    Observation,
    RunProcess,
    Site,
    actions_since,
    daemon_running,
    events_since,
    remote_site,
    spec_hash,
    wait_actions,
    wait_until,
)

POLL_S = 1.0
APPLY_WITHIN_S = 60.0
"""a push not applied by then is a hang (it takes about POLL_S; a loaded machine is slower)"""
"""A pushed commit shows within a couple of poll intervals when idle; a loaded 2-core machine
gets a generous margin (the waits poll and return as soon as it shows)."""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path / "site") as host:
        host.write_cluster([{"index": 0, "memory_mb": 8000}, {"index": 1, "memory_mb": 8000}])
        yield host


def follow(site: Site, *extra: str) -> tuple[str, ...]:
    return (
        "--repo",
        site.url,
        "--branch",
        "main",
        "--path",
        "desired-state",
        "--no-api",
        "--resync",
        "5",
        "--poll",
        f"{POLL_S:g}",
        *extra,
    )


def hashes(specs: dict[str, dict]) -> dict[str, str]:
    return {model_id: spec_hash(spec) for model_id, spec in specs.items()}


def applied_at(host: Host, specs: dict[str, dict], sha: str, run: RunProcess, **kw) -> Observation:
    """Exactly `specs` run and the state file records `sha`, without problems."""
    return wait_until(
        host,
        lambda o: (
            o.running(hashes(specs))
            and o.state is not None
            and (o.state.revision, o.state.problems) == (sha, [])
        ),
        f"{sorted(specs)} running at {sha[:12]}",
        run,
        **kw,
    )


def two_models(host: Host) -> tuple[Site, dict[str, dict]]:
    specs = {"alpha": stand_in("alpha"), "beta": stand_in("beta")}
    for spec in specs.values():
        host.write_model(spec)
    return remote_site(host), specs


def test_pushed_commits_that_add_change_and_remove_models_are_applied(host: Host) -> None:
    site, specs = two_models(host)
    with daemon_running(host, *follow(site)) as run:
        first = applied_at(host, specs, site.head(), run)
        beta = first.pids()["beta"]
        steps = [
            ("add gamma", lambda: specs.update(gamma=stand_in("gamma")), [("start", "gamma")]),
            (
                "gamma: more context",
                lambda: specs.update(gamma=stand_in("gamma", parameters={"max-model-len": 4096})),
                [("restart", "gamma")],
            ),
            ("remove gamma", lambda: specs.pop("gamma"), [("stop", "gamma")]),
        ]
        for message, change, expected in steps:
            seen = len(host.events())
            change()
            if "gamma" in specs:
                host.write_model(specs["gamma"])
            else:
                host.remove_model("gamma")
            pushed_at = time.monotonic()
            head = site.commit(message, push=True)
            now = applied_at(host, specs, head, run, timeout_s=APPLY_WITHIN_S)
            took = time.monotonic() - pushed_at
            print(f"{message}: applied {took:.2f}s after the push")
            assert now.pids()["beta"] == beta, f"{message}: beta was restarted"
            wait_actions(host, seen, expected, run)
            wait_until(
                host, lambda _, seen=seen: events_since(host, seen, "applied"), "applied", run
            )
            assert [e["revision"] for e in events_since(host, seen, "applied")] == [head]
        assert run.alive()


def test_an_invalid_push_changes_nothing_and_the_next_good_one_applies(host: Host) -> None:
    site, specs = two_models(host)
    with daemon_running(host, *follow(site)) as run:
        good = site.head()
        before = applied_at(host, specs, good, run).pids()
        seen = len(host.events())

        # one commit: beta removed, alpha changed, and a new model with a typo (line 5)
        host.remove_model("beta")
        host.write_model(stand_in("alpha", parameters={"max-model-len": 512}))
        typo = (host.desired / "models" / "gamma.yaml").resolve()
        typo.write_text(
            "id: gamma\nframework: vllm\nmodel_path: test/gamma\n"
            "resource_requirements: {gpu_count: 1, gpu_memory_mb: 1000}\npriorty: 5\n"
        )
        bad = site.commit("gamma (with a typo), alpha shorter, beta gone", push=True)
        seen_bad = wait_until(
            host, lambda o: o.state and o.state.problems, "the problems recorded", run
        )
        assert seen_bad.state is not None
        problems = seen_bad.state.problems
        assert [(p["file"], p["line"], p["field"]) for p in problems] == [
            ("desired-state/models/gamma.yaml", 5, "priorty")
        ], problems
        assert seen_bad.state.revision == good, "the rejected commit is recorded as applied"
        # it stays so: later passes (resyncs, probes) change nothing either
        marked = time.time()
        later = wait_until(
            host,
            lambda o: o.state and o.state.applied_at and o.state.applied_at > marked + 1,
            "a later pass",
            run,
        )
        assert later.running(hashes(specs)) and later.pids() == before, later.describe()
        assert actions_since(host, seen) == []
        assert [e["kind"] for e in events_since(host, seen, "desired-invalid")] == [
            "desired-invalid"
        ], "reported once"
        assert "gamma.yaml:5" in run.log() and "priorty" in run.log()
        assert site.remote_head() == bad

        # the fix is the next commit: everything it says is applied
        typo.unlink()
        specs = {
            "alpha": stand_in("alpha", parameters={"max-model-len": 512}),
            "gamma": stand_in("gamma"),
        }
        host.write_model(specs["gamma"])
        fixed = site.commit("gamma fixed", push=True)
        now = applied_at(host, specs, fixed, run, timeout_s=APPLY_WITHIN_S)
        assert now.pids()["alpha"] != before["alpha"]
        wait_actions(host, seen, [("restart", "alpha"), ("start", "gamma"), ("stop", "beta")], run)


def test_a_force_push_is_refused_unless_allowed(host: Host) -> None:
    site, specs = two_models(host)
    base = site.head()
    host.write_model(stand_in("gamma"))
    with_gamma = {**specs, "gamma": stand_in("gamma")}
    applied = site.commit("add gamma", push=True)
    with daemon_running(host, *follow(site)) as run:
        before = applied_at(host, with_gamma, applied, run).pids()
        seen = len(host.events())

        # history rewritten: gamma's commit replaced by one that changes alpha instead
        site.reset_hard(base)
        rewritten_specs = {**specs, "alpha": stand_in("alpha", parameters={"max-model-len": 512})}
        host.write_model(rewritten_specs["alpha"])
        rewritten = site.commit("alpha shorter (rewritten history)")
        site.push(force=True)

        refused = wait_until(
            host, lambda o: events_since(host, seen, "remote-refused"), "the refusal", run
        )
        (event,) = events_since(host, seen, "remote-refused")
        assert event["revision"] == rewritten and "force-push" in event["message"]
        assert "force-push" in run.log()
        marked = time.time()
        later = wait_until(
            host,
            lambda o: o.state and o.state.applied_at and o.state.applied_at > marked + 1,
            "a later pass",
            run,
        )
        assert later.running(hashes(with_gamma)) and later.pids() == before, refused.describe()
        assert later.state is not None and later.state.revision == applied
        assert actions_since(host, seen) == []
        assert len(events_since(host, seen, "remote-refused")) == 1, "reported once"

    # an operator accepts the rewritten branch
    seen = len(host.events())
    with daemon_running(host, *follow(site, "--allow-force-push")) as run:
        now = applied_at(host, rewritten_specs, rewritten, run)
        assert now.pids()["beta"] == before["beta"]
        wait_actions(host, seen, [("restart", "alpha"), ("stop", "gamma")], run)
        assert [e["revision"] for e in events_since(host, seen, "remote-forced")] == [rewritten]


def test_rollback_pushed_from_an_operators_clone_restores_the_earlier_engines(
    host: Host,
) -> None:
    site, specs = two_models(host)
    good = site.head()
    with daemon_running(host, *follow(site)) as run:
        before = applied_at(host, specs, good, run).pids()

        host.remove_model("beta")
        host.write_model(stand_in("alpha", parameters={"max-model-len": 512}))
        host.write_model(stand_in("gamma"))
        changed = {
            "alpha": stand_in("alpha", parameters={"max-model-len": 512}),
            "gamma": stand_in("gamma"),
        }
        bad_idea = site.commit("shorter alpha, gamma instead of beta", push=True)
        applied_at(host, changed, bad_idea, run)
        seen = len(host.events())

        # the operator's laptop: commit the old desired state and push; apply nothing there
        rolled = host.cli("rollback", good[:12], str(host.desired), "--push", "--no-apply")
        assert rolled.returncode == 0, str(rolled)
        new_head = site.remote_head()
        assert new_head not in (good, bad_idea), "rollback made no new commit on the remote"
        assert site.repo.commit(new_head).parents[0].hexsha == bad_idea, "history rewritten"
        assert (
            site.repo.commit(new_head).tree["desired-state"]
            == site.repo.commit(good).tree["desired-state"]
        )

        now = applied_at(host, specs, new_head, run, timeout_s=APPLY_WITHIN_S)
        assert now.pids()["alpha"] != before["alpha"]
        wait_actions(host, seen, [("restart", "alpha"), ("start", "beta"), ("stop", "gamma")], run)


def test_a_signed_webhook_fetches_at_once(host: Host) -> None:
    """With a poll interval of an hour, only the webhook can bring a push in quickly."""
    secret = "hook-secret-5e1d"
    site, specs = two_models(host)
    port = free_port()
    args = [a for a in follow(site) if a != "--no-api"]
    args[args.index("--poll") + 1] = "3600"
    env = {"RECONCILER_WEBHOOK_SECRET": secret}
    with daemon_running(host, *args, "--listen", f"127.0.0.1:{port}", env=env) as run:
        applied_at(host, specs, site.head(), run)
        specs["gamma"] = stand_in("gamma")
        host.write_model(specs["gamma"])
        head = site.commit("add gamma", push=True)
        body = push_body("main", head)
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/hooks/git",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": "sha256=" + sign(secret, body),
            },
            timeout=10,
        )
        assert response.status_code == 202, response.text
        applied_at(host, specs, head, run, timeout_s=APPLY_WITHIN_S)
