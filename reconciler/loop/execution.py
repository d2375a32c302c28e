"""Carrying out a plan: stops first (so that memory and ports are free), then starts. The
engines a plan stops are drained first, all together (the gateway finishes their requests).

Each action is one model's business: whatever a stop or a start raises (an EngineError, a
ValueError from an environment the OS refuses, an OSError, anything) is recorded as that model's
`error` with the reason, and the rest of the plan goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from reconciler.core.desired import DesiredState
from reconciler.core.events import EventKind
from reconciler.core.health import Failure, waiting
from reconciler.core.instance import InstanceRecord, Status, transition
from reconciler.core.plan import Action, Plan
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Engine, EngineError, EnginePlacement, Handle
from reconciler.loop.records import Records, record_from_handle
from reconciler.loop.supervision import Supervisor, describe

log = logging.getLogger("reconciler.loop.execution")

STOPS = ("stop", "preempt", "restart")
STARTS = ("start", "restart")

FINAL_START_ERRORS: tuple[type[BaseException], ...] = (
    EngineError,
    ValueError,
    TypeError,
    OverflowError,
)
"""A start that raised one of these fails the same way next time (a missing executable, a port
in use, an environment or argv the OS refuses): `error` at once, no retries. Anything else (an
OSError such as too many open files) is retried with backoff."""


@dataclass(frozen=True)
class ActionResult:
    """What carrying out one action did to its model. Decisions read `ok`; `line` is for people
    (the daemon's log, `apply`'s output) and is empty when there is nothing to say."""

    model: str
    ok: bool
    line: str = ""

    @classmethod
    def done(cls, action: Action) -> ActionResult:
        return cls(action.model, True, f"{action.action} {action.model}: {action.reason}")

    @classmethod
    def failed(cls, model: str, message: str) -> ActionResult:
        return cls(model, False, f"error {model}: {message}")

    @classmethod
    def quiet(cls, model: str) -> ActionResult:
        """Nothing done worth a line, nothing failed."""
        return cls(model, True)


class Executor:
    def __init__(
        self,
        engines: Mapping[str, Engine],
        records: Records,
        supervisor: Supervisor,
        *,
        host: str,
        stop_grace_s: float,
    ) -> None:
        self.engines = engines
        self.records = records
        self.supervisor = supervisor
        self.host = host
        self.stop_grace_s = stop_grace_s
        self.before_stop: list[Callable[[list[Handle]], None]] = []
        """Called with the engines a plan is about to stop (preempt, restart, stop), before
        they are stopped: the gateway drains their in-flight requests there (bounded)."""

    def mark_stopping(self, plan: Plan, states: dict[str, InstanceRecord], now: float) -> bool:
        """Record `stopping` (`preempted`) before stopping anything: if this process dies
        mid-stop, the next pass sees an engine that was being stopped, not one that crashed.
        True when anything is to be stopped (the caller writes the state file first)."""
        stopping = [a for a in plan.actions if a.action in STOPS]
        for action in stopping:
            status = Status.preempted if action.action == "preempt" else Status.stopping
            state = states.get(action.model) or InstanceRecord(id=action.model)
            states[action.model] = transition(state, status, now)
        return bool(stopping)

    def execute(
        self,
        plan: Plan,
        desired: DesiredState,
        handles: Mapping[str, list[Handle]],
        states: dict[str, InstanceRecord],
        now: float,
    ) -> list[str]:
        """Carry out the plan; one human line per action done (or failed)."""
        results: list[ActionResult] = []
        failed: set[str] = set()
        # one drain for every engine this plan stops: they drain together, so the pass waits
        # for the slowest of them (at most drain_timeout_s), not for each in turn
        stopping = [a.model for a in plan.actions if a.action in STOPS]
        self._drain([h for m in stopping for h in handles.get(m, []) if h.alive])
        for action in plan.actions:
            if action.action in STOPS:
                done = self._stop(action, handles.get(action.model, []), states, now)
                if not done.ok:  # its engine may still hold the memory and port a start needs
                    failed.add(action.model)
                results.append(done)
        for action in plan.actions:
            if action.action in STARTS and action.model not in failed:
                results.append(self._start(action, desired.models[action.model], states, now))
        return [r.line for r in results if r.line]

    def set_aside(
        self,
        broken: Mapping[str, str],
        handles: Mapping[str, list[Handle]],
        states: dict[str, InstanceRecord],
        now: float,
    ) -> list[str]:
        """Models whose spec cannot be used: `error` with the reason, their engines stopped. Not
        "given up": the planner never sees them, and a fixed spec starts at once. One human
        line per model newly set aside."""
        results = [
            self._set_aside(model_id, reason, handles.get(model_id, []), states, now)
            for model_id, reason in sorted(broken.items())
        ]
        return [r.line for r in results if r.line]

    def _set_aside(
        self,
        model_id: str,
        reason: str,
        handles: list[Handle],
        states: dict[str, InstanceRecord],
        now: float,
    ) -> ActionResult:
        state = states.get(model_id) or InstanceRecord(id=model_id)
        running = [h for h in handles if h.alive]
        try:
            for handle in handles:  # an exited one: drops its record
                grace = self.stop_grace_s if handle.alive else 0
                self.engines[handle.framework].stop(handle, grace)
        except Exception as exc:
            reason = f"{reason}; could not stop its engine: {describe(exc)}"
        if not running and (state.status, state.last_error) == (Status.error, reason):
            return ActionResult.quiet(model_id)  # said already
        self.records.event(EventKind.error, model_id, reason)
        states[model_id] = transition(
            state,
            Status.error,
            now,
            pid=None,
            container_id=None,
            last_error=reason,
            given_up=False,
            next_retry_at=None,
            probe_failures=0,
        )
        return ActionResult.failed(model_id, reason)

    def _stop(
        self, action: Action, handles: list[Handle], states: dict[str, InstanceRecord], now: float
    ) -> ActionResult:
        state = states.get(action.model) or InstanceRecord(id=action.model)
        try:
            for handle in handles:
                if handle.alive:
                    self.engines[handle.framework].stop(handle, self.stop_grace_s)
        except Exception as exc:
            log.exception("stopping %s failed", action.model)
            message = f"could not stop its engine: {describe(exc)}"
            states[action.model] = self.supervisor.errored(state, message, now)
            return ActionResult.failed(action.model, message)
        status = Status.preempted if action.action == "preempt" else Status.stopped
        states[action.model] = transition(state, status, now, pid=None, container_id=None)
        if action.action == "restart":
            return ActionResult.quiet(action.model)  # the start below says it
        self.records.event(EventKind(action.action), action.model, action.reason)
        return ActionResult.done(action)

    def _drain(self, handles: list[Handle]) -> None:
        if not handles:
            return
        for hook in self.before_stop:
            try:
                hook(handles)
            except Exception:  # draining is a courtesy to clients; the stop goes on regardless
                log.exception("draining before a stop failed")

    def _start(
        self, action: Action, spec: ModelSpec, states: dict[str, InstanceRecord], now: float
    ) -> ActionResult:
        state = states.get(spec.id) or InstanceRecord(id=spec.id)
        if waiting(state, now):
            return ActionResult.quiet(spec.id)  # its backoff is not over
        engine = self.engines.get(spec.framework)
        try:
            if engine is None:
                raise EngineError(f"no {spec.framework} engine on this host")
            if action.port is None:  # the planner places every start on a port
                raise EngineError("the plan gave it no port")
            placement = EnginePlacement(
                tuple(action.gpus), action.port, action.memory_mb or 0, host=self.host
            )
            handle = engine.start(spec, placement)
        except FINAL_START_ERRORS as exc:
            if not isinstance(exc, EngineError):
                log.warning("starting %s failed", spec.id, exc_info=True)
            message = describe(exc)
            state = replace(
                self.supervisor.errored(state, message, now), spec_hash=spec.spec_hash()
            )
            states[spec.id] = state
            return ActionResult.failed(spec.id, message)
        except Exception as exc:
            log.exception("starting %s failed", spec.id)
            failure = Failure(f"could not start: {describe(exc)}")
            states[spec.id] = self.supervisor.fail(state, spec, failure, now)
            return ActionResult.failed(spec.id, failure.message)
        self.records.event(EventKind(action.action), spec.id, action.reason)
        states[spec.id] = transition(
            record_from_handle(state, handle, now),
            Status.starting,
            now,
            next_retry_at=None,
            probe_failures=0,
        )
        return ActionResult.done(action)
