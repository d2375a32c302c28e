"""What the API shows, read from the files the daemon writes (the API runs in a process of its
own), and the values it computes once and shares: a file parsed once per content, a value
refreshed at most once per interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from reconciler.api.api_service import DaemonLink
from reconciler.api.responses import MemoryOut, ModelSummary, RevisionOut
from reconciler.core.cluster import ClusterSpec
from reconciler.core.estimate import MemoryFigures
from reconciler.core.instance import InstanceRecord
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.serving import instances
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Engine, Handle
from reconciler.engines.registry import engines
from reconciler.loop.bulletin import Bulletin, PlanDigest, decode, digest
from reconciler.loop.memory import MEMORY_FILE, parse_learned
from reconciler.source import commits as git_history
from reconciler.source import repo as git_repo
from reconciler.state.directory import BULLETIN_FILE, EVENTS_FILE, LAST_VALID_FILE, STATE_FILE
from reconciler.state.reading import CorruptState, read_state
from reconciler.state.statefile import State

log = logging.getLogger("reconciler.api")

T = TypeVar("T")


class ParsedFile(Generic[T]):
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


class Background(Generic[T]):
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


class Memo(Generic[T]):
    """One value computed at most once per `ttl_s` and per key, by one thread at a time."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entry: tuple[object, T] | None = None  # (key, value); None until computed
        self._at = 0.0

    def get(self, key: object, compute: Callable[[], T]) -> T:
        with self._lock:
            entry = self._entry
            if entry is None or key != entry[0] or time.monotonic() - self._at > self.ttl_s:
                entry = self._entry = (key, compute())
                self._at = time.monotonic()
            return entry[1]


LOG_LINES = 50


@dataclass(frozen=True)
class ApiSettings:
    """Host settings of the API (flags and RECONCILER_* variables, never git)."""

    api_token: str | None = None
    webhook_secret: str | None = None
    branch: str = "main"
    """the branch whose pushes the webhook follows"""
    gateway_url: str | None = None
    """the gateway's base address (http://host:port) when `run` serves one: its traffic shows"""


@dataclass(frozen=True)
class DaemonFiles:
    """Where the daemon the API serves keeps its files."""

    state_dir: Path
    desired_dir: Path
    """the desired-state directory the loop reads (in remote mode, inside its checkout)"""
    run_id: str | None = None
    """the daemon run whose bulletin counts (None: any)"""


def _parse_state(path: Path, _data: bytes) -> State | None:
    # read_state checks the end marker and the shape; if the file was replaced since `_data`
    # was read, the next call sees new bytes and parses once more
    try:
        return read_state(path)
    except CorruptState:
        return None


def _parse_desired(_path: Path, data: bytes) -> tuple[dict[str, ModelSpec], ClusterSpec]:
    """(specs by id, cluster) of the last valid desired state, as the reconciler recorded it:
    one spec per engine instance, as the loop sees them (`replicas: 2` is `m` and `m.1`)."""
    doc = json.loads(data)
    written = (ModelSpec.model_validate(m) for m in doc.get("models", []))
    specs = {copy.id: copy for spec in written for copy in instances(spec)}
    return specs, ClusterSpec.model_validate(doc["cluster"])


class Views:
    """What the API shows of one daemon; shared by every route."""

    def __init__(
        self,
        files: DaemonFiles,
        settings: ApiSettings,
        link: DaemonLink | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.files = files
        self.settings = settings
        self.link = link
        """None when no daemon listens (actions and metrics answer 503)"""
        self.stopping = stopping
        """the server is shutting down: streams end, so that it can stop"""
        self.state_dir = files.state_dir
        self.desired_dir = files.desired_dir
        self.events_path = self.state_dir / EVENTS_FILE
        # read on every request (a client that saw a change elsewhere, say in the gateway, must
        # see it here too), parsed only when the bytes changed
        self._state_file = ParsedFile(self.state_dir / STATE_FILE, _parse_state)
        self._desired_file = ParsedFile(self.state_dir / LAST_VALID_FILE, _parse_desired)
        self._bulletin_file = ParsedFile(self.state_dir / BULLETIN_FILE, self._parse_bulletin)
        self._learned_file = ParsedFile(self.state_dir / MEMORY_FILE, lambda _, b: parse_learned(b))
        self._engines: dict[str, Engine] | None = None
        self.gpu_memo: Memo[list[GPUInfo]] = Memo(2.0)
        self.history_memo: Memo[list[dict[str, object]]] = Memo(15.0)
        self.tree_memo: Memo[RevisionOut] = Memo(5.0)
        self.models_memo: Memo[tuple[list[ModelSummary], bytes]] = Memo(1.0)
        self._commits: dict[str, RevisionOut] = {}

    # the loop, as its last bulletin says

    def _parse_bulletin(self, _path: Path, data: bytes) -> Bulletin | None:
        found = decode(data)
        run_id = self.files.run_id
        return found if run_id is None or found.run_id == run_id else None

    def bulletin(self) -> Bulletin | None:
        return self._bulletin_file.get()

    def passes(self) -> int:
        found = self.bulletin()
        return found.passes if found else 0

    def first_pass_done(self) -> bool:
        """This run's daemon has published a pass: what the API shows is its view, not what an
        earlier run left."""
        return self.passes() > 0

    def last_plan(self) -> PlanDigest | None:
        found = self.bulletin()
        return digest(found.plan) if found and found.plan else None

    # state, specs, engines

    def state(self) -> State | None:
        """As the loop's last pass left it (the bulletin's copy); before this run's first pass,
        the state file."""
        found = self.bulletin()
        if found is not None and found.state is not None:
            return found.state
        return self._state_file.get()

    def specs(self) -> Mapping[str, ModelSpec]:
        """The specs in force (the last valid desired state) by id."""
        parsed = self._desired_file.get()
        return parsed[0] if parsed else {}

    def cluster(self) -> ClusterSpec | None:
        parsed = self._desired_file.get()
        return parsed[1] if parsed else None

    def memory(
        self, model_id: str, spec: ModelSpec | None, state: InstanceRecord | None
    ) -> MemoryOut | None:
        """Estimated, measured and peak memory of the spec in force (or of what runs): as the
        loop's last pass knew them; before its first pass, what memory.json says was learned."""
        found = self.bulletin()
        if found is not None:
            known = found.memory.get(model_id)
        else:
            spec_hash = (state.spec_hash if state else None) or (spec.spec_hash() if spec else None)
            learned = self._learned_file.get() or {}
            known = learned.get(model_id, {}).get(spec_hash) if spec_hash else None
        if known is None or known == MemoryFigures():
            return None
        return MemoryOut(
            estimated_mb=known.estimated_mb,
            measured_mb=known.measured_mb,
            peak_mb=known.peak_mb,
            measured_by=known.measured_by,
        )

    def handles(self, model_id: str) -> list[Handle]:
        """The engines of a model, as the last pass observed them."""
        found = self.bulletin()
        return list(found.handles.get(model_id, ())) if found else []

    def engines(self) -> dict[str, Engine]:
        """This host's engines, made once (for their logs)."""
        if self._engines is None:
            self._engines = engines(self.state_dir)
        return self._engines

    def logs(self, model_id: str, state: InstanceRecord | None) -> list[str]:
        handles = sorted(self.handles(model_id), key=lambda h: (h.alive, h.started_at))
        for handle in reversed(handles):  # the live engine first, else the last one that ran
            engine = self.engines().get(handle.framework)
            if engine is not None:
                with contextlib.suppress(Exception):
                    return list(engine.logs(handle, LOG_LINES))
        return list(state.last_log_lines) if state else []

    # git

    def head_sha(self) -> str | None:
        try:
            repo = git_repo.open_repo(self.desired_dir)
            if repo is None:
                return None
            with contextlib.closing(repo):
                return git_repo.ref_sha(repo)
        except Exception:  # a repository being rewritten under us: the next request sees it
            return None

    def revision(self, state: State | None) -> RevisionOut:
        """The applied revision: the state file's commit, or, when the working tree was
        applied (no commit recorded), the commit it sits on and whether it had edits."""
        if state is not None and state.revision:
            described = self._commits.get(state.revision) or self._describe(state.revision)
            return described.model_copy(update={"dirty": state.revision_dirty})
        return self.tree_memo.get(self.head_sha(), lambda: self._describe(None))

    def _describe(self, sha: str | None) -> RevisionOut:
        """A commit (HEAD for None). Found commits are kept: they never change."""
        out = RevisionOut(sha=sha, short=sha[:12] if sha else None)
        try:
            directory = self.desired_dir
            repo = git_repo.open_repo(directory)
            if repo is None:
                return out
            with contextlib.closing(repo):
                commit = git_repo.resolve(repo, sha) if sha else git_repo.head_commit(repo)
                if commit is None:
                    return out
                rev = git_repo.revision_of(commit)
                dirty = sha is None and bool(
                    git_repo.uncommitted(repo, git_repo.relative_dir(repo, directory))
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

    def history(self, limit: int) -> list[dict[str, object]]:
        state = self.state()
        key = (self.head_sha(), state.revision if state else None, limit)
        return self.history_memo.get(key, lambda: self._history(limit))

    def _history(self, limit: int) -> list[dict[str, object]]:
        try:
            record = git_history.read_applied(self.state_dir)
            entries = git_history.history(self.desired_dir, limit, record)
            return [e.to_dict() for e in entries]
        except Exception as exc:  # no repository, no history support yet: nothing to show
            log.debug("history unavailable: %s", exc)
            return []
