"""Supervision: notice crashed, hung and misplaced engines, count failures, stop what failed.

The decisions are the core's (reconciler.core.health: startup timeout, failure threshold;
reconciler.core.retry: backoff, giving up); this module observes (HTTP probes, the sockets an
engine listens on), acts (stops engines) and records (events, the model's record).

An engine that listens anywhere but its assigned address and port is stopped and left in
`error` until its spec changes or an operator restarts it: restarting would only repeat it.
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
from reconciler.core.observed import Status
from reconciler.core.retry import Failure, cleared, record_failure, record_permanent, record_ready
from reconciler.core.spec import ModelSpec
from reconciler.engines import sockets
from reconciler.engines.base import Engine, EngineError, Handle
from reconciler.engines.health import probe
from reconciler.loop.records import Records, retry_of, state_from_handle, with_retry
from reconciler.state.statefile import ModelState

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
    ) -> None:
        self.engines = engines
        self.records = records
        self.host = host
        self.stop_grace_s = stop_grace_s
        self.http = http
        self.jitter = jitter
        self.last_probe: dict[str, tuple[float, float]] = {}
        """model id -> (time of the last probe of its engine, the probe interval)"""
        self.starting_urls: list[str] = []
        """health URLs of the engines still starting (the next pass is due when one answers)"""

    # -- a pass ------------------------------------------------------------------------------

    def supervise(
        self,
        desired: DesiredState,
        handles: Mapping[str, list[Handle]],
        states: Mapping[str, ModelState],
        now: float,
        dry_run: bool,
    ) -> dict[str, ModelState]:
        """Every model's record after looking at its engines. Whatever goes wrong while looking
        at one model (a probe, a stop, psutil) is that model's error; the others go on."""
        self.starting_urls = []
        out = dict(states)
        for model_id in sorted(set(handles) | set(states)):
            spec = desired.models.get(model_id)
            state = out.get(model_id) or ModelState(id=model_id)
            try:
                new = self._model(state, spec, handles.get(model_id, []), now, dry_run)
            except Exception as exc:
                log.exception("supervising %s failed", model_id)
                new = self.fail(state, spec, Failure(f"supervision failed: {describe(exc)}"), now)
            if new is None:
                out.pop(model_id, None)
            else:
                out[model_id] = new
        probed = {
            m for m, hs in handles.items() if m in desired.models and any(h.alive for h in hs)
        }
        for gone in set(self.last_probe) - probed:  # its due probe would wake the loop forever
            del self.last_probe[gone]
        return out

    def _model(
        self,
        state: ModelState,
        spec: ModelSpec | None,
        handles: Sequence[Handle],
        now: float,
        dry_run: bool,
    ) -> ModelState | None:
        if spec is not None and state.given_up and state.spec_hash not in (None, spec.spec_hash()):
            state = with_retry(state, cleared(retry_of(state)))  # a changed spec: a new chance
        alive = [h for h in handles if h.alive]
        dead = [h for h in handles if not h.alive]
        for handle in dead:
            if not dry_run:
                self._engine(handle).stop(handle, 0)  # drops the record of an exited engine
        if not alive:
            if spec is None:  # neither desired nor running: forgotten
                return None
            if state.status == Status.stopping:  # a pass died while stopping it
                state = replace(state, status=Status.stopped, pid=None, container_id=None)
            if state.status in (Status.starting, Status.running):
                message = exit_message(dead[0]) if dead else "engine disappeared"
                logs = tuple(self._engine(dead[0]).logs(dead[0])) if dead else ()
                state = self.fail(state, spec, Failure(message, logs), now)
            return state
        handle = self._dedupe(alive, spec, dry_run)
        state = state_from_handle(state, handle)
        if spec is None:
            return state
        return self._check(state, spec, handle, now, dry_run)

    def _check(
        self, state: ModelState, spec: ModelSpec, handle: Handle, now: float, dry_run: bool
    ) -> ModelState:
        # where it listens is looked at on every pass (a few reads of /proc), not only when a
        # probe is due: a daemon woken by a misplaced socket must act on it
        wrong = self.listen_violation(handle)
        if wrong is not None:
            if dry_run:
                return state
            self._engine(handle).stop(handle, self.stop_grace_s)
            return self.errored(state, wrong, now)
        check = spec.health_check
        ready = state.status == Status.running
        last = self.last_probe.get(spec.id)
        if not health.probe_due(check, ready=ready, last_probe_at=last and last[0], now=now):
            return state
        self.last_probe[spec.id] = (now, check.interval_s)
        url = self.url(spec, handle)
        result = probe(url, health.probe_timeout_s(check), client=self.http())
        if not result.ok:
            result = health.ProbeResult(False, f"GET {self.path(spec, handle)}: {result.error}")
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
            state = with_retry(replace(state, status=Status.running), record_ready(retry_of(state)))
            return replace(state, last_transition=now)
        if verdict.failure is None:
            if not verdict.ready:
                self.starting_urls.append(url)
                return replace(state, status=Status.starting)
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
        states: Mapping[str, ModelState],
        now: float,
    ) -> bool:
        """The liveness probes that are due, without a pass: True when every one answered and
        nothing needs recording (the daemon then skips the pass); False as soon as one did not,
        listens where it must not, cannot be probed from what the last pass saw, or answered
        after failures that the state file still counts (a pass then probes and records)."""
        for model_id, (last, interval) in sorted(self.last_probe.items()):
            if now - last < interval:
                continue
            spec = desired.models.get(model_id) if desired is not None else None
            alive = [h for h in handles.get(model_id, []) if h.alive]
            if spec is None or len(alive) != 1 or self.listen_violation(alive[0]) is not None:
                return False
            timeout = health.probe_timeout_s(spec.health_check)
            if not probe(self.url(spec, alive[0]), timeout, client=self.http()):
                return False
            recorded = states.get(model_id)
            if recorded is not None and recorded.probe_failures:
                return False
            self.last_probe[model_id] = (now, interval)
        return True

    # -- failures ----------------------------------------------------------------------------

    def fail(
        self, state: ModelState, spec: ModelSpec | None, failure: Failure, now: float
    ) -> ModelState:
        """A failure that a restart may fix: count it, schedule the restart or give up."""
        if spec is None:
            return replace(state, status=Status.stopped, last_transition=now)
        retry = record_failure(retry_of(state), spec.retry_policy, failure, now, self.jitter())
        if retry.given_up:
            tries = spec.retry_policy.max_retries
            message = f"{failure.message}; gave up after {tries} restart(s)"
            self.records.event(EventKind.gave_up, spec.id, message)
        else:
            message = f"{failure.message}; restart #{retry.restarts} planned"
            self.records.event(EventKind.crashed, spec.id, message)
        state = replace(state, status=Status.error, pid=None, container_id=None)
        return replace(with_retry(state, retry), last_transition=now)

    def errored(self, state: ModelState, message: str, now: float) -> ModelState:
        """A failure that retrying cannot fix: `error` at once, until the spec changes or an
        operator asks for a restart."""
        self.records.event(EventKind.error, state.id, message)
        retry = record_permanent(retry_of(state), message)
        state = replace(state, status=Status.error, pid=None, container_id=None, probe_failures=0)
        return replace(with_retry(state, retry), last_transition=now)

    # -- where engines are -------------------------------------------------------------------

    def listen_violation(self, handle: Handle) -> str | None:
        return sockets.check(handle.pid, handle.create_time, self.host, handle.port)

    def path(self, spec: ModelSpec, handle: Handle) -> str:
        engine = self._engine(handle)
        own = getattr(engine, "health_path", None)
        return own(spec) if callable(own) else spec.health_check.path

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


def ident(handle: Handle) -> str:
    return f"pid {handle.pid}" if handle.pid else f"container {handle.container_id}"
