"""Supervision: notice crashed, hung and misplaced engines, count failures, stop what failed.

The decisions are the core's (reconciler.core.health: startup timeout, failure threshold,
backoff, giving up); this module observes (HTTP probes, the sockets an
engine listens on), acts (stops engines) and records (events, the model's record).

An engine that listens anywhere but its assigned address and port is stopped and left in
`error` until its spec changes or an operator restarts it: restarting would only repeat it.

Probes run beside the pass (engines.prober.Prober): a pass starts the probes that are due, all
at once, waits for them at most `probe_wait_s` (None, for one-shot `apply`: until they end),
and judges those that ended. A probe still running is not judged yet; a later pass takes its
result, and its end asks for one (`prober.on_late`). So one engine whose probe waits out a long
`timeout_s` holds up neither the pass nor the other engines' probes.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from reconciler.core import health
from reconciler.core.desired import DesiredState
from reconciler.core.events import EventKind
from reconciler.core.health import Failure, cleared, record_failure, record_permanent, record_ready
from reconciler.core.instance import InstanceRecord, Status, transition
from reconciler.core.spec import ModelSpec
from reconciler.engines import holdings
from reconciler.engines.base import Engine, EngineError, Handle
from reconciler.engines.prober import Prober
from reconciler.loop.records import Records, record_from_handle

if TYPE_CHECKING:
    import httpx  # the client comes from the caller; apply imports httpx after its launches

log = logging.getLogger("reconciler.loop.supervision")


class Supervisor:
    def __init__(
        self,
        engines: Mapping[str, Engine],
        records: Records,
        *,
        host: str,
        stop_grace_s: float,
        http: Callable[[], httpx.Client],
        jitter: Callable[[], float],
        probe_wait_s: float | None = None,
    ) -> None:
        self.engines = engines
        self.records = records
        self.host = host
        self.stop_grace_s = stop_grace_s
        self.http = http
        self.jitter = jitter
        self.probe_wait_s = probe_wait_s
        """how long a pass waits for the probes it started; None: until they end"""
        self.prober = Prober()
        self.activity: Callable[[], Mapping[int, health.Activity]] | None = None
        """the gateway's view of each engine (by port), asked when a probe times out: a busy
        engine is not a dead one (set by whoever runs a gateway)"""
        self.last_probe: dict[str, tuple[float, float]] = {}
        """model id -> (time of the last probe of its engine, the probe interval)"""
        self.starting_urls: list[str] = []
        """health URLs of the engines still starting (the next pass is due when one answers)"""

    # -- a pass ------------------------------------------------------------------------------

    def supervise(
        self,
        desired: DesiredState,
        handles: Mapping[str, list[Handle]],
        states: Mapping[str, InstanceRecord],
        now: float,
        dry_run: bool,
    ) -> dict[str, InstanceRecord]:
        """Every model's record after looking at its engines. Whatever goes wrong while looking
        at one model (a probe, a stop, psutil) is that model's error; the others go on."""
        self.starting_urls = []
        out = dict(states)
        probed: dict[str, tuple[ModelSpec, Handle]] = {}
        started: list[str] = []
        for model_id in sorted(set(handles) | set(states)):
            spec = desired.models.get(model_id)
            state = out.get(model_id) or InstanceRecord(id=model_id)
            try:
                new = self._model(
                    state, spec, handles.get(model_id, []), now, dry_run, probed, started
                )
            except Exception as exc:
                log.exception("supervising %s failed", model_id)
                new = self.fail(state, spec, Failure(f"supervision failed: {describe(exc)}"), now)
                probed.pop(model_id, None)
            if new is None:
                out.pop(model_id, None)
            else:
                out[model_id] = new
        alive = {m for m, hs in handles.items() if m in desired.models and any(h.alive for h in hs)}
        for gone in set(self.last_probe) - alive:  # its due probe would wake the loop forever
            del self.last_probe[gone]
        self.prober.keep(alive)
        # only the probes started now: one still running from before had its wait already
        self.prober.wait(started, self.probe_wait_s)
        for model_id, (spec, handle) in probed.items():
            state = out[model_id]
            try:
                out[model_id] = self._judge(state, spec, handle, now, dry_run)
            except Exception as exc:
                log.exception("judging the health of %s failed", model_id)
                failure = Failure(f"supervision failed: {describe(exc)}")
                out[model_id] = self.fail(state, spec, failure, now)
        return out

    def _model(
        self,
        state: InstanceRecord,
        spec: ModelSpec | None,
        handles: Sequence[Handle],
        now: float,
        dry_run: bool,
        probed: dict[str, tuple[ModelSpec, Handle]],
        started: list[str],
    ) -> InstanceRecord | None:
        if spec is not None and state.given_up and state.spec_hash not in (None, spec.spec_hash()):
            state = cleared(state)  # a changed spec: a new chance
        alive = [h for h in handles if h.alive]
        dead = [h for h in handles if not h.alive]
        for handle in dead:
            if not dry_run:
                self._engine(handle).stop(handle, 0)  # drops the record of an exited engine
        if not alive:
            if spec is None:  # neither desired nor running: forgotten
                return None
            if state.status == Status.stopping:  # a pass died while stopping it
                state = transition(state, Status.stopped, now, pid=None, container_id=None)
            if state.status in (Status.starting, Status.running):
                message = exit_message(dead[0]) if dead else "engine disappeared"
                logs = tuple(self._engine(dead[0]).logs(dead[0])) if dead else ()
                state = self.fail(state, spec, Failure(message, logs), now)
            return state
        handle = self._dedupe(alive, spec, dry_run)
        state = record_from_handle(state, handle, now)
        if spec is None:
            return state
        # where it listens is looked at on every pass (a few reads of /proc), not only when a
        # probe is due: a daemon woken by a misplaced socket must act on it
        wrong = self.listen_violation(handle)
        if wrong is not None:
            if dry_run:
                return state
            self._engine(handle).stop(handle, self.stop_grace_s)
            return self.errored(state, wrong, now)
        ready = state.status == Status.running
        last = self.last_probe.get(spec.id)
        if health.probe_due(
            spec.health_check, ready=ready, last_probe_at=last and last[0], now=now
        ):
            self.last_probe[spec.id] = (now, spec.health_check.interval_s)
            if self._start_probe(spec, handle):
                started.append(spec.id)
        probed[spec.id] = (spec, handle)  # a probe started earlier may have ended since
        return state

    def _start_probe(self, spec: ModelSpec, handle: Handle) -> bool:
        timeout = health.probe_timeout_s(spec.health_check)
        port, activity = handle.port, self.activity

        def busy() -> health.Activity | None:
            return activity().get(port) if activity is not None and port else None

        url = self.url(spec, handle)
        return self.prober.start(spec.id, owner(handle), url, timeout, self.http(), busy)

    def _judge(
        self, state: InstanceRecord, spec: ModelSpec, handle: Handle, now: float, dry_run: bool
    ) -> InstanceRecord:
        """What the engine's probe, if it ended, says of its health."""
        check = spec.health_check
        ready = state.status == Status.running
        result = self.prober.take(spec.id, owner(handle))
        if result is None:
            verdict = health.judge_unanswered(
                check,
                ready=ready,
                started_at=handle.started_at,
                failures=state.probe_failures,
                now=now,
            )
        else:
            if not result.ok:
                error = f"GET {self.path(spec, handle)}: {result.error}"
                result = replace(result, error=error)
            verdict = health.judge(
                check,
                result,
                ready=ready,
                started_at=handle.started_at,
                failures=state.probe_failures,
                now=now,
            )
        state = replace(state, probe_failures=verdict.failures)
        if verdict.became_ready:
            seconds = now - handle.started_at
            self.records.event(
                EventKind.ready, spec.id, f"ready after {seconds:.1f}s", seconds=seconds
            )
            return transition(record_ready(state), Status.running, now)
        if verdict.failure is None:
            if not verdict.ready:
                self.starting_urls.append(self.url(spec, handle))
                return transition(state, Status.starting, now)
            return state
        if dry_run:
            return state
        engine = self._engine(handle)
        failure = Failure(verdict.failure, tuple(engine.logs(handle)))
        engine.stop(handle, self.stop_grace_s)
        return self.fail(replace(state, probe_failures=0), spec, failure, now)

    def _dedupe(self, alive: list[Handle], spec: ModelSpec | None, dry_run: bool) -> Handle:
        """Nothing runs twice: keep the oldest engine that matches the spec, stop the others."""
        wanted = spec.spec_hash() if spec else None
        alive = sorted(alive, key=lambda h: (h.spec_hash != wanted, h.started_at))
        for extra in alive[1:]:
            message = f"stopping a duplicate engine {ident(extra)}"
            self.records.event(EventKind.duplicate, extra.model_id, message)
            if not dry_run:
                self._engine(extra).stop(extra, self.stop_grace_s)
        return alive[0]

    # -- between passes (the daemon) ---------------------------------------------------------

    def next_probe_at(self) -> float | None:
        """When the next liveness probe of a running engine is due (the daemon wakes for it)."""
        return min((last + interval for last, interval in self.last_probe.values()), default=None)

    def probe_due(
        self,
        desired: DesiredState | None,
        handles: Mapping[str, list[Handle]],
        states: Mapping[str, InstanceRecord],
        now: float,
    ) -> bool:
        """The liveness probes that are due, without a pass: True when nothing needs recording
        (the daemon then skips the pass); False as soon as one failed, listens where it must
        not, cannot be probed from what the last pass saw, or answered after failures that the
        state file still counts (a pass then takes its result and records). A probe still
        running after `probe_wait_s` is left to run: its end asks for a pass (on_late)."""
        due: list[tuple[str, ModelSpec, Handle]] = []
        for model_id, (last, interval) in sorted(self.last_probe.items()):
            if now - last < interval:
                continue
            spec = desired.models.get(model_id) if desired is not None else None
            alive = [h for h in handles.get(model_id, []) if h.alive]
            if spec is None or len(alive) != 1 or self.listen_violation(alive[0]) is not None:
                return False
            self.last_probe[model_id] = (now, interval)
            handle = alive[0]
            ended = self.prober.result(model_id, owner(handle)) is not None  # failed ones too
            if self._start_probe(spec, handle) or ended:
                due.append((model_id, spec, handle))  # started now, or ended and not judged
        self.prober.wait([model_id for model_id, _, _ in due], self.probe_wait_s)
        for model_id, spec, handle in due:
            result = self.prober.result(model_id, owner(handle))
            if result is None:
                continue
            recorded = states.get(model_id)
            if result.ok:
                if recorded is not None and recorded.probe_failures:
                    return False  # the pass takes this result and resets the count
            elif recorded is None or recorded.status != Status.running:
                return False
            elif not health.excused(spec.health_check, result):
                return False  # the pass takes this result and counts it
            self.prober.take(model_id, owner(handle))
        return True

    # -- failures ----------------------------------------------------------------------------

    def fail(
        self, state: InstanceRecord, spec: ModelSpec | None, failure: Failure, now: float
    ) -> InstanceRecord:
        """A failure that a restart may fix: count it, schedule the restart or give up."""
        if spec is None:
            return transition(state, Status.stopped, now)
        counted = record_failure(state, spec.retry_policy, failure, now, self.jitter())
        if counted.given_up:
            tries = spec.retry_policy.max_retries
            message = f"{failure.message}; gave up after {tries} restart(s)"
            self.records.event(EventKind.gave_up, spec.id, message)
        else:
            message = f"{failure.message}; restart #{counted.restarts} planned"
            self.records.event(EventKind.crashed, spec.id, message)
        return transition(counted, Status.error, now, pid=None, container_id=None)

    def errored(self, state: InstanceRecord, message: str, now: float) -> InstanceRecord:
        """A failure that retrying cannot fix: `error` at once, until the spec changes or an
        operator asks for a restart."""
        self.records.event(EventKind.error, state.id, message)
        failed = record_permanent(state, message)
        return transition(failed, Status.error, now, pid=None, container_id=None, probe_failures=0)

    def consume_restart_requests(
        self, states: dict[str, InstanceRecord], handles: Mapping[str, list[Handle]], now: float
    ) -> None:
        """Carry out operators' restart requests: stop the engine, forget that it gave up, and
        let this pass start it again."""
        for model_id in self.records.restart_requests():
            try:
                for handle in handles.get(model_id, []):
                    if handle.alive:
                        self.engines[handle.framework].stop(handle, self.stop_grace_s)
            except Exception as exc:  # left as it is; the request is answered all the same
                message = f"restart requested, but its engine could not be stopped: {describe(exc)}"
                self.records.event(EventKind.error, model_id, message)
            else:
                state = states.get(model_id)
                if state is not None:
                    fresh = cleared(state)
                    states[model_id] = transition(fresh, Status.stopped, now, probe_failures=0)
                self.records.event(
                    EventKind.restart_requested, model_id, "restart requested by an operator"
                )
                if model_id in handles:
                    handles[model_id].clear()
            self.records.restart_done(model_id)

    # -- where engines are -------------------------------------------------------------------

    def listen_violation(self, handle: Handle) -> str | None:
        return holdings.listen_violation(handle.pid, handle.create_time, self.host, handle.port)

    def path(self, spec: ModelSpec, handle: Handle) -> str:
        return self._engine(handle).health_path(spec)

    def url(self, spec: ModelSpec, handle: Handle) -> str:
        return f"http://{probe_host(self.host)}:{handle.port}{self.path(spec, handle)}"

    def _engine(self, handle: Handle) -> Engine:
        return self.engines[handle.framework]


def probe_host(host: str) -> str:
    """The address to reach an engine that listens on `host` (a wildcard: the loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def describe(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line for a model's error."""
    text = str(exc).replace("\n", " ")
    if not isinstance(exc, EngineError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exit_message(handle: Handle) -> str:
    code = handle.exit_code
    if code is None:  # only the parent learns the status: another reconciler process started it
        return "engine exited (exit status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"engine killed by {name}"
    return f"engine exited with code {code}"


def owner(handle: Handle) -> tuple[int | None, str | None, float]:
    """Which engine a probe was about: a result is never judged against its successor."""
    return handle.pid, handle.container_id, handle.started_at


def ident(handle: Handle) -> str:
    return f"pid {handle.pid}" if handle.pid else f"container {handle.container_id}"
