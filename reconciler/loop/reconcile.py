"""One reconcile pass: load -> validate -> observe -> supervise -> plan -> apply -> record.

Level-triggered: a pass recomputes everything from the desired state and from what the engines
really are (processes and containers, found afresh every pass); the state file only carries what
cannot be observed (restart counts, failed probes, backoff, the last error) and is rebuilt when
it is corrupt. controller.py runs passes: on triggers (the daemon), or until nothing is pending
(`converge`: that is `reconciler apply`).

Split by concern: records, supervision (crashes, health, sockets), planning (one plan a pass: on
demand, and an unusable spec is that model's error), execution (stops, then starts), memory.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from reconciler.core.activation import MakePlan
from reconciler.core.desired import DesiredState, Problem
from reconciler.core.events import EventExtras, EventKind
from reconciler.core.fleet import host_view, short_host_name, undeclared_host
from reconciler.core.health import JITTER
from reconciler.core.instance import InstanceRecord, Status, transition
from reconciler.core.plan import Plan, invalid_plan
from reconciler.core.plan import make_plan as default_make_plan
from reconciler.core.serving import per_instance
from reconciler.core.spec_checks import validate
from reconciler.engines.base import Engine, Handle
from reconciler.engines.prober import probe_client
from reconciler.engines.process_engine import observe_all
from reconciler.engines.registry import catalog, missing_message
from reconciler.engines.registry import engines as default_engines
from reconciler.gpus import InventoryError
from reconciler.loop.execution import Executor
from reconciler.loop.memory import MemoryLearner
from reconciler.loop.planning import Planning, Requirements, set_aside, without
from reconciler.loop.records import Records, observed_of
from reconciler.loop.remote_watch import RemoteWatch
from reconciler.loop.supervision import Supervisor
from reconciler.source.load import HOSTS_DIR, LoadError, load_directory, load_revision
from reconciler.source.local import LocalSource
from reconciler.source.repo import Revision, Source, SourceError
from reconciler.state.directory import STATE_FILE, namespace_for, private_dir
from reconciler.state.reading import read_state_or_recover
from reconciler.state.statefile import State, write_state

if TYPE_CHECKING:
    import httpx  # imported by http_client(): `apply` needs it only once an engine is launched


@dataclass
class Settings:
    desired_dir: Path
    state_dir: Path
    rev: str | None = None
    """read desired state from this git revision instead of the working tree"""
    stop_grace_s: float = 10.0
    source: Source | None = None
    """the git source (local or remote): what to load, and the revision to record; None = a
    LocalSource over desired_dir (works outside git too)"""
    engine_host: str = "127.0.0.1"
    """where engines listen: a host setting, never a spec's. Each engine's sockets are checked
    against it and its assigned port."""
    host_name: str | None = None
    """in a fleet (desired-state/hosts/), which host this is; None = this machine's short name"""

    def this_host(self) -> str:
        return self.host_name or short_host_name(socket.gethostname())


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


def draw_jitter() -> float:
    """A restart delay factor (reconciler.core.health.backoff_delay): the shell's randomness."""
    return random.uniform(1.0 - JITTER, 1.0 + JITTER)


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        engines: Mapping[str, Engine] | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = draw_jitter,
        make_plan: MakePlan = default_make_plan,
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        private_dir(self.state_dir)
        self.namespace = namespace_for(self.state_dir)
        self.engines = dict(engines or default_engines(self.state_dir, self.namespace))
        self.clock = clock
        self.memory = MemoryLearner(settings.state_dir)
        self.requirements = Requirements(learned=self.memory.figures)
        self.planning = Planning(lambda: self.requirements, make_plan)  # .traffic: the gateway's
        self.records = Records(self.state_dir, clock)
        self.listeners = self.records.listeners
        """called with every event, after it is written (metrics, notifications, SSE)"""
        host, grace = settings.engine_host, settings.stop_grace_s
        self.supervisor = Supervisor(
            self.engines,
            self.records,
            host=host,
            stop_grace_s=grace,
            http=self.http_client,
            jitter=jitter,
        )
        self.executor = Executor(
            self.engines, self.records, self.supervisor, host=host, stop_grace_s=grace
        )
        self.remote = RemoteWatch(self.records, self.engines, stop_grace_s=grace)
        """the remote models' records: probes of their endpoints, never an engine"""
        self.last_handles: dict[str, list[Handle]] = {}
        """what the last pass observed: the daemon watches these pids for exits"""
        self.last_revision: Revision | None = None
        self.last_desired: DesiredState | None = None
        """the desired state in force after the last pass (the last valid one when invalid)"""
        self._unschedulable: set[str] = set()
        self._http: httpx.Client | None = None

    @property
    def last_state(self) -> State | None:
        """the state file as this process last wrote it (read back without parsing it)"""
        return self.records.last_state

    # -- desired state -----------------------------------------------------------------------

    def load_desired(self) -> tuple[DesiredState | None, list[Problem]]:
        """The desired state to apply, and the problems found; None when invalid."""
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
        result = validate(raw, path_check=missing_message, catalog=catalog())
        if result.desired is None or not result.desired.hosts:
            return result.desired, result.problems
        # a fleet: this host reconciles its share, and touches nothing if it is not one of them
        host = self.settings.this_host()
        hosts_dir = str(Path(raw.root) / HOSTS_DIR)
        stranger = undeclared_host(result.desired, host, hosts_dir)
        if stranger is not None:
            return None, [stranger]
        return host_view(result.desired, host), result.problems

    def _source(self) -> Source | None:
        if self.settings.source is None:
            try:
                self.settings.source = LocalSource(self.settings.desired_dir)
            except SourceError:
                return None
        return self.settings.source

    def observe(self) -> dict[str, list[Handle]]:
        """Every engine of ours that exists now, alive or exited, by model id."""
        found: dict[str, list[Handle]] = {}
        for handles in observe_all(self.engines.values()):
            for handle in handles:
                found.setdefault(handle.model_id, []).append(handle)
        return found

    # -- the pass ----------------------------------------------------------------------------

    def pass_once(self, *, dry_run: bool = False) -> PassResult:
        """One pass. A dry run (`plan`, `apply --dry-run`, the API's plan) computes the same plan
        but changes nothing: no engine is touched, no file written or moved, no event logged."""
        self.records.muted = dry_run
        try:
            return self._pass(self.clock(), dry_run)
        finally:
            self.records.muted = False

    def _pass(self, now: float, dry_run: bool) -> PassResult:
        previous, corrupt = self.records.read_previous()
        if corrupt:
            message = f"state file was unreadable ({corrupt}); rebuilt"
            self.records.event(EventKind.state_rebuilt, None, message)
        states = dict(previous.models) if previous else {}
        desired, problems = self.load_desired()
        invalid = desired is None
        if desired is None:
            desired = self.records.last_valid()
            if previous is None or previous.problems != [p.to_dict() for p in problems]:
                message = f"{len(problems)} problem(s); nothing changed"
                self.records.event(EventKind.desired_invalid, None, message)
        handles = self.observe()
        self.last_handles, self.last_desired = handles, desired
        if not dry_run:
            self.supervisor.consume_restart_requests(states, handles, now)
        if desired is None:  # invalid, and never valid before: only watch what runs
            self.records.write(states, None, problems, now)
            return PassResult(invalid_plan(None, problems))
        usable, broken = set_aside(desired)
        valid = None if invalid else usable  # remembered after the launches: they need not wait
        desired, usable, broken = per_instance(desired, usable, broken)
        self.last_desired = desired
        remote = {m: s for m, s in usable.models.items() if s.is_remote}
        watched = {k: v for k, v in states.items() if k not in broken and k not in remote}
        seen = {k: v for k, v in handles.items() if k not in broken and k not in remote}
        states = {
            **self.supervisor.supervise(without(usable, remote), seen, watched, now, dry_run),
            **self.remote.watch(remote, states, handles, now, dry_run),
            **{k: v for k, v in states.items() if k in broken},
        }
        self.memory.learn(
            usable, seen, states, self.requirements, now, self.records.event, dry_run=dry_run
        )
        alive = {m for m, hs in handles.items() if any(h.alive for h in hs)}
        # a remote model's record goes too: in error, its local fallback stands in for it
        observed = {
            m: o for m, s in states.items() if m not in broken and (o := observed_of(s, m in alive))
        }
        pids = [h.pid for hs in handles.values() for h in hs if h.pid]
        try:
            plan, more = self.planning.plan(usable, observed, problems, pids, now)
        except InventoryError as exc:
            problems = [*problems, Problem("cluster.yaml", 1, "gpus", str(exc))]
            self._remember_valid(valid)
            self.records.write(states, desired.revision, problems, now)
            return PassResult(invalid_plan(desired.revision, problems))
        broken.update(more)
        if invalid:
            plan = replace(plan, valid=False)
        if dry_run:
            return PassResult(plan)
        revision, dirty = self._recorded_revision(desired, previous, invalid)
        kept = problems if invalid else []
        executed = self.executor.set_aside(broken, handles, states, now)
        if self.executor.mark_stopping(plan, states, now):
            self.records.write(states, revision, kept, now, dirty)
        executed += self.executor.execute(plan, usable, handles, states, now)
        self._remember_valid(valid)
        self.records.write(states, revision, kept, now, dirty)
        if not invalid:
            self._note_applied(previous, revision, dirty)
        self._note_unschedulable(plan)
        return self._result(plan, executed, states, desired, now)

    def _remember_valid(self, desired: DesiredState | None) -> None:
        if desired is not None:
            self.records.remember_valid(desired)

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
        return rev.sha, rev.dirty

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
        summary = self.last_revision.dirty_summary if dirty and self.last_revision else ""
        message = f"applied {label}" + (f": {summary}" if summary else "")
        self.records.event(EventKind.applied, None, message, revision=revision, dirty=dirty)

    def _note_unschedulable(self, plan: Plan) -> None:
        now_unschedulable = {u.model: u.reason for u in plan.unschedulable}
        for model_id in sorted(set(now_unschedulable) - self._unschedulable):
            self.records.event(EventKind.unschedulable, model_id, now_unschedulable[model_id])
        self._unschedulable = set(now_unschedulable)

    def _result(
        self,
        plan: Plan,
        executed: list[str],
        states: Mapping[str, InstanceRecord],
        desired: DesiredState,
        now: float,
    ) -> PassResult:
        # a remote model's probe asks for a pass when it ends (prober.on_late): no polling
        remote = self.remote.watched
        starting = [
            s for s in states.values() if s.status == Status.starting and s.id not in remote
        ]
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
        urls = tuple(self.supervisor.starting_urls)
        return PassResult(plan, executed, settled, wake, urls)

    # -- between passes (the daemon) ---------------------------------------------------------

    def next_probe_at(self) -> float | None:
        """When the next liveness probe of a running engine or of a remote model's endpoint is
        due (the daemon wakes for it)."""
        due = [self.supervisor.next_probe_at(), self.remote.next_probe_at()]
        return min((d for d in due if d is not None), default=None)

    def probe_due(self) -> bool:
        """The due liveness probes without a pass; True when nothing needs a pass."""
        states = self.last_state.models if self.last_state is not None else {}
        now = self.clock()
        engines = self.supervisor.probe_due(self.last_desired, self.last_handles, states, now)
        specs = self.last_desired.models if self.last_desired is not None else {}
        endpoints = self.remote.probe_due(specs, states, now)
        return engines and endpoints

    def probe_beside(self, wait_s: float, on_late: Callable[[], None]) -> None:
        """The daemon's way: a pass waits at most `wait_s` for the probes it started, and a
        probe that ends after that calls `on_late` (which asks for a pass to judge it). Without
        this (one-shot `apply`), a pass waits until its probes end, all at once."""
        self.supervisor.probe_wait_s = wait_s
        self.supervisor.prober.on_late = on_late
        self.remote.probe_wait_s = wait_s
        self.remote.prober.on_late = on_late

    # -- the host's side ---------------------------------------------------------------------

    def http_client(self) -> httpx.Client:
        """One client for every health probe (engines.prober.probe_client: no proxy, no CA
        bundle): a new httpx client costs CPU, which made the probes of an idle host its
        largest cost."""
        if self._http is None:
            import httpx

            # no keep-alive: every probe opens a fresh connection, as to a restarted engine
            self._http = probe_client(limits=httpx.Limits(max_keepalive_connections=0))
        return self._http

    def event(
        self, kind: EventKind, model: str | None, message: str, **extra: Unpack[EventExtras]
    ) -> None:
        """Append to the event log and tell the listeners (the daemon's own events)."""
        self.records.event(kind, model, message, **extra)

    def stop_engines(self, handles: list[Handle], reason: str) -> None:
        """Stop these engines now (`reconciler stop-all`) and record them as stopped, so that
        the next pass starts them afresh instead of counting crashes."""
        path = self.state_dir / STATE_FILE
        state = read_state_or_recover(path)[0] or State()
        recorded = {h.model_id for h in handles} & set(state.models)
        stopping_at = self.clock()
        for model_id in recorded:  # a stop-all killed midway is no crash either
            state.models[model_id] = transition(
                state.models[model_id], Status.stopping, stopping_at
            )
        write_state(path, state)
        for handle in handles:
            self.engines[handle.framework].stop(handle, self.settings.stop_grace_s)
            self.records.event(EventKind.stop, handle.model_id, reason)
        for model_id in recorded:
            state.models[model_id] = transition(
                state.models[model_id],
                Status.stopped,
                self.clock(),
                pid=None,
                container_id=None,
                probe_failures=0,
            )
        write_state(path, state)

    def request_restart(self, model_id: str) -> None:
        """Ask the next pass to restart a model and forget that it gave up."""
        self.records.request_restart(model_id)


def _revision_of(source: Source | None) -> Revision | None:
    """The source's revision (sha, dirty mark); None outside git or when git cannot tell."""
    if source is None:
        return None
    try:
        return source.revision()
    except SourceError:
        return None
