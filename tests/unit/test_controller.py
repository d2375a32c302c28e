"""The daemon loop's triggers (reconciler/loop/controller.py) against a stand-in reconciler.

The stand-in counts passes and can hold one open, so that the tests can see what the loop does
with triggers that arrive during a pass (they coalesce into one more pass), with a burst of file
writes (debounced into one pass), and with an engine that exits (a pass at once). The loop runs
in a real thread with real watchers (watchfiles, the pid poll); timeouts are generous and only
catch hangs.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from reconciler.loop.controller import Controller, LoopSettings

HANG_S = 30.0
"""a pass the loop owes that has not come by then is a hang"""
QUIET_S = 1.0
"""how long the loop must stay idle to show that no extra pass follows"""


@dataclass
class StandInReconciler:
    """What the controller drives: pass_once(), the last pass's engine handles, the probes."""

    desired_dir: Path
    gate: threading.Event = field(default_factory=threading.Event)
    """a pass waits for it; set = passes run straight through"""
    in_pass: threading.Event = field(default_factory=threading.Event)
    last_handles: dict[str, list[Any]] = field(default_factory=dict)
    fail_next: bool = False
    active: int = 0
    most_active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.settings = SimpleNamespace(desired_dir=self.desired_dir)
        self.gate.set()

    def pass_once(self) -> Any:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.in_pass.set()
        try:
            assert self.gate.wait(HANG_S), "a test never released the pass it held"
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("a pass that blew up")
            return SimpleNamespace(plan=SimpleNamespace(problems=()), executed=[], next_wake=None)
        finally:
            with self._lock:
                self.active -= 1

    def next_probe_at(self) -> float | None:
        return None

    def probe_due(self) -> bool:
        return True

    def event(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class Loop:
    reconciler: StandInReconciler
    controller: Controller
    passes: list[list[str]]
    """the reasons of each pass, in order (a failed pass included)"""
    changed: threading.Condition

    def wait_passes(self, count: int) -> list[list[str]]:
        with self.changed:
            done = self.changed.wait_for(lambda: len(self.passes) >= count, HANG_S)
        assert done, f"{count} passes expected within {HANG_S}s, saw {self.passes}"
        return list(self.passes)

    def settled(self) -> list[list[str]]:
        """The passes once none has come for QUIET_S."""
        while True:
            with self.changed:
                count = len(self.passes)
                if not self.changed.wait_for(lambda n=count: len(self.passes) > n, QUIET_S):
                    return list(self.passes)

    def stays_at(self, count: int) -> list[list[str]]:
        """The passes after QUIET_S more, checking that no pass beyond `count` came."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.passes) > count, QUIET_S)
        assert len(self.passes) == count, f"an extra pass: {self.passes}"
        return list(self.passes)


def run_loop(tmp_path: Path, *, hold_first: bool = False, **settings: Any) -> Iterator[Loop]:
    """The loop in a thread; `hold_first`: its first pass waits for `reconciler.gate`."""
    desired = tmp_path / "desired-state"
    (desired / "models").mkdir(parents=True, exist_ok=True)
    reconciler = StandInReconciler(desired)
    if hold_first:
        reconciler.gate.clear()
    passes: list[list[str]] = []
    changed = threading.Condition()

    def on_pass(result: Any, reasons: list[str], duration: float) -> None:
        with changed:
            passes.append(reasons)
            changed.notify_all()

    base = {"resync_s": 3600.0, "watch": False, "liveness_poll_s": 0.1}
    controller = Controller(
        reconciler,  # type: ignore[arg-type]  # a stand-in with what the loop uses
        settings=LoopSettings(**{**base, **settings}),
        on_pass=on_pass,
    )
    thread = threading.Thread(target=controller.run, name="loop-under-test", daemon=True)
    thread.start()
    try:
        yield Loop(reconciler, controller, passes, changed)
    finally:
        reconciler.gate.set()
        controller.stop()
        thread.join(HANG_S)
        assert not thread.is_alive(), "the loop did not stop"


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    yield from run_loop(tmp_path)


@pytest.fixture
def held_loop(tmp_path: Path) -> Iterator[Loop]:
    yield from run_loop(tmp_path, hold_first=True)


def test_triggers_during_a_pass_coalesce_into_one_more_pass(held_loop: Loop) -> None:
    loop = held_loop
    assert loop.reconciler.in_pass.wait(HANG_S), "the first pass never began"

    def fire(worker: int) -> None:
        for i in range(25):
            loop.controller.trigger(f"reason {(worker + i) % 3}")

    firing = [threading.Thread(target=fire, args=(w,)) for w in range(8)]
    for thread in firing:
        thread.start()
    for thread in firing:
        thread.join(HANG_S)
    loop.controller.trigger("webhook")
    loop.reconciler.gate.set()

    assert loop.wait_passes(2) == [["start"], ["reason 0", "reason 1", "reason 2", "webhook"]]
    loop.stays_at(2)
    assert loop.reconciler.most_active == 1, "passes overlapped"


def test_a_trigger_while_idle_is_never_lost(loop: Loop) -> None:
    loop.wait_passes(1)
    for count, reason in enumerate(["api", "webhook", "api"], start=2):
        loop.controller.trigger(reason)
        assert loop.wait_passes(count)[-1] == [reason]
    loop.stays_at(4)


def test_a_failed_pass_is_retried_without_a_trigger(loop: Loop) -> None:
    loop.wait_passes(1)
    loop.reconciler.fail_next = True
    loop.controller.trigger("api")
    passes = loop.wait_passes(3)
    assert passes[1:3] == [["api"], ["resync"]], "the retry came from the loop itself"
    assert loop.controller.stats.passes == 2, "the failed pass is not counted as a pass"


def test_a_burst_of_file_writes_makes_one_pass(tmp_path: Path) -> None:
    for loop in run_loop(tmp_path, watch=True, debounce_ms=400):
        loop.wait_passes(1)
        models = loop.reconciler.desired_dir / "models"
        until_watching(loop, models)
        seen = len(loop.passes)
        names = [f"m{i}.yaml" for i in range(12)]
        for name in names:  # an editor saving many files, a `git checkout`
            (models / name).write_text(f"id: {name[:-5]}\n")
        loop.wait_passes(seen + 1)
        burst = loop.settled()[seen:]
        # one pass; two only when the writer was descheduled longer than the watcher's quiet
        # step mid-burst (a loaded machine). Without debouncing it would be one per file.
        assert 1 <= len(burst) <= 2, f"{len(burst)} passes for {len(names)} files: {burst}"
        for reasons in burst:
            assert len(reasons) == 1 and reasons[0].startswith("file change: "), burst
        listed = [r[0].removeprefix("file change: ").split(", ") for r in burst]
        assert max(map(len, listed)) == 5, f"a reason names 5 of the changed files: {burst}"
        assert {name for group in listed for name in group} <= set(names)


def until_watching(loop: Loop, directory: Path) -> None:
    """Write a file until the watcher reports it (its thread may not be watching yet)."""
    for attempt in range(int(HANG_S)):
        count = len(loop.passes)
        (directory / f"warm-up-{attempt}.txt").write_text("x")
        with loop.changed:
            if loop.changed.wait_for(lambda: len(loop.passes) > count, 1.0):  # noqa: B023
                loop.stays_at(len(loop.passes))  # the warm-up's own events are over
                return
    raise AssertionError("the file watcher never reported a change")


@pytest.fixture
def engine() -> Iterator[psutil.Process]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield psutil.Process(process.pid)
    process.kill()
    process.wait(HANG_S)


class Handle:
    """An engine as a pass observes it: alive is read when the pass looks."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.create_time = process.create_time()

    @property
    def alive(self) -> bool:
        try:
            return self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def test_an_engine_that_exits_triggers_a_pass(loop: Loop, engine: psutil.Process) -> None:
    loop.wait_passes(1)
    handle = Handle(engine)
    loop.reconciler.last_handles = {"m": [handle]}
    loop.controller.trigger("api")  # after a pass, the loop watches the pids it saw
    loop.wait_passes(2)
    engine.kill()
    assert loop.wait_passes(3)[2] == [f"engine pid {engine.pid} exited"]
    loop.stays_at(3)
