"""The HTTP face of `reconciler run`: status API, git webhook, Prometheus metrics, the dashboard.

The API only reads and asks: desired state comes from git alone, so there is no route that
changes a spec. Two actions exist, both a request to the loop: reconcile now, restart a model.

Who may ask:
- with RECONCILER_API_TOKEN set, POST /api/v1/reconcile and /api/v1/models/{id}/restart need
  `Authorization: Bearer <token>`, compared in constant time; anything else is 401;
- without a token, `run` listens on loopback only, and these POSTs are accepted from loopback
  clients that are not a web page of another site (Origin, Sec-Fetch-Site) and that address us
  by a loopback name (Host): a page the operator happens to visit, or a DNS-rebound name, cannot
  restart a model through the operator's browser;
- POST /api/v1/hooks/git needs an HMAC-SHA256 signature of the raw body with
  RECONCILER_WEBHOOK_SECRET (GitHub's X-Hub-Signature-256, Gitea/Forgejo/Gogs' X-*-Signature);
  without a configured secret it answers 503;
- GETs are open to whoever reaches the port (status, plan, events, logs): on a non-loopback
  address put it behind a network boundary you trust.

Reads never wait for a pass: the state and the specs in force come from the reconciler's memory
(`last_state`, `last_desired`); before the first pass, from the files it left (state.yaml, parsed
once per change in the background; last-valid-desired.json). The loop shares one interpreter lock
with the API, so what is costly to compute (the model list, /metrics) is computed once and shared
by the requests that come together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.concurrency import run_in_threadpool

from reconciler import __version__
from reconciler.core.observed import OCCUPYING, Status
from reconciler.state.paths import EVENTS_FILE, LAST_VALID_FILE, STATE_FILE
from reconciler.state.statefile import CorruptState, ModelState, State, read_state

log = logging.getLogger("reconciler.api")

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted (a push event of a big merge is a few hundred KiB)."""
WEB_DIR = Path(__file__).with_name("web")
EVENTS_DEFAULT, EVENTS_MAX = 100, 1000
EVENTS_READ_BYTES = 1024 * 1024
"""The most of events.jsonl a stream reads at once (it catches up in steps)."""
STREAM_POLL_S = 0.5
"""How often an event stream looks at events.jsonl when no listener woke it."""
STREAM_KEEPALIVE_S = 15.0
LOG_LINES = 50
METRICS_FRESH_S, METRICS_STALE_S = 1.0, 5.0
"""/metrics: a rendering younger than FRESH is served as it is; one younger than STALE is served
while a new one is made; an older one (the next scrape of a Prometheus) is made anew at once."""
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SIGNATURE_HEADERS = (
    "x-hub-signature-256",  # GitHub: "sha256=<hex>"
    "x-gitea-signature",  # Gitea: "<hex>"
    "x-forgejo-signature",  # Forgejo (also sends the Gitea header)
    "x-gogs-signature",  # Gogs
)
EVENT_HEADERS = ("x-github-event", "x-gitea-event", "x-forgejo-event", "x-gogs-event")
DASHBOARD_HEADERS = {
    # the dashboard builds its DOM from API data with textContent only; the CSP is the backstop
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

T = TypeVar("T")


# ---- response models: the OpenAPI document is generated from these ---------------------------


class ErrorOut(BaseModel):
    detail: str


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    ready: bool
    passes: int


class ProblemOut(BaseModel):
    file: str
    line: int
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"


class ModelSummary(BaseModel):
    id: str
    name: str | None = None
    status: Status
    desired: bool = Field(description="in the desired state in force")
    enabled: bool | None = None
    priority: int | None = None
    framework: str | None = None
    gpus: list[int] = []
    memory_mb: int | None = Field(
        None, description="MiB per GPU: the reservation while it holds GPUs, else the request"
    )
    port: int | None = None
    restarts: int = Field(0, description="restarts after crashes or failed health checks, total")
    uptime_s: float | None = Field(None, description="seconds since its engine started")
    last_error: str | None = None
    given_up: bool = False
    reason: str | None = Field(None, description="what the last pass planned for it, and why")


class Placement(BaseModel):
    gpus: list[int]
    memory_mb: int
    port: int | None


class ModelDetail(ModelSummary):
    spec: dict[str, Any] | None = Field(None, description="the spec in force, as in git")
    placement: Placement | None = None
    pid: int | None = None
    container_id: str | None = None
    restarts_in_a_row: int = 0
    next_retry_at: float | None = None
    started_at: float | None = None
    last_transition: float | None = None
    logs: list[str] = Field([], description="the engine's last log lines")


class GpuModelOut(BaseModel):
    id: str
    status: Status
    memory_mb: int


class GpuOut(BaseModel):
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    memory_free_mb: int
    reserved_mb: int = Field(description="reserved by this reconciler's engines")
    declared: bool = Field(description="declared in cluster.yaml (simulated), not read by NVML")
    utilization: float | None = None
    temperature: float | None = None
    power: float | None = None
    models: list[GpuModelOut] = []


class ActionOut(BaseModel):
    action: Literal["start", "stop", "restart", "preempt"]
    model: str
    gpus: list[int]
    memory_mb: int
    port: int | None
    reason: str


class UnschedulableOut(BaseModel):
    model: str
    reason: str


class GpuPlanOut(BaseModel):
    index: int
    memory_mb: int
    used_mb_before: int
    used_mb_after: int


class PlanOut(BaseModel):
    revision: str | None
    valid: bool
    summary: str
    problems: list[ProblemOut]
    actions: list[ActionOut]
    unschedulable: list[UnschedulableOut]
    gpus: list[GpuPlanOut]


class EventOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int = Field(description="cursor: pass it as `after` to the stream to continue from here")
    time: float
    kind: str
    model: str | None = None
    message: str = ""


class HistoryOut(BaseModel):
    sha: str
    author: str = ""
    time: str | None = None
    subject: str = ""
    message: str = ""
    status: str = Field(description="applied | invalid | superseded | pending")
    current: bool = False
    summary: str = ""
    problems: list[ProblemOut] = []


class RevisionOut(BaseModel):
    sha: str | None = Field(None, description="the applied commit; null: not in git")
    short: str | None = None
    dirty: bool = Field(False, description="uncommitted edits were applied on top of it")
    subject: str = ""
    message: str = ""
    author: str = ""
    time: str | None = None


class StatusOut(BaseModel):
    version: str
    ready: bool
    passes: int
    last_pass_at: float | None
    last_pass_reasons: list[str]
    last_plan: str | None = Field(None, description="summary of the last pass's plan")
    revision: RevisionOut
    valid: bool = Field(description="the desired state as last loaded is valid")
    problems: list[ProblemOut]
    models: dict[str, int] = Field(description="number of models by status")


class AcceptedOut(BaseModel):
    status: Literal["accepted", "ignored", "pong"]
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


# ---- reading what the reconciler recorded ---------------------------------------------------


class _ParsedFile(Generic[T]):
    """A file parsed once per content (the file is read each time; parsed only if it changed)."""

    def __init__(self, path: Path, parse: Callable[[Path, bytes], T]) -> None:
        self.path, self.parse = path, parse
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._value: T | None = None

    def get(self) -> T | None:
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        with self._lock:
            if data != self._data:
                try:
                    self._value = self.parse(self.path, data)
                except Exception:  # torn or foreign: keep what we had; the reconciler repairs it
                    log.debug("cannot parse %s", self.path, exc_info=True)
                self._data = data
            return self._value


class _Background(Generic[T]):
    """The last value of `compute`, recomputed in a thread once it is older than `fresh_s`;
    callers get the previous value meanwhile, unless it is older than `stale_s` (then they wait
    for a new one). For what is slow to compute on a big host (parsing a state file of hundreds
    of models, rendering their metrics): a request must not wait for it, nor compute it again
    for every request, yet nobody gets a value older than `stale_s`."""

    def __init__(self, compute: Callable[[], T], fresh_s: float, stale_s: float) -> None:
        self.compute, self.fresh_s, self.stale_s = compute, fresh_s, stale_s
        self._lock = threading.Lock()  # one computation at a time
        self._value: T | None = None
        self._at = -math.inf
        self._busy = False  # a background computation is queued or running

    def ready(self) -> bool:
        """get() would answer at once (from a value young enough)."""
        return time.monotonic() - self._at <= self.stale_s

    def get(self) -> T | None:
        age = time.monotonic() - self._at
        if age > self.stale_s:
            with self._lock:
                if time.monotonic() - self._at > self.stale_s:  # nobody did it meanwhile
                    self._run()
        elif age > self.fresh_s and not self._busy:
            self._busy = True
            threading.Thread(target=self._in_background, daemon=True).start()
        return self._value

    def _in_background(self) -> None:
        try:
            with self._lock:
                self._run()
        finally:
            self._busy = False

    def _run(self) -> None:
        began = time.monotonic()
        try:
            self._value = self.compute()
        finally:
            self._at = began  # a failure is retried after fresh_s, not on every request


class _Memo:
    """One value computed at most once per `ttl_s` and per key, by one thread at a time."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._key: Any = object()
        self._value: Any = None
        self._at = 0.0

    def get(self, key: Any, compute: Callable[[], T]) -> T:
        with self._lock:
            if key != self._key or time.monotonic() - self._at > self.ttl_s:
                self._value = compute()
                self._key, self._at = key, time.monotonic()
            return self._value


def _parse_state(path: Path, _data: bytes) -> State | None:
    # read_state checks the end marker and the shape; if the file was replaced since `_data`
    # was read, the next call sees new bytes and parses once more
    try:
        return read_state(path)
    except CorruptState:
        return None


def _parse_desired(_path: Path, data: bytes) -> tuple[dict[str, Any], Any]:
    """(specs by id, cluster) of the last valid desired state, as the reconciler recorded it."""
    from reconciler.core.spec import ClusterSpec, ModelSpec

    doc = json.loads(data)
    specs = {m["id"]: ModelSpec.model_validate(m) for m in doc.get("models", [])}
    return specs, ClusterSpec.model_validate(doc["cluster"])


class Views:
    """What the API shows, read from the daemon without ever waiting for the loop."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.reconciler = daemon.reconciler
        self.state_dir = Path(self.reconciler.state_dir)
        self.events_path = self.state_dir / EVENTS_FILE
        state_file = _ParsedFile(self.state_dir / STATE_FILE, _parse_state)
        self._state_file = _Background(state_file.get, fresh_s=0.2, stale_s=5.0)
        self._desired_file = _ParsedFile(self.state_dir / LAST_VALID_FILE, _parse_desired)
        self.plan_memo = _Memo(2.0)
        self.gpu_memo = _Memo(2.0)
        self.history_memo = _Memo(15.0)
        self.tree_memo = _Memo(5.0)
        self.models_memo = _Memo(1.0)
        self._commits: dict[str, RevisionOut] = {}

    # the loop

    @property
    def stats(self) -> Any:
        return getattr(self.daemon.controller, "stats", None)

    def passes(self) -> int:
        return int(getattr(self.stats, "passes", 0) or 0)

    def last_plan(self) -> Any:
        result = getattr(self.stats, "last_result", None)
        return getattr(result, "plan", None)

    # state, specs, engines

    def state(self) -> State | None:
        in_memory = getattr(self.reconciler, "last_state", None)
        if isinstance(in_memory, State):
            return in_memory
        return self._state_file.get()

    def in_memory(self) -> bool:
        """State and specs come from the reconciler's memory: reading them costs nothing."""
        reconciler = self.reconciler
        last_state = getattr(reconciler, "last_state", None)
        last_desired = getattr(reconciler, "last_desired", None)
        return isinstance(last_state, State) and last_desired is not None

    def specs(self) -> Mapping[str, Any]:
        """The specs in force (the last valid desired state) by id."""
        desired = getattr(self.reconciler, "last_desired", None)
        if desired is not None:
            return desired.models
        parsed = self._desired_file.get()  # before the first pass: what the last run recorded
        return parsed[0] if parsed else {}

    def cluster(self) -> Any:
        desired = getattr(self.reconciler, "last_desired", None)
        if desired is not None:
            return desired.cluster
        parsed = self._desired_file.get()
        return parsed[1] if parsed else None

    def handles(self, model_id: str) -> list[Any]:
        """The engines of a model: the last pass's observation, or a fresh one."""
        known = getattr(self.reconciler, "last_handles", None)
        if isinstance(known, Mapping):
            return list(known.get(model_id, []))
        spec = self.specs().get(model_id)
        engines = getattr(self.reconciler, "engines", {})
        candidates = [engines[spec.framework]] if spec and spec.framework in engines else []
        found = []
        for engine in candidates or engines.values():
            with contextlib.suppress(Exception):
                found += [h for h in engine.observe() if h.model_id == model_id]
        return found

    def logs(self, model_id: str, state: ModelState | None) -> list[str]:
        handles = sorted(self.handles(model_id), key=lambda h: (h.alive, h.started_at))
        engines = getattr(self.reconciler, "engines", {})
        for handle in reversed(handles):  # the live engine first, else the last one that ran
            engine = engines.get(handle.framework)
            if engine is not None:
                with contextlib.suppress(Exception):
                    return list(engine.logs(handle, LOG_LINES))
        return list(state.last_log_lines) if state else []

    # git

    def revision(self, state: State | None) -> RevisionOut:
        """The applied revision: the state file's commit, or, when the working tree was
        applied (no commit recorded), the commit it sits on and whether it had edits."""
        if state is not None and state.revision:
            described = self._commits.get(state.revision) or self._describe(state.revision)
            return described.model_copy(update={"dirty": state.revision_dirty})
        head = _call(getattr(self.daemon, "source", None), "head_sha")
        return self.tree_memo.get(head, lambda: self._describe(None))

    def _describe(self, sha: str | None) -> RevisionOut:
        """A commit (HEAD for None) read in a Repo of our own: the loop's GitPython Repo is
        not thread-safe. Found commits are kept: they never change."""
        out = RevisionOut(sha=sha, short=sha[:12] if sha else None)
        try:
            from reconciler.source import git as source

            directory = self.reconciler.settings.desired_dir
            repo = source.open_repo(directory)
            if repo is None:
                return out
            with contextlib.closing(repo):
                commit = source.resolve(repo, sha) if sha else source.head_commit(repo)
                if commit is None:
                    return out
                rev = source.revision_of(commit)
                dirty = sha is None and bool(
                    source.uncommitted(repo, source.relative_dir(repo, directory))
                )
        except Exception:  # not a commit of this repository (yet): show what we know
            return out
        found = RevisionOut(
            sha=rev.sha,
            short=rev.short,
            dirty=dirty,
            subject=rev.subject,
            message=rev.message,
            author=rev.author,
            time=rev.time.isoformat() if rev.time else None,
        )
        if sha is not None:
            self._commits[sha] = found
        return found

    def history(self, limit: int) -> list[dict[str, Any]]:
        head = _call(getattr(self.daemon, "source", None), "head_sha")
        state = self.state()
        key = (head, state.revision if state else None, limit)
        return self.history_memo.get(key, lambda: self._history(limit))

    def _history(self, limit: int) -> list[dict[str, Any]]:
        try:
            from reconciler.source import git as source

            record = source.read_applied(self.state_dir)
            entries = source.history(self.reconciler.settings.desired_dir, limit, record)
            return [e.to_dict() for e in entries]
        except Exception as exc:  # no repository, no history support yet: nothing to show
            log.debug("history unavailable: %s", exc)
            return []


def _call(obj: Any, method: str) -> Any:
    func = getattr(obj, method, None)
    if not callable(func):
        return None
    try:
        return func()
    except Exception:
        return None


# ---- models, GPUs, plan ----------------------------------------------------------------------


def model_summary(
    model_id: str, spec: Any, state: ModelState | None, outcome: Any, now: float
) -> ModelSummary:
    status = state.status if state else Status.stopped
    holds_gpus = state is not None and state.status in OCCUPYING
    requested = spec.resource_requirements.gpu_memory_mb if spec else None
    uptime = None
    if state and state.started_at and status in (Status.starting, Status.running):
        uptime = round(max(0.0, now - state.started_at), 1)
    return ModelSummary(
        id=model_id,
        name=spec.name if spec else None,
        status=status,
        desired=spec is not None,
        enabled=spec.enabled if spec else None,
        priority=spec.priority if spec else None,
        framework=spec.framework if spec else None,
        gpus=list(state.gpus) if holds_gpus else [],
        memory_mb=state.memory_mb if holds_gpus else requested,
        port=state.port if holds_gpus else (spec.port if spec else None),
        restarts=state.restarts_total if state else 0,
        uptime_s=uptime,
        last_error=state.last_error if state else None,
        given_up=bool(state and state.given_up),
        reason=getattr(outcome, "reason", None),
    )


MODEL_LIST = TypeAdapter(list[ModelSummary])


def list_models(views: Views) -> tuple[list[ModelSummary], bytes]:
    """Every model, and the same as JSON. Built once per change of what it is made of (and per
    second, for uptimes), not per request: a dashboard or a scraper polling a host of hundreds
    of models must not take CPU from the loop."""
    specs, state, plan = views.specs(), views.state(), views.last_plan()
    now = time.time()
    key = (id(specs), id(state), id(plan), int(now))
    return views.models_memo.get(key, lambda: _build_models(specs, state, plan, now))


def _build_models(
    specs: Mapping[str, Any], state: State | None, plan: Any, now: float
) -> tuple[list[ModelSummary], bytes]:
    models = state.models if state else {}
    outcomes = getattr(plan, "models", None) or {}
    listed = [
        model_summary(mid, specs.get(mid), models.get(mid), outcomes.get(mid), now)
        for mid in sorted(set(specs) | set(models))
    ]
    return listed, MODEL_LIST.dump_json(listed)


def model_detail(views: Views, model_id: str) -> ModelDetail | None:
    spec = views.specs().get(model_id)
    state = views.state()
    model = state.models.get(model_id) if state else None
    if spec is None and model is None:
        return None
    outcome = (getattr(views.last_plan(), "models", None) or {}).get(model_id)
    summary = model_summary(model_id, spec, model, outcome, time.time())
    placement = None
    if model is not None and model.status in OCCUPYING:
        placement = Placement(gpus=list(model.gpus), memory_mb=model.memory_mb, port=model.port)
    return ModelDetail(
        **summary.model_dump(),
        spec=spec.model_dump(mode="json") if spec else None,
        placement=placement,
        pid=model.pid if model else None,
        container_id=model.container_id if model else None,
        restarts_in_a_row=model.restarts if model else 0,
        next_retry_at=model.next_retry_at if model else None,
        started_at=model.started_at if model else None,
        last_transition=model.last_transition if model else None,
        logs=views.logs(model_id, model),
    )


def list_gpus(views: Views) -> list[GpuOut]:
    """The GPU inventory in force, with the memory our engines hold on each GPU."""
    from reconciler.gpus import inventory

    cluster = views.cluster()
    if cluster is None:  # no valid desired state yet: nothing says which GPUs to use
        return []
    state = views.state()
    models = state.models.values() if state else []
    holding = [m for m in models if m.status in OCCUPYING]
    pids = [m.pid for m in holding if m.pid]
    declared = isinstance(cluster.gpus, list)
    gpus = views.gpu_memo.get((id(cluster), tuple(pids)), lambda: inventory(cluster, pids))
    out = []
    for gpu in gpus:
        mine = [m for m in holding if gpu.device_id in m.gpus]
        reserved = sum(m.memory_mb for m in mine)
        used = reserved if declared else gpu.memory_used
        out.append(
            GpuOut(
                index=gpu.device_id,
                name=gpu.name,
                memory_total_mb=gpu.memory_total,
                memory_used_mb=used,
                memory_free_mb=max(0, gpu.memory_total - used),
                reserved_mb=reserved,
                declared=declared,
                utilization=gpu.utilization,
                temperature=gpu.temperature,
                power=gpu.power,
                models=[
                    GpuModelOut(id=m.id, status=m.status, memory_mb=m.memory_mb)
                    for m in sorted(mine, key=lambda m: m.id)
                ],
            )
        )
    return out


def preview_plan(reconciler: Any) -> Any:
    """What the next pass would do: a dry run in a Reconciler of its own, like `reconciler
    plan` on this host, so that the loop's per-pass bookkeeping and its git objects (not
    thread-safe) are never touched from the API's thread."""
    from reconciler.loop.reconcile import Reconciler, Settings

    settings = reconciler.settings
    preview = Reconciler(
        Settings(settings.desired_dir, settings.state_dir, settings.rev),
        engines=reconciler.engines,
        clock=reconciler.clock,
    )
    preview.requirements = reconciler.requirements  # memory estimates are cached per spec hash
    return preview.pass_once(dry_run=True).plan


def plan_out(plan: Any) -> PlanOut:
    return PlanOut(
        revision=plan.revision,
        valid=plan.valid,
        summary=plan.summary() if plan.valid else "invalid desired state: nothing changes",
        problems=[ProblemOut(**p.to_dict()) for p in plan.problems],
        actions=[
            ActionOut(
                action=a.action,
                model=a.model,
                gpus=list(a.gpus),
                memory_mb=a.memory_mb,
                port=a.port,
                reason=a.reason,
            )
            for a in plan.actions
        ],
        unschedulable=[UnschedulableOut(model=m, reason=r) for m, r in plan.unschedulable],
        gpus=[
            GpuPlanOut(
                index=g.index,
                memory_mb=g.memory_mb,
                used_mb_before=g.used_mb_before,
                used_mb_after=g.used_mb_after,
            )
            for g in plan.gpus
        ],
    )


def status_out(views: Views) -> StatusOut:
    state = views.state()
    counts: dict[str, int] = {}
    for model in list_models(views)[0]:
        counts[model.status.value] = counts.get(model.status.value, 0) + 1
    plan = views.last_plan()
    problems = [ProblemOut(**p) for p in (state.problems if state else [])]
    return StatusOut(
        version=__version__,
        ready=views.passes() > 0,
        passes=views.passes(),
        last_pass_at=getattr(views.stats, "last_pass_at", None),
        last_pass_reasons=list(getattr(views.stats, "last_reasons", []) or []),
        last_plan=plan.summary() if plan is not None and plan.valid else None,
        revision=views.revision(state),
        valid=not problems,  # from the same record as `problems`, so that the two agree
        problems=problems,
        models=counts,
    )


# ---- events.jsonl: recent events, and new ones for the stream ---------------------------------


def _parse_lines(data: bytes, start: int) -> Iterable[tuple[int, dict[str, Any]]]:
    """(offset just after the line, event) for each complete, well-formed line of `data`, which
    begins at byte `start` of the file. A torn line (a writer killed mid-write) is skipped."""
    offset = start
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        offset += len(line) + 1
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if _is_event(event):
            yield offset, event


def _is_event(event: Any) -> bool:
    """The shape the reconciler writes; anything else in the file (a hand edit) is skipped."""
    return (
        isinstance(event, dict)
        and isinstance(event.get("kind"), str)
        and isinstance(event.get("time"), int | float)
        and math.isfinite(event["time"])
        and isinstance(event.get("model"), str | None)
        and isinstance(event.get("message", ""), str)
    )


def read_recent_events(
    path: Path,
    limit: int,
    since: float | None = None,
    model: str | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """The last `limit` events (newer than `since`, of `model`, of `kind`), oldest first, each
    with its cursor `id`. Reads backwards from the end: a long event log costs what is returned."""

    def wanted(event: Mapping[str, Any]) -> bool:
        return (
            (since is None or event["time"] > since)
            and (model is None or event.get("model") == model)
            and (kind is None or event["kind"] == kind)
        )

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the size is read from the handle
    except OSError:
        return []
    with f:
        end = f.seek(0, 2)
        window = 64 * 1024
        while True:
            start = max(0, end - window)
            f.seek(start)
            data = f.read(end - start)
            if start > 0:  # begin after the first newline: the line before it is cut
                cut = data.find(b"\n") + 1
                data, start = data[cut:], start + cut
            events = list(_parse_lines(data, start))
            matching = [{**e, "id": i} for i, e in events if wanted(e)]
            reached_since = since is not None and events and events[0][1]["time"] <= since
            if len(matching) >= limit or start == 0 or reached_since:
                return matching[-limit:]
            window *= 4


def read_events_after(
    path: Path, offset: int, max_bytes: int = EVENTS_READ_BYTES
) -> tuple[list[dict[str, Any]], int]:
    """Events written after byte `offset`, and the offset to continue from. A file now shorter
    than `offset` was replaced: it is read from its start."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if offset > size:
                offset = 0
            f.seek(offset)
            data = f.read(min(size - offset, max_bytes))
    except OSError:
        return [], offset
    complete = data.rfind(b"\n") + 1
    if complete == 0 and len(data) >= max_bytes:  # one absurd line: skip it rather than stall
        return [], offset + len(data)
    events = [{**e, "id": i} for i, e in _parse_lines(data[:complete], offset)]
    return events, offset + complete


def events_end(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class EventFeed:
    """Wakes the event streams when the reconciler writes an event. Streams read events.jsonl
    themselves (the file is the record; a stream resumes at any cursor); the reconciler's
    listeners, when it has them, only say "look now" instead of waiting for the next poll."""

    def __init__(self, reconciler: Any) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        listeners = getattr(reconciler, "listeners", None)
        if isinstance(listeners, list):
            listeners.append(self._on_event)

    def bind(self) -> asyncio.Event:
        """The event that the next write sets (call from the server's event loop)."""
        self._loop = asyncio.get_running_loop()
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _on_event(self, _event: Mapping[str, Any]) -> None:
        # called in the loop's thread: must be cheap and must never raise into the reconciler
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the server's loop is closed: nobody listens
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()


async def event_stream(
    views: Views, feed: EventFeed, offset: int, stopping: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """Server-sent events: one `data:` line of JSON per event, `id:` its cursor, so that a
    reconnecting EventSource continues where it stopped (Last-Event-ID)."""
    yield b"retry: 2000\n\n"
    last_sent = time.monotonic()
    while not stopping():
        changed = feed.bind()
        events, offset = read_events_after(views.events_path, offset)
        for event in events:
            data = json.dumps(event, ensure_ascii=False, default=str)
            yield f"id: {event['id']}\ndata: {data}\n\n".encode()
            last_sent = time.monotonic()
        if time.monotonic() - last_sent > STREAM_KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), STREAM_POLL_S)


def _start_cursor(views: Views, after: int | None, last_event_id: str | None) -> int:
    if last_event_id and last_event_id.strip().isdigit():
        return int(last_event_id.strip())  # a reconnect continues where it stopped
    if after is not None:
        return after
    return events_end(views.events_path)  # a new stream: only what happens from now on


# ---- who may ask ----------------------------------------------------------------------------


def _bearer(header: str | None) -> bytes | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(host_header: str) -> str:
    """`127.0.0.1:8080` -> 127.0.0.1, `[::1]:8080` -> ::1, `localhost` -> localhost."""
    return urlsplit(f"//{host_header}").hostname or ""


def _same_site_browser(request: Request) -> bool:
    """False for a request that a web page of another origin made through the user's browser
    (browsers send Sec-Fetch-Site and Origin; command-line clients send neither)."""
    if request.headers.get("sec-fetch-site", "none") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")  # "null" never matches


def authorize(request: Request, token: str | None) -> None:
    """Raise 401/403 unless this request may act (see the module docstring)."""
    if token:
        given = _bearer(request.headers.get("authorization"))
        if given is None or not hmac.compare_digest(given, token.encode("utf-8")):
            raise HTTPException(
                401,
                "missing or wrong bearer token (Authorization: Bearer <RECONCILER_API_TOKEN>)",
                headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
            )
        return
    client = request.client.host if request.client else None
    if not _is_loopback(client):
        raise HTTPException(
            401,
            "no API token is configured: actions are accepted from this host only "
            "(set RECONCILER_API_TOKEN to allow others)",
            headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
        )
    host = _host_name(request.headers.get("host", ""))
    if host not in LOOPBACK_NAMES or not _same_site_browser(request):
        raise HTTPException(
            403, "refused: a cross-site or non-loopback-named request needs an API token"
        )


# ---- the git webhook ------------------------------------------------------------------------


def signature_valid(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """True when one of the signature headers is the HMAC-SHA256 of `body` with `secret`."""
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest().encode()
    valid = False
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        given = value.strip().removeprefix("sha256=").lower().encode("latin-1", "replace")
        # compare every header present, in constant time, without stopping at the first match
        valid |= hmac.compare_digest(given, expected)
    return valid


async def read_limited(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body; 413 as soon as it passes `limit` (chunked bodies declare no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def push_payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON event; GitHub's form encoding (payload=<json>) is accepted too. 400 if bad."""
    try:
        if content_type.startswith("application/x-www-form-urlencoded"):
            body = parse_qs(body.decode("utf-8"), strict_parsing=True)["payload"][0].encode()
        payload = json.loads(body)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"malformed webhook body: {exc}") from exc
    if not isinstance(payload, dict):
        raise HTTPException(400, "malformed webhook body: expected a JSON object")
    return payload


def webhook_event(headers: Mapping[str, str], payload: Mapping[str, Any]) -> str:
    for name in EVENT_HEADERS:
        if headers.get(name):
            return headers[name].strip().lower()
    return "push" if "ref" in payload else "unknown"


class PushEvent(BaseModel):
    """The part of a GitHub/Gitea push event the reconciler reads (documentation only: the
    signature is checked over the raw body before it is parsed)."""

    model_config = ConfigDict(extra="allow")

    ref: str = Field(description="refs/heads/<branch>; other branches are ignored")
    after: str | None = None
    deleted: bool | None = None


# ---- the application ------------------------------------------------------------------------


class BodyLimit:
    """Refuse a declared body over the limit before anything reads it (pure ASGI, so that
    streaming responses pass through untouched)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    detail = f"request body over {self.limit} bytes"
                    response = JSONResponse({"detail": detail}, status_code=413)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(daemon: Any) -> FastAPI:
    """The FastAPI application that `reconciler run` serves for `daemon`."""
    app = FastAPI(
        title="reconciler",
        version=__version__,
        description="Status, plan, events and metrics of a GitOps reconciler for LLM inference "
        "engines. Desired state comes only from git: nothing here changes a spec.",
        docs_url="/docs",
        redoc_url=None,
    )
    views = Views(daemon)
    feed = EventFeed(daemon.reconciler)
    app.include_router(_probes(daemon, views))
    app.include_router(_reads(daemon, views, feed), prefix="/api/v1")
    app.include_router(_actions(daemon, views), prefix="/api/v1")
    _dashboard(app)
    app.add_middleware(BodyLimit)
    return app


def _stopping(daemon: Any) -> bool:
    """The daemon is shutting down: streams end, so that the server can stop."""
    return bool(getattr(daemon.controller, "stopping", False))


def _options(daemon: Any, name: str, default: Any = None) -> Any:
    return getattr(getattr(daemon, "options", None), name, default)


def _probes(daemon: Any, views: Views) -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get("/healthz", response_model=HealthOut)
    def healthz() -> HealthOut:
        """The process is up and serving."""
        return HealthOut()

    @router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
    def readyz() -> Any:
        """Ready once the first reconcile pass has finished."""
        passes = views.passes()
        body = ReadyOut(ready=passes > 0, passes=passes)
        return body if body.ready else JSONResponse(body.model_dump(), status_code=503)

    render, content_type = metrics_renderer(daemon)
    # rendering hundreds of models' series is slow, and every scrape would take it from the
    # loop's CPU (one interpreter lock): scrapes close together share a rendering
    rendered = _Background(render, fresh_s=METRICS_FRESH_S, stale_s=METRICS_STALE_S)

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format), at most a few seconds old."""
        # answered on the event loop when a rendering is at hand (no thread hand-off, which
        # costs most under a busy loop); rendered in a worker thread when it is not
        body = rendered.get() if rendered.ready() else await run_in_threadpool(rendered.get)
        return Response(body, media_type=content_type)

    return router


def metrics_renderer(daemon: Any) -> tuple[Callable[[], bytes], str]:
    """(render, content type) for the daemon's registry, or the process's default one."""
    registry = getattr(getattr(daemon, "metrics", None), "registry", None)
    registry = registry or getattr(daemon, "registry", None)
    try:
        from reconciler.metrics import CONTENT_TYPE, render
    except ImportError:
        from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
        from prometheus_client import generate_latest as render
    if registry is None:  # the daemon keeps no metrics of its own: the process's defaults
        from prometheus_client import REGISTRY as registry
    return (lambda: render(registry)), CONTENT_TYPE


def _reads(daemon: Any, views: Views, feed: EventFeed) -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.get("/status", response_model=StatusOut)
    def status() -> StatusOut:
        """Loop progress, the applied revision and its commit, validation problems."""
        return status_out(views)

    @router.get("/models", response_model=list[ModelSummary])
    async def models() -> Response:
        """Every model desired or running, with its status."""
        # on the event loop and pre-serialized when the loop's memory has it all (no thread
        # hand-off, no second validation); in a worker thread while files must be read
        if views.in_memory():
            body = list_models(views)[1]
        else:
            body = (await run_in_threadpool(list_models, views))[1]
        return Response(body, media_type="application/json")

    @router.get("/models/{model_id}", response_model=ModelDetail, responses=_errors(404))
    def model(model_id: str = PathParam(max_length=253)) -> ModelDetail:
        """One model: spec in force, status, placement, restarts, last error, recent logs."""
        detail = model_detail(views, model_id)
        if detail is None:
            raise HTTPException(404, f"no model {model_id!r} is desired or running")
        return detail

    @router.get("/gpus", response_model=list[GpuOut], responses=_errors(503))
    def gpus() -> list[GpuOut]:
        """The GPU inventory in force and the memory each model holds on each GPU."""
        from reconciler.gpus import InventoryError

        try:
            return list_gpus(views)
        except InventoryError as exc:
            raise HTTPException(503, f"GPU inventory unavailable: {exc}") from exc

    @router.get("/plan", response_model=PlanOut, responses=_errors(503))
    def plan() -> PlanOut:
        """What the next pass would do now (a dry run: nothing is changed)."""
        from reconciler.gpus import InventoryError

        try:
            result = views.plan_memo.get(None, lambda: preview_plan(daemon.reconciler))
        except InventoryError as exc:
            raise HTTPException(503, f"GPU inventory unavailable: {exc}") from exc
        return plan_out(result)

    @router.get("/events", response_model=list[EventOut])
    def events(
        limit: int = Query(EVENTS_DEFAULT, ge=1, le=EVENTS_MAX),
        since: float | None = Query(None, description="only events after this unix time"),
        model: str | None = Query(None, max_length=253, description="only this model's"),
        kind: str | None = Query(None, max_length=64, description="only this kind"),
    ) -> list[dict[str, Any]]:
        """Recent events from events.jsonl, oldest first."""
        return read_recent_events(views.events_path, limit, since, model, kind)

    @router.get(
        "/events/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def event_stream_route(
        after: int | None = Query(None, ge=0, description="continue after this event id"),
        last_event_id: str | None = Header(None, max_length=32),
    ) -> StreamingResponse:
        """Server-sent events: each new event as one JSON `data:` line, `id:` its cursor."""
        start = _start_cursor(views, after, last_event_id)
        return StreamingResponse(
            event_stream(views, feed, start, lambda: _stopping(daemon)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/history", response_model=list[HistoryOut])
    def history(limit: int = Query(20, ge=1, le=200)) -> list[dict[str, Any]]:
        """Commits that changed desired state, newest first, and what became of each here."""
        return views.history(limit)

    return router


def _actions(daemon: Any, views: Views) -> APIRouter:
    router = APIRouter(tags=["actions"])
    token = _options(daemon, "api_token") or None
    secret = _options(daemon, "webhook_secret") or None
    branch = _options(daemon, "branch", "main") or "main"

    @router.post(
        "/reconcile", status_code=202, response_model=AcceptedOut, responses=_errors(401, 403)
    )
    def reconcile(request: Request) -> AcceptedOut:
        """Run a reconcile pass now (bearer token)."""
        authorize(request, token)
        daemon.controller.trigger("api")
        return AcceptedOut(status="accepted", detail="a reconcile pass is queued")

    @router.post(
        "/models/{model_id}/restart",
        status_code=202,
        response_model=AcceptedOut,
        responses=_errors(401, 403, 404),
    )
    def restart(request: Request, model_id: str = PathParam(max_length=253)) -> AcceptedOut:
        """Restart a model's engine, clearing a given-up error (bearer token)."""
        authorize(request, token)
        if model_id not in views.specs():  # also keeps arbitrary names out of the file system
            raise HTTPException(404, f"no model {model_id!r} in the desired state in force")
        daemon.reconciler.request_restart(model_id)
        daemon.controller.trigger(f"restart {model_id} (api)")
        return AcceptedOut(status="accepted", detail=f"{model_id} restarts in the next pass")

    @router.post(
        "/hooks/git",
        status_code=202,
        response_model=AcceptedOut,
        responses={200: {"model": AcceptedOut}, **_errors(400, 401, 413, 503)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PushEvent.model_json_schema()}},
            }
        },
    )
    async def git_hook(request: Request) -> Any:
        """A push from GitHub, Gitea or Forgejo (HMAC-SHA256 signed): fetch and reconcile."""
        if not secret:
            raise HTTPException(
                503, "webhook disabled: set RECONCILER_WEBHOOK_SECRET (the secret of the hook)"
            )
        body = await read_limited(request)
        if not signature_valid(secret, body, request.headers):
            log.warning("webhook with a missing or wrong signature from %s", request.client)
            raise HTTPException(401, "missing or wrong webhook signature")
        payload = push_payload(body, request.headers.get("content-type", ""))
        return _on_push(daemon, branch, webhook_event(request.headers, payload), payload)

    return router


def _on_push(daemon: Any, branch: str, event: str, payload: Mapping[str, Any]) -> Any:
    if event == "ping":
        return JSONResponse({"status": "pong", "detail": "webhook configured"}, status_code=200)
    if event != "push":
        return AcceptedOut(status="ignored", detail=f"{event} events are not followed")
    ref = payload.get("ref")
    if ref != f"refs/heads/{branch}":
        return AcceptedOut(status="ignored", detail=f"push to {ref}, not refs/heads/{branch}")
    if payload.get("deleted"):
        return AcceptedOut(status="ignored", detail=f"{branch} was deleted: nothing to fetch")
    after = str(payload.get("after") or "")[:12]
    with contextlib.suppress(Exception):  # the record is for operators; it must not fail the hook
        daemon.reconciler.event("webhook", None, f"push to {branch} {after}".rstrip())
    daemon.controller.fetch_now("webhook")
    return AcceptedOut(status="accepted", detail=f"fetching {branch} and reconciling")


def _dashboard(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = WEB_DIR / "index.html"
        if not page.is_file():  # installed without its package data
            return JSONResponse({"detail": f"dashboard files missing from {WEB_DIR}"}, 404)
        return FileResponse(page, headers=DASHBOARD_HEADERS)

    if WEB_DIR.is_dir():
        app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
