"""The GitOps loop under chaos: random commits (valid and invalid), engines and the daemon killed.

Each round does one or two things at random:
- a valid commit: a random desired state of up to four stand-in models (present or not, enabled
  or not, engine flags, priority); everything enabled fits the two simulated GPUs, so what must
  run is exactly the enabled models of the revision in force;
- an invalid commit (a typo'd field, broken YAML, a duplicate id, an unknown fallback, a pin to a
  GPU that does not exist) that also changes other models: none of it may be applied;
- SIGKILL of an engine (the daemon restarts it);
- SIGKILL of the daemon, often right after a commit (mid-pass), restarted at once or only after
  the next commit; or a clean SIGTERM and restart.

After each round the host must settle (polled, generous timeout) to:
- the state file parses and records the revision in force: HEAD when HEAD is valid; when HEAD is
  invalid, a valid commit no older than the one in force at the last settle, and HEAD's problems;
- what runs is exactly that revision's enabled models: one engine process per model, with the
  revision's spec hash and the pid the state file names, no engine for any other model id.
Every few rounds (and at the end) the daemon is stopped and `reconciler plan --rev REV --format
json` against the same state directory must be empty: the host is converged for that revision.

Two modes: `remote` (`run --repo`, commits pushed to a bare repository) and `local`
(`run DIR --committed-only`, commits made in the working tree). The seed is printed;
RECONCILER_TEST_SEED=N reproduces a run, CHAOS_ROUNDS=N changes its length (default 30 per mode).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from apply_support import Host, managed_host, stand_in
from components import random_seed
from gitops_support import (
    Observation,
    RunProcess,
    Site,
    engines,
    kill_engine,
    local_site,
    read_state_quietly,
    remote_site,
    spec_hash,
    wait_until,
)

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "30"))
MODELS = ("m1", "m2", "m3", "m4")
GPUS = [{"index": 0, "memory_mb": 4000}, {"index": 1, "memory_mb": 4000}]
MEMORY_MB = 1500
"""Two per GPU at most, four in all: every enabled model always fits."""
PLAN_EVERY = 10
SETTLE_S = 90.0
DEATHS = ("engine killed by", "engine exited", "engine disappeared")
"""how a crashed event begins when the engine died (supervision.exit_message); anything else
(a failed probe, a startup timeout) is a live engine declared dead"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path / "site") as host:
        host.write_cluster(GPUS)
        yield host


def model(model_id: str, rng: random.Random) -> dict[str, Any]:
    return stand_in(
        model_id,
        priority=rng.randint(1, 9),  # alone, restarts nothing
        enabled=rng.random() < 0.85,
        parameters={"max-model-len": rng.choice([1024, 2048])},
        env={"FAKE_VLLM_STARTUP_S": rng.choice(["0", "0.3"])},  # a window to be killed in
        resource_requirements={"gpu_memory_mb": MEMORY_MB},
        retry_policy={"max_retries": 10, "backoff_s": 0.2, "max_backoff_s": 1},
    )


@dataclass
class Chaos:
    host: Host
    site: Site
    mode: str
    rng: random.Random
    seed: int
    run: RunProcess | None = None
    valid: dict[str, dict[str, str]] = field(default_factory=dict)
    """valid commit sha -> what must run at it (model id -> spec hash)"""
    order: list[str] = field(default_factory=list)
    """valid commits, oldest first"""
    head_invalid: bool = False
    in_force: str | None = None
    """the revision recorded at the last settle"""
    engine_kills: int = 0
    daemon_kills: int = 0
    invalid_commits: int = 0
    killed: list[tuple[float, str]] = field(default_factory=list)
    """(wall-clock time, model) of every engine this test killed"""
    daemon_killed: list[float] = field(default_factory=list)
    """wall-clock times this test SIGKILLed the daemon"""

    # desired state

    def write(self, specs: dict[str, dict[str, Any]]) -> None:
        models = self.host.desired / "models"
        for path in models.glob("*.yaml"):
            path.unlink()
        for spec in specs.values():
            self.host.write_model(spec)

    def commit(self, message: str) -> str:
        return self.site.commit(message, push=self.mode == "remote")

    def valid_commit(self) -> str:
        specs = {m: model(m, self.rng) for m in MODELS if self.rng.random() < 0.7}
        self.write(specs)
        sha = self.commit(f"valid: {sorted(specs)}")
        self.valid[sha] = {m: spec_hash(s) for m, s in specs.items() if s["enabled"]}
        self.order.append(sha)
        self.head_invalid = False
        return f"valid commit {sha[:8]} running {sorted(self.valid[sha])}"

    def invalid_commit(self) -> str:
        specs = {m: model(m, self.rng) for m in MODELS if self.rng.random() < 0.7}
        specs.setdefault("m1", model("m1", self.rng))
        self.write(specs)
        kind = self.rng.choice(["typo", "yaml", "duplicate", "fallback", "pin"])
        path = self.host.desired / "models" / "m1.yaml"
        if kind == "typo":
            path.write_text(path.read_text().replace('"priority"', '"priorty"'))
        elif kind == "yaml":
            path.write_text(path.read_text() + "  broken: [\n")
        elif kind == "duplicate":
            (self.host.desired / "models" / "m1-copy.yaml").write_text(path.read_text())
        elif kind == "fallback":
            self.host.write_model({**specs["m1"], "fallback": "nowhere"})
        else:
            self.host.write_model({**specs["m1"], "gpu_devices": [7]})
        self.commit(f"invalid ({kind})")
        self.head_invalid = True
        self.invalid_commits += 1
        return f"invalid commit ({kind})"

    # processes

    def start_daemon(self) -> None:
        if self.mode == "remote":
            args = ("--repo", self.site.url, "--branch", "main", "--path", "desired-state")
        else:
            args = (str(self.host.desired), "--committed-only")
        args += ("--no-api", "--resync", "5", "--poll", "1")
        self.run = RunProcess(self.host, args).start()

    def kill_daemon(self) -> str:
        assert self.run is not None
        delay = self.rng.uniform(0, 1.5)
        time.sleep(delay)  # often mid-pass: right after a commit, a pass is running
        self.daemon_killed.append(time.time())
        self.run.kill()
        self.daemon_kills += 1
        read_state_quietly(self.host)  # parses (or is absent): a torn file raises
        return f"daemon SIGKILLed after {delay:.2f}s"

    def stop_daemon(self) -> int | None:
        assert self.run is not None
        self.run.wait_first_pass()  # a SIGTERM while Python imports is the default action
        code = self.run.stop(signal.SIGTERM)
        assert code == 0, f"{self.where}: exit {code} on SIGTERM\n{self.run.log()}"
        return code

    def kill_an_engine(self) -> str:
        found = engines(self.host)
        if not found:
            return "no engine to kill"
        model_id = self.rng.choice(sorted(found))
        self.killed.append((time.time(), model_id))
        kill_engine(found[model_id][0].pid)
        self.engine_kills += 1
        return f"engine {model_id} SIGKILLed"

    # checks

    @property
    def where(self) -> str:
        return f"seed {self.seed} ({self.mode})"

    def settled(self, seen: Observation) -> bool:
        state = seen.state
        if state is None or state.revision not in self.valid:
            return False
        if self.head_invalid:
            if not state.problems:
                return False
            allowed = self.order[self.order.index(self.in_force) :] if self.in_force else []
            if state.revision not in allowed:
                return False
        elif state.revision != self.order[-1] or state.problems:
            return False
        return not state.revision_dirty and seen.running(self.valid[state.revision])

    def settle(self, round_: int) -> Observation:
        seen = wait_until(
            self.host,
            self.settled,
            f"{self.where} round {round_}: the revision in force running exactly",
            self.run,
            timeout_s=SETTLE_S,
        )
        assert seen.state is not None
        self.in_force = seen.state.revision
        return seen

    def plan_is_empty(self, round_: int) -> None:
        """With the daemon stopped: the plan of the revision in force changes nothing."""
        self.stop_daemon()
        assert self.in_force is not None
        done = self.host.cli(
            "plan", str(self.host.desired), "--rev", self.in_force, "--format", "json"
        )
        assert done.returncode == 0, f"{self.where} round {round_}: {done}"
        plan = json.loads(done.stdout)
        assert plan["valid"] and plan["actions"] == [], f"{self.where} round {round_}: {plan}"
        self.start_daemon()


def unexplained_crashes(
    crashed: list[dict[str, Any]], killed: list[tuple[float, str]], daemon_killed: list[float]
) -> list[dict[str, Any]]:
    """The crashed events that no kill of this test explains.

    A kill of a model's engine explains the first crash of that model recorded after it. The
    crash event is appended when a pass sees the death, the state file is written at the end
    of that pass: a daemon SIGKILLed in between leaves a state file that still says "running",
    and the next daemon finds the engine gone ("engine disappeared"): the same death recorded
    twice, explained by that daemon kill. A crash whose message is not a death (a probe that
    failed, a start that timed out) is never explained: that is a live engine declared dead.
    """
    pending = sorted(killed)
    last_crash: dict[str, float] = {}
    unexplained = []
    for event in sorted(crashed, key=lambda e: e["time"]):
        model_id, at, message = event["model"], event["time"], event["message"]
        cause = next((k for k in pending if k[1] == model_id and k[0] <= at), None)
        since = last_crash.get(model_id)
        again = since is not None and any(since <= t <= at for t in daemon_killed)
        if not message.startswith(DEATHS):
            unexplained.append(event)
        elif cause is not None:
            pending.remove(cause)
        elif not (message.startswith("engine disappeared") and again):
            unexplained.append(event)
        last_crash[model_id] = at
    return unexplained


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["remote", "local"])
def test_the_loop_survives_random_commits_and_kills(host: Host, mode: str) -> None:
    seed = random_seed(f"chaos, {mode}, {ROUNDS} rounds")
    rng = random.Random(seed)
    site = remote_site(host) if mode == "remote" else local_site(host)
    chaos = Chaos(host, site, mode, rng, seed)
    chaos.valid[site.head()] = {}
    chaos.order.append(site.head())
    chaos.valid_commit()
    chaos.start_daemon()
    began = time.monotonic()
    try:
        chaos.settle(0)
        for round_ in range(1, ROUNDS + 1):
            done = []
            ops = rng.choices(
                ["valid", "invalid", "engine", "daemon", "restart"],
                weights=[4, 2, 2, 2, 1],
                k=rng.choice([1, 2]),
            )
            down = False
            for op in ops:
                if op == "valid":
                    done.append(chaos.valid_commit())
                elif op == "invalid":
                    done.append(chaos.invalid_commit())
                elif op == "engine":
                    done.append(chaos.kill_an_engine())
                elif op == "daemon" and not down:
                    done.append(chaos.kill_daemon())
                    down = rng.random() < 0.5  # stays down until the round's next step
                    if not down:
                        chaos.start_daemon()
                elif op == "restart" and not down:
                    chaos.stop_daemon()
                    chaos.start_daemon()
                    done.append("daemon restarted (SIGTERM)")
            if down:
                chaos.start_daemon()
                done.append("daemon started again")
            seen = chaos.settle(round_)
            print(f"round {round_:2}: {'; '.join(done)} -> {seen.state.revision[:8]} {seen.pids()}")
            if round_ % PLAN_EVERY == 0 or round_ == ROUNDS:
                chaos.plan_is_empty(round_)
                chaos.settle(round_)
    finally:
        if chaos.run is not None and chaos.run.alive():
            chaos.stop_daemon()
    took = time.monotonic() - began
    print(
        f"{ROUNDS} rounds in {took:.0f}s: {chaos.invalid_commits} invalid commits, "
        f"{chaos.engine_kills} engine kills, {chaos.daemon_kills} daemon kills"
    )
    where = chaos.where
    assert host.events("duplicate") == [], f"{where}: an engine was started twice"
    assert host.events("gave-up") == [], f"{where}: {host.events('gave-up')}"
    crashed = host.events("crashed")
    print(f"{len(crashed)} crashed events: {[(e['model'], e['message']) for e in crashed]}")
    unexplained = unexplained_crashes(crashed, chaos.killed, chaos.daemon_killed)
    assert unexplained == [], f"{where}: crashes nobody caused: {unexplained}"
