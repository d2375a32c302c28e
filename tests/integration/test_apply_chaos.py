"""`reconciler apply` killed with SIGKILL at random moments of a pass, then run again.

Each round changes the desired state at random (models appear, disappear, change a parameter,
a high-priority model comes and goes and preempts), starts `apply` in the background, kills it
after a random delay (often mid-pass: starting, stopping, writing the state file), checks what
a crash may leave behind, and runs `apply` again. Whatever the moment of the kill:

- the state file parses (it is written atomically);
- no model ever has two engine processes, and no engine is left without a desired model;
- the next apply converges: every desired model runs (or waits, preempted), exactly once, with
  the pid the state file names, and a killed reconciler is never mistaken for a crashed engine.

The seed comes from RECONCILER_TEST_SEED when set and is printed (and in every assertion
message), so a failure can be replayed; CHAOS_ROUNDS=N changes the run's length. How many rounds
end in a kill depends on the machine's speed, so the test asserts what must hold after every
round, not a count of kills.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apply_support import Host, managed_host, stand_in

from reconciler.core.instance import Status
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.state.directory import STATE_FILE
from reconciler.state.reading import read_state

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "20"))
SMALL = ("m1", "m2", "m3")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        yield host


def small(model_id: str, max_model_len: int = 1024) -> dict:
    return stand_in(
        model_id,
        parameters={"max-model-len": max_model_len},
        env={"FAKE_VLLM_STARTUP_S": "0.3"},  # a starting window to be killed in
        resource_requirements={"gpu_memory_mb": 1500},
    )


def desired_at_random(host: Host, rng: random.Random) -> set[str]:
    """Write a random desired state; the ids it asks for."""
    for path in (host.desired / "models").glob("*.yaml"):
        path.unlink()
    wanted = set()
    for model_id in SMALL:
        if rng.random() < 0.75:
            host.write_model(small(model_id, rng.choice([1024, 2048])))
            wanted.add(model_id)
    if rng.random() < 0.3:  # needs a whole GPU: preempts the small models placed there
        host.write_model(stand_in("big", priority=9, resource_requirements={"gpu_memory_mb": 3500}))
        wanted.add("big")
    return wanted


def kill_at_random_moment(
    host: Host,
    apply: subprocess.Popen[str],
    rng: random.Random,
    full_apply_s: float,
    events_before: int,
) -> str | None:
    """SIGKILL `apply`: half the time at a random moment of its life, half the time soon after
    its first action (stops, starts, state writes follow each other there). None when it
    finished first."""
    began = time.monotonic()
    if rng.random() < 0.5:
        delay = rng.uniform(0.15, full_apply_s)
        what = f"after {delay:.2f}s"
    else:
        while len(host.events()) == events_before and apply.poll() is None:
            if time.monotonic() - began > 2 * full_apply_s + 5:
                break  # nothing to do this round: kill whenever
            time.sleep(0.01)
        extra = rng.uniform(0, 0.4)
        delay = time.monotonic() - began + extra
        what = f"{extra:.2f}s after its first action ({delay:.2f}s)"
    try:
        apply.wait(timeout=max(0.0, began + delay - time.monotonic()))
        return None
    except subprocess.TimeoutExpired:
        apply.send_signal(signal.SIGKILL)
        apply.wait(timeout=10)
        return what


def check_after_kill(host: Host, where: str) -> None:
    read_state(host.state_dir / STATE_FILE)  # parses (or is absent): raises when corrupt
    duplicates = {m: pids for m, pids in host.engines().items() if len(pids) > 1}
    assert not duplicates, f"{where}: models with two engines after the kill: {duplicates}"


def check_converged(host: Host, wanted: set[str], where: str) -> None:
    plan = Reconciler(Settings(host.desired, host.state_dir)).pass_once(dry_run=True).plan
    assert plan.actions == (), f"{where}: not converged, the next pass would do {plan.actions}"
    state = host.state().models
    engines = host.engines()
    running = {m for m, s in state.items() if s.status == Status.running}
    waiting = {m for m, s in state.items() if s.status == Status.preempted}
    unplaced = {m for m, _ in plan.unschedulable}
    assert running | waiting | unplaced == wanted, f"{where}: statuses {host.statuses()}"
    assert set(state) <= wanted, f"{where}: state file lists {sorted(state)}"
    assert set(engines) == running, f"{where}: engines {engines}, state {host.statuses()}"
    for model_id in running:
        assert engines[model_id] == [state[model_id].pid], f"{where}: {model_id} {engines}"


@pytest.mark.slow
def test_apply_killed_at_random_moments_always_recovers(host: Host, seed: int) -> None:
    print(f"chaos: {ROUNDS} rounds")
    rng = random.Random(seed)
    host.write_cluster(
        [{"index": 0, "memory_mb": 4000}, {"index": 1, "memory_mb": 4000}],
    )
    # how long an apply that starts every model takes here: kills are drawn up to that (the CLI
    # spends the first ~0.5 s importing, then passes start, probe, stop and write the state)
    for model_id in SMALL:
        host.write_model(small(model_id))
    full_apply_s = host.apply().seconds
    check_converged(host, set(SMALL), f"seed {seed}, first apply")
    print(f"an apply that starts {len(SMALL)} engines takes {full_apply_s:.2f}s here")
    killed = 0
    for round_ in range(1, ROUNDS + 1):
        where = f"seed {seed}, round {round_}"
        wanted = desired_at_random(host, rng)
        events_before = len(host.events())
        apply = host.spawn_apply()
        moment = kill_at_random_moment(host, apply, rng, full_apply_s, events_before)
        output = apply.stdout.read() if apply.stdout else ""
        if apply.stdout:
            apply.stdout.close()
        killed += moment is not None
        done = len(host.events()) - events_before
        fate = f"killed {moment}" if moment else "finished first"
        print(f"round {round_:2}: wants {sorted(wanted)}; {fate}; {done} event(s) recorded")
        assert moment or apply.returncode == 0, f"{where}: {output}"
        check_after_kill(host, where)

        host.apply()
        check_converged(host, wanted, where)

    print(f"{killed} of {ROUNDS} rounds killed apply mid-way")
    final = host.apply()
    assert "nothing to do" in final.stdout, final
    assert host.events("crashed") == [], f"seed {seed}: a killed reconciler looked like a crash"
    assert host.events("duplicate") == [], f"seed {seed}: an engine was started twice"
