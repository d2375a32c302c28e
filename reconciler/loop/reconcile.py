"""One reconcile pass: load -> validate -> observe -> plan -> apply -> record.

Level-triggered: a pass recomputes everything from the desired state and from what the engines
really are (processes and containers, found afresh every pass); the state file only carries what
cannot be observed (restart counts, backoff, the last error) and is rebuilt when it is corrupt.
`converge()` repeats passes until nothing is pending: that is `reconciler apply`; the daemon
(controller.py) runs passes on triggers instead.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from reconciler.core.desired import DesiredState
from reconciler.core.observed import ObservedModel, Status
from reconciler.core.plan import Plan, invalid_plan
from reconciler.core.problems import Problem
from reconciler.core.retry import (
    Failure,
    RetryState,
    cleared,
    record_failure,
    record_permanent,
    record_ready,
    waiting,
)
from reconciler.core.spec import ClusterSpec, ModelSpec
from reconciler.core.validate import validate
from reconciler.engines.base import Engine, EngineError, EnginePlacement, Handle
from reconciler.engines.health import probe
from reconciler.gpus import InventoryError
from reconciler.loop.planning import Requirements, plan_desired
from reconciler.source.git import SourceError
from reconciler.source.load import LoadError, load_directory, load_revision
from reconciler.state.paths import (
    EVENTS_FILE,
    LAST_VALID_FILE,
    RESTART_REQUESTS,
    STATE_FILE,
    namespace_for,
)
from reconciler.state.statefile import (
    CorruptState,
    ModelState,
    State,
    read_state,
    read_state_or_recover,
    write_state,
)

log = logging.getLogger("reconciler.loop.reconcile")


@dataclass
class Settings:
    desired_dir: Path
    state_dir: Path
    rev: str | None = None
    """read desired state from this git revision instead of the working tree"""
    stop_grace_s: float = 10.0
    source: Any = None
    """a git source (reconciler.source.git.LocalSource / RemoteSource): what to load, and the
    revision to record; None = a LocalSource over desired_dir (works outside git too)"""


@dataclass
class PassResult:
    plan: Plan
    executed: list[str] = field(default_factory=list)
    """human lines, one per action carried out"""
    settled: bool = True
    """nothing is starting and no retry is scheduled"""
    next_wake: float | None = None
    """when a pass should run again without a trigger (a retry or a readiness probe is due)"""
    starting_urls: tuple[str, ...] = ()
    """health URLs of the engines still starting: the next pass is due as soon as one answers"""


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        engines: Mapping[str, Engine] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from reconciler.engines.registry import engines as default_engines

        self.settings = settings
        self.state_dir = settings.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace_for(self.state_dir)
        self.engines = dict(engines or default_engines(self.state_dir, self.namespace))
        self.clock = clock
        self.requirements = Requirements()
        self._probe_failures: dict[str, int] = {}
        self._last_probe: dict[str, tuple[float, float]] = {}
        """model id -> (time of the last liveness probe of a running engine, its interval)"""
        self._starting_urls: list[str] = []
        self._dry_run = False
        self._unschedulable: set[str] = set()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """called with every event, after it is written (metrics, notifications, SSE)"""
        self.last_handles: dict[str, list[Handle]] = {}
        """what the last pass observed: the daemon watches these pids for exits"""
        self.last_revision: Any = None
        self.last_desired: DesiredState | None = None
        """the desired state in force after the last pass (the last valid one when invalid)"""
        self.last_state: State | None = None
        """the state file as this process last wrote it (read back without parsing it)"""
        self._written: tuple[int, int, int] | None = None
        self._http: httpx.Client | None = None

    # -- desired state -----------------------------------------------------------------------

    def load_desired(self) -> tuple[DesiredState | None, list[Problem]]:
        """The desired state to apply, and the problems found; None when invalid."""
        from reconciler.core.flags import KNOWN_PARAMETERS
        from reconciler.models import files as modelfiles

        directory = self.settings.desired_dir
        try:
            if self.settings.rev:
                raw = load_revision(directory, self.settings.rev)
                self.last_revision = None
            else:
                source = self._source()
                raw = source.load() if source is not None else load_directory(directory)
                self.last_revision = _revision_of(source)
        except (LoadError, SourceError) as exc:
            return None, [Problem(str(directory), 1, "", str(exc))]
        result = validate(
            raw, path_check=modelfiles.missing_message, known_parameters=KNOWN_PARAMETERS
        )
        return result.desired, result.problems

    def _source(self) -> Any:
        if self.settings.source is None:
            from reconciler.source.git import LocalSource

            try:
                self.settings.source = LocalSource(self.settings.desired_dir)
            except SourceError:
                return None
        return self.settings.source

    def _last_valid(self) -> DesiredState | None:
        path = self.state_dir / LAST_VALID_FILE
        try:
            doc = json.loads(path.read_text())
            models = {m["id"]: ModelSpec.model_validate(m) for m in doc["models"]}
            return DesiredState(models, ClusterSpec.model_validate(doc["cluster"]), doc["revision"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remember_valid(self, desired: DesiredState) -> None:
        doc = {
            "revision": desired.revision,
            "cluster": desired.cluster.model_dump(mode="json"),
            "models": [m.model_dump(mode="json") for m in desired.models.values()],
        }
        _atomic_write(self.state_dir / LAST_VALID_FILE, json.dumps(doc, indent=1, sort_keys=True))

    # -- observation -------------------------------------------------------------------------

    def observe(self) -> dict[str, list[Handle]]:
        """Every engine of ours that exists now, alive or exited, by model id."""
        found: dict[str, list[Handle]] = {}
        for engine in self.engines.values():
            for handle in engine.observe():
                found.setdefault(handle.model_id, []).append(handle)
        return found

    # -- the pass ----------------------------------------------------------------------------

    def pass_once(self, *, dry_run: bool = False) -> PassResult:
        """One pass. A dry run (`plan`, `apply --dry-run`, the API's plan) computes the same plan
        but changes nothing: no engine is touched, no file written or moved, no event logged."""
        now = self.clock()
        self._starting_urls = []
        self._dry_run = dry_run
        try:
            return self._pass(now, dry_run)
        finally:
            self._dry_run = False

    def _pass(self, now: float, dry_run: bool) -> PassResult:
        previous, corrupt = self._read_previous()
        if corrupt:
            self.event("state-rebuilt", None, f"state file was unreadable ({corrupt}); rebuilt")
        states = dict(previous.models) if previous else {}
        desired, problems = self.load_desired()
        invalid = desired is None
        if desired is None:
            desired = self._last_valid()
            if previous is None or previous.problems != [p.to_dict() for p in problems]:
                self.event("desired-invalid", None, f"{len(problems)} problem(s); nothing changed")
        elif not dry_run:
            self._remember_valid(desired)
        handles = self.observe()
        self.last_handles = handles
        self.last_desired = desired
        if not dry_run:
            self._consume_restart_requests(states, handles)
        if desired is None:  # invalid, and never valid before: only watch what runs
            plan = invalid_plan(None, problems)
            self._write(states, None, problems, now)
            return PassResult(plan)
        states = self._supervise(desired, handles, states, now, dry_run)
        observed = self._observed(states, handles, desired)
        pids = [h.pid for hs in handles.values() for h in hs if h.pid]
        try:
            plan = plan_desired(
                desired, observed, problems, managed_pids=pids, requirements=self.requirements
            )
        except InventoryError as exc:
            problems = [*problems, Problem("cluster.yaml", 1, "gpus", str(exc))]
            self._write(states, desired.revision, problems, now)
            return PassResult(invalid_plan(desired.revision, problems))
        if invalid:
            plan = replace(plan, valid=False)
        if dry_run:
            return PassResult(plan)
        revision, dirty = self._recorded_revision(desired, previous, invalid)
        kept_problems = problems if invalid else []
        self._mark_stopping(plan, states, revision, kept_problems, now, dirty)
        executed = self._execute(plan, desired, handles, states, now)
        self._write(states, revision, kept_problems, now, dirty)
        if not invalid:
            self._note_applied(previous, revision, dirty)
        self._note_unschedulable(plan)
        return self._result(plan, executed, states, desired, now)

    def _read_previous(self) -> tuple[State | None, str | None]:
        """The state file as the last pass left it: from memory while the file is still the one
        this process wrote (parsing the YAML costs more than the rest of an idle pass), from
        disk when anything else replaced it (`stop-all`, an `apply` beside the daemon)."""
        path = self.state_dir / STATE_FILE
        if self.last_state is not None and _file_signature(path) == self._written:
            return self.last_state, None
        if self._dry_run:  # moving a corrupt file aside is the loop's job, not a preview's
            try:
                return read_state(path), None
            except CorruptState:
                return None, None
        return read_state_or_recover(path)

    def _recorded_revision(
        self, desired: DesiredState, previous: State | None, invalid: bool
    ) -> tuple[str | None, bool]:
        """The commit the applied desired state comes from, and whether uncommitted edits to it
        were applied too (the "dirty" mark). A rejected (invalid) revision is not applied: the
        revision in force stays recorded, as the last pass wrote it."""
        if invalid:
            if previous is not None:
                return previous.revision, previous.revision_dirty
            return desired.revision, False
        rev = self.last_revision
        if rev is None or self.settings.rev:
            return desired.revision, False
        return getattr(rev, "sha", None), bool(getattr(rev, "dirty", False))

    def _note_applied(self, previous: State | None, revision: str | None, dirty: bool) -> None:
        """One `applied` event per new revision (history marks it; notifications recover)."""
        was_invalid = previous is not None and bool(previous.problems)
        same = previous is not None and (previous.revision, previous.revision_dirty) == (
            revision,
            dirty,
        )
        if same and not was_invalid:
            return
        label = (revision or "working tree")[:12] + (" (with uncommitted edits)" if dirty else "")
        summary = getattr(self.last_revision, "dirty_summary", "") if dirty else ""
        message = f"applied {label}" + (f": {summary}" if summary else "")
        self.event("applied", None, message, revision=revision, dirty=dirty)

    def _note_unschedulable(self, plan: Plan) -> None:
        now_unschedulable = {u.model: u.reason for u in plan.unschedulable}
        for model_id in sorted(set(now_unschedulable) - self._unschedulable):
            self.event("unschedulable", model_id, now_unschedulable[model_id])
        self._unschedulable = set(now_unschedulable)

    def next_probe_at(self) -> float | None:
        """When the next liveness probe of a running engine is due (the daemon wakes for it)."""
        due = [last + interval for last, interval in self._last_probe.values()]
        return min(due, default=None)

    def probe_due(self) -> bool:
        """The liveness probes that are due, without a pass: True when every one answered
        (nothing changes, so the daemon skips the pass); False as soon as one did not, or one
        cannot be probed from what the last pass saw (a pass then probes and decides)."""
        desired, now = self.last_desired, self.clock()
        for model_id, (last, interval) in sorted(self._last_probe.items()):
            if now - last < interval:
                continue
            spec = desired.models.get(model_id) if desired is not None else None
            alive = [h for h in self.last_handles.get(model_id, []) if h.alive]
            if spec is None or len(alive) != 1:
                return False
            url = f"http://127.0.0.1:{alive[0].port}{self._health_path(spec, alive[0])}"
            timeout = min(spec.health_check.timeout_s, 2.0)
            if not probe(url, timeout, client=self.http_client()):
                return False
            self._last_probe[model_id] = (now, interval)
            self._probe_failures.pop(model_id, None)
        return True

    def _supervise(
        self,
        desired: DesiredState,
        handles: Mapping[str, list[Handle]],
        states: dict[str, ModelState],
        now: float,
        dry_run: bool,
    ) -> dict[str, ModelState]:
        """Probe engines, notice crashes and hangs, count failures; stop what failed."""
        out = dict(states)
        for model_id in sorted(set(handles) | set(states)):
            spec = desired.models.get(model_id)
            state = out.get(model_id) or ModelState(id=model_id, status=Status.stopped)
            changed = spec is not None and state.spec_hash not in (None, spec.spec_hash())
            if changed and state.given_up:  # a changed spec is a new chance
                state = _with_retry(state, cleared(_retry(state)))
            alive = [h for h in handles.get(model_id, []) if h.alive]
            dead = [h for h in handles.get(model_id, []) if not h.alive]
            for handle in dead:
                if not dry_run:
                    self._engine(handle).stop(handle, 0)  # drops the record of an exited engine
            if not alive:
                if spec is None:  # neither desired nor running: forgotten
                    out.pop(model_id, None)
                    continue
                if state.status == Status.stopping:  # a pass died while stopping it
                    state = replace(state, status=Status.stopped, pid=None, container_id=None)
                if state.status in (Status.starting, Status.running):
                    message = _exit_message(dead[0]) if dead else "engine disappeared"
                    logs = tuple(self._engine(dead[0]).logs(dead[0])) if dead else ()
                    state = self._fail(state, spec, Failure(message, logs), now)
                out[model_id] = state
                continue
            handle = self._dedupe(alive, spec, dry_run)
            state = _from_handle(state, handle)
            if spec is None:
                out[model_id] = state
                continue
            state = self._check_health(state, spec, handle, now, dry_run)
            out[model_id] = state
        probed = {
            m for m, hs in handles.items() if m in desired.models and any(h.alive for h in hs)
        }
        for gone in set(self._last_probe) - probed:  # its due probe would wake the loop forever
            del self._last_probe[gone]
            self._probe_failures.pop(gone, None)
        return out

    def _check_health(
        self, state: ModelState, spec: ModelSpec, handle: Handle, now: float, dry_run: bool
    ) -> ModelState:
        hc = spec.health_check
        engine = self._engine(handle)
        path = self._health_path(spec, handle)
        url = f"http://127.0.0.1:{handle.port}{path}"
        last = self._last_probe.get(spec.id)
        if state.status == Status.running and last and now - last[0] < hc.interval_s:
            return state  # liveness is probed every interval_s, however often passes run
        healthy = probe(url, min(hc.timeout_s, 2.0), client=self.http_client())
        self._last_probe[spec.id] = (now, hc.interval_s)
        if healthy:
            self._probe_failures.pop(spec.id, None)
            if state.status != Status.running:
                seconds = now - handle.started_at
                self.event("ready", spec.id, f"ready after {seconds:.1f}s", seconds=seconds)
                state = _with_retry(
                    replace(state, status=Status.running), record_ready(_retry(state))
                )
                state = replace(state, last_transition=now)
            return state
        if state.status != Status.running:
            if now - handle.started_at <= hc.startup_timeout_s:
                self._starting_urls.append(url)
                return replace(state, status=Status.starting)
            failure = Failure(f"not ready within {hc.startup_timeout_s:g}s")
        else:
            misses = self._probe_failures.get(spec.id, 0) + 1
            self._probe_failures[spec.id] = misses
            if misses < hc.failure_threshold:
                return state
            failure = Failure(f"unhealthy: {misses} failed health checks on {path}")
        self._probe_failures.pop(spec.id, None)
        if dry_run:
            return state
        failure = Failure(failure.message, tuple(engine.logs(handle)))
        engine.stop(handle, self.settings.stop_grace_s)
        return self._fail(state, spec, failure, now)

    def _health_path(self, spec: ModelSpec, handle: Handle) -> str:
        engine = self._engine(handle)
        return (
            engine.health_path(spec) if hasattr(engine, "health_path") else spec.health_check.path
        )

    def _fail(
        self, state: ModelState, spec: ModelSpec | None, failure: Failure, now: float
    ) -> ModelState:
        if spec is None:
            return replace(state, status=Status.stopped, last_transition=now)
        retry = record_failure(_retry(state), spec.retry_policy, failure, now)
        if retry.given_up:
            self.event(
                "gave-up",
                spec.id,
                f"{failure.message}; gave up after {spec.retry_policy.max_retries} restart(s)",
            )
        else:
            self.event("crashed", spec.id, f"{failure.message}; restart #{retry.restarts} planned")
        state = replace(state, status=Status.error, pid=None, container_id=None)
        return replace(_with_retry(state, retry), last_transition=now)

    def _dedupe(self, alive: list[Handle], spec: ModelSpec | None, dry_run: bool) -> Handle:
        """Nothing runs twice: keep the oldest engine that matches the spec, stop the others."""
        wanted = spec.spec_hash() if spec else None
        alive = sorted(alive, key=lambda h: (h.spec_hash != wanted, h.started_at))
        for extra in alive[1:]:
            self.event("duplicate", extra.model_id, f"stopping a duplicate engine {_ident(extra)}")
            if not dry_run:
                self._engine(extra).stop(extra, self.settings.stop_grace_s)
        return alive[0]

    def _observed(
        self,
        states: Mapping[str, ModelState],
        handles: Mapping[str, list[Handle]],
        desired: DesiredState,
    ) -> dict[str, ObservedModel]:
        observed = {}
        for model_id, state in states.items():
            alive = [h for h in handles.get(model_id, []) if h.alive]
            running = state.status in (Status.starting, Status.running) and alive
            if running:
                h = alive[0]
                observed[model_id] = ObservedModel(
                    model_id, state.status, h.gpus, h.memory_mb, h.port, h.spec_hash
                )
            elif state.status == Status.preempted:  # waits for room; the reasons say so
                observed[model_id] = ObservedModel(model_id, Status.preempted)
            elif state.status == Status.error:
                observed[model_id] = ObservedModel(
                    model_id,
                    Status.error,
                    given_up=state.given_up,
                    last_error=state.last_error,
                    spec_hash=state.spec_hash,
                )
        return observed

    def _mark_stopping(
        self,
        plan: Plan,
        states: dict[str, ModelState],
        revision: str | None,
        problems: list[Problem],
        now: float,
        dirty: bool = False,
    ) -> None:
        """Record `stopping` (`preempted`) before stopping anything: if this process dies
        mid-stop, the next pass sees an engine that was being stopped, not one that crashed."""
        stopping = [a for a in plan.actions if a.action in ("stop", "preempt", "restart")]
        for action in stopping:
            status = Status.preempted if action.action == "preempt" else Status.stopping
            state = states.get(action.model) or ModelState(id=action.model)
            states[action.model] = replace(state, status=status, last_transition=now)
        if stopping:
            self._write(states, revision, problems, now, dirty)

    def _execute(
        self,
        plan: Plan,
        desired: DesiredState,
        handles: Mapping[str, list[Handle]],
        states: dict[str, ModelState],
        now: float,
    ) -> list[str]:
        executed = []
        # stops first (including the old engine of each restart), so that memory is free
        for action in plan.actions:
            if action.action in ("stop", "preempt", "restart"):
                for handle in handles.get(action.model, []):
                    if handle.alive:
                        self._engine(handle).stop(handle, self.settings.stop_grace_s)
                status = Status.preempted if action.action == "preempt" else Status.stopped
                state = states.get(action.model) or ModelState(id=action.model, status=status)
                states[action.model] = replace(
                    state, status=status, pid=None, container_id=None, last_transition=now
                )
                if action.action != "restart":
                    self.event(action.action, action.model, action.reason)
                    executed.append(f"{action.action} {action.model}: {action.reason}")
        for action in plan.actions:
            if action.action in ("start", "restart"):
                line = self._start(action, desired.models[action.model], states, now)
                if line:
                    executed.append(line)
        return executed

    def _start(self, action, spec: ModelSpec, states: dict[str, ModelState], now: float) -> str:
        state = states.get(spec.id) or ModelState(id=spec.id, status=Status.stopped)
        if waiting(_retry(state), now):
            return ""
        placement = EnginePlacement(tuple(action.gpus), action.port, action.memory_mb or 0)
        engine = self.engines.get(spec.framework)
        try:
            if engine is None:
                raise EngineError(f"no {spec.framework} engine on this host")
            handle = engine.start(spec, placement)
        except EngineError as exc:
            self.event("error", spec.id, str(exc))
            retry = record_permanent(_retry(state), str(exc))
            state = replace(_with_retry(state, retry), status=Status.error, last_transition=now)
            states[spec.id] = replace(state, spec_hash=spec.spec_hash())
            return f"error {spec.id}: {exc}"
        self.event(action.action, spec.id, action.reason)
        states[spec.id] = replace(
            _from_handle(state, handle),
            status=Status.starting,
            last_transition=now,
            next_retry_at=None,
        )
        return f"{action.action} {spec.id}: {action.reason}"

    def _result(
        self,
        plan: Plan,
        executed: list[str],
        states: Mapping[str, ModelState],
        desired: DesiredState,
        now: float,
    ) -> PassResult:
        starting = [s for s in states.values() if s.status == Status.starting]
        # a retry still due after this pass was not planned (no room): nothing to wait for
        retries = [
            s.next_retry_at
            for s in states.values()
            if s.next_retry_at and s.next_retry_at > now and not s.given_up
            if s.id in desired.models
        ]
        wake = min(retries, default=None)
        if starting:
            wake = min(wake or now + 0.5, now + 0.5)
        settled = not starting and not retries and not executed
        return PassResult(plan, executed, settled, wake, tuple(self._starting_urls))

    # -- records -----------------------------------------------------------------------------

    def _write(
        self,
        states: Mapping[str, ModelState],
        revision: str | None,
        problems: list[Problem],
        now: float,
        dirty: bool = False,
    ) -> None:
        if self._dry_run:
            return
        # models that are neither desired nor running leave the state file
        keep = {k: v for k, v in states.items() if v.status != Status.stopped or v.restarts_total}
        state = State(
            revision=revision,
            revision_dirty=dirty,
            applied_at=now,
            models=keep,
            problems=[p.to_dict() for p in problems if p.is_error],
        )
        path = self.state_dir / STATE_FILE
        write_state(path, state)
        self.last_state, self._written = state, _file_signature(path)

    def http_client(self) -> httpx.Client:
        """One client for every health probe: a new httpx client builds an SSL context (~20 ms
        of CPU), which made the probes of an idle host its largest cost."""
        if self._http is None:
            # trust_env=False: engines are local, an HTTP(S)_PROXY must not be used; no
            # keep-alive: every probe opens a fresh connection, as to a restarted engine
            limits = httpx.Limits(max_keepalive_connections=0)
            self._http = httpx.Client(trust_env=False, limits=limits)
        return self._http

    def event(self, kind: str, model: str | None, message: str, **fields: Any) -> None:
        """Append to the event log (JSON lines) and tell the listeners."""
        if self._dry_run:
            return
        record = {"time": self.clock(), "kind": kind, "model": model, "message": message}
        record.update(fields)
        with open(self.state_dir / EVENTS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:  # a listener must never break a pass
                log.exception("event listener failed")

    def stop_engines(self, handles: list[Handle], reason: str) -> None:
        """Stop these engines now (`reconciler stop-all`) and record them as stopped, so that
        the next pass starts them afresh instead of counting crashes."""
        path = self.state_dir / STATE_FILE
        state = read_state_or_recover(path)[0] or State()
        recorded = {h.model_id for h in handles} & set(state.models)
        for model_id in recorded:  # a stop-all killed midway is no crash either
            state.models[model_id] = replace(state.models[model_id], status=Status.stopping)
        write_state(path, state)
        for handle in handles:
            self._engine(handle).stop(handle, self.settings.stop_grace_s)
            self.event("stop", handle.model_id, reason)
        for model_id in recorded:
            state.models[model_id] = replace(
                state.models[model_id],
                status=Status.stopped,
                pid=None,
                container_id=None,
                last_transition=self.clock(),
            )
        write_state(path, state)

    def request_restart(self, model_id: str) -> None:
        """Ask the next pass to restart a model and forget that it gave up."""
        requests = self.state_dir / RESTART_REQUESTS
        requests.mkdir(exist_ok=True)
        (requests / model_id).write_text(str(self.clock()))

    def _consume_restart_requests(
        self, states: dict[str, ModelState], handles: Mapping[str, list[Handle]]
    ) -> None:
        requests = self.state_dir / RESTART_REQUESTS
        if not requests.is_dir():
            return
        for path in sorted(requests.iterdir()):
            model_id = path.name
            for handle in handles.get(model_id, []):
                if handle.alive:
                    self._engine(handle).stop(handle, self.settings.stop_grace_s)
            state = states.get(model_id)
            if state is not None:
                states[model_id] = replace(
                    _with_retry(state, cleared(_retry(state))), status=Status.stopped
                )
            self.event("restart-requested", model_id, "restart requested by an operator")
            path.unlink(missing_ok=True)
            if model_id in handles:
                handles[model_id].clear()

    def _engine(self, handle: Handle) -> Engine:
        return self.engines[handle.framework]


def converge(reconciler: Reconciler, timeout_s: float, sleep: Callable[[float], None] = time.sleep):
    """Run passes until settled (all started engines ready, no retry pending) or the timeout."""
    deadline = reconciler.clock() + timeout_s
    results = []
    while True:
        result = reconciler.pass_once()
        results.append(result)
        now = reconciler.clock()
        if result.settled or now >= deadline:
            return results
        wake = result.next_wake if result.next_wake is not None else now + 0.5
        wake = min(max(wake, now + 0.05), deadline)
        _wait_for_ready(
            result.starting_urls, wake, reconciler.clock, sleep, reconciler.http_client()
        )


def _wait_for_ready(
    urls: tuple[str, ...],
    until: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    client: httpx.Client | None = None,
    interval_s: float = 0.05,
) -> None:
    """Sleep until `until`, or until one of the starting engines answers its health URL (a
    refused connection costs next to nothing, so `apply` returns soon after an engine is ready)."""
    while True:
        now = clock()
        if now >= until or any(probe(url, 0.5, client=client) for url in urls):
            return
        pause = min(interval_s, until - now) if urls else until - now
        sleep(max(0.01, pause))


def _retry(state: ModelState) -> RetryState:
    return RetryState(
        restarts=state.restarts,
        restarts_total=state.restarts_total,
        next_retry_at=state.next_retry_at,
        given_up=state.given_up,
        last_error=state.last_error,
        last_log_lines=tuple(state.last_log_lines or ()),
    )


def _with_retry(state: ModelState, retry: RetryState) -> ModelState:
    return replace(
        state,
        restarts=retry.restarts,
        restarts_total=retry.restarts_total,
        next_retry_at=retry.next_retry_at,
        given_up=retry.given_up,
        last_error=retry.last_error,
        last_log_lines=list(retry.last_log_lines),
    )


def _from_handle(state: ModelState, handle: Handle) -> ModelState:
    return replace(
        state,
        pid=handle.pid,
        container_id=handle.container_id,
        port=handle.port,
        gpus=list(handle.gpus),
        memory_mb=handle.memory_mb,
        spec_hash=handle.spec_hash,
        started_at=handle.started_at,
        status=state.status
        if state.status in (Status.running, Status.starting)
        else Status.starting,
    )


def _exit_message(handle: Handle) -> str:
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


def _ident(handle: Handle) -> str:
    return f"pid {handle.pid}" if handle.pid else f"container {handle.container_id}"


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced or rewritten (inode, mtime, size)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _revision_of(source: Any) -> Any:
    """The source's revision (sha, dirty mark); None outside git or when git cannot tell."""
    if source is None:
        return None
    try:
        return source.revision()
    except SourceError:
        return None
