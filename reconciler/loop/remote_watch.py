"""Remote models (`framework: remote`): their records, kept from probes of their endpoints.

A remote model has no process, GPU or port on this host; its record says only whether its
endpoint answers. It is `starting` until its first probe ends, `running` while
`GET <endpoint><health_check.path>` answers 2xx within `timeout_s`, and `error` with the reason
(an HTTP status, a refused connection, a certificate that does not verify, no answer in time)
when not. One failed probe is enough: nothing here restarts, and the gateway sends nothing to
an endpoint whose status is not `running` (its fallback answers instead). A disabled remote
model is `stopped`.

The key goes with the probe (`Authorization: Bearer`, from this process's environment) only
when reconciler.core.secrets allows it for the endpoint's host; otherwise the model is in
`error` with that reason, and no request is sent at all.

Probes run on a Prober of their own (the engines' one forgets the probes of models with no
engine), beside the pass as the engines' do: a pass waits for them at most `probe_wait_s`, and
one that ends later asks for a pass (`prober.on_late`). An endpoint that hangs holds up nothing.
TLS is verified: the system's CAs (and SSL_CERT_FILE), plus the bundle in
RECONCILER_REMOTE_CA_FILE, the same variable the gateway reads.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.core.events import EventKind
from reconciler.core.health import ProbeResult
from reconciler.core.instance import InstanceRecord, Status, transition
from reconciler.core.secrets import remote_key_refusal
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Engine, Handle
from reconciler.engines.prober import Prober
from reconciler.loop.records import Records

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("reconciler.loop.remote_watch")

CA_FILE_ENV = "RECONCILER_REMOTE_CA_FILE"
"""a PEM bundle of CAs trusted for remote endpoints, beside the system's (host setting)"""
USER_AGENT = "reconciler-probe"


# -- what a probe says (pure) -------------------------------------------------------------------


def probe_url(spec: ModelSpec) -> str:
    """The health path is relative to the endpoint: `https://h/v1` + `/models`."""
    return f"{(spec.endpoint or '').rstrip('/')}{spec.health_check.path}"


def failure_reason(result: ProbeResult, timeout_s: float) -> str:
    """Why a probe failed, in an operator's words first (the client's own words after)."""
    if result.status_code is not None:
        return f"HTTP {result.status_code}"
    if result.timed_out:
        return f"no answer within {timeout_s:g}s"
    detail = result.error or "no answer"
    if "CERTIFICATE_VERIFY_FAILED" in detail or "SSL" in detail:
        return f"TLS verification failed ({detail})"
    if "Connection refused" in detail:
        return "connection refused"
    return detail


@dataclass(frozen=True)
class News:
    """An event a status change is worth."""

    kind: EventKind
    message: str


def settle(
    record: InstanceRecord, answered: bool, reason: str | None, now: float
) -> tuple[InstanceRecord, News | None]:
    """The record after a probe (or a withheld key: not answered, with its reason), and the
    event it is worth: the first answer (ready), an answer after an error (recovered), the
    first failure after an answer or none yet (error), or a new reason while in error. Another
    failure for the same reason is no news."""
    if answered:
        was = record.status
        if was == Status.error:  # `running` is reached through `starting` (core.instance)
            record = transition(record, Status.starting, now)
        settled = transition(record, Status.running, now, last_error=None, probe_failures=0)
        if was == Status.error:
            return settled, News(EventKind.recovered, "endpoint answers again")
        if was != Status.running:
            return settled, News(EventKind.ready, "endpoint answered")
        return settled, None
    message = reason or "no answer"
    news = None
    if record.status != Status.error or record.last_error != message:
        news = News(EventKind.error, message)
    failed = transition(record, Status.error, now, last_error=message, probe_failures=0)
    return failed, news


def arrive(record: InstanceRecord, spec: ModelSpec, now: float) -> InstanceRecord:
    """The record of an enabled remote model before its probe: nothing of an engine (a model
    that was local before keeps none of its placement), `starting` unless a probe has spoken."""
    bare = InstanceRecord(
        id=record.id,
        status=record.status,
        spec_hash=spec.spec_hash(),
        restarts_total=record.restarts_total,
        last_error=record.last_error,
        last_transition=record.last_transition,
        started_at=record.started_at,
    )
    if bare.status in (Status.running, Status.error, Status.starting):
        return bare
    return transition(bare, Status.starting, now, started_at=now, last_error=None)


def retire(record: InstanceRecord, now: float) -> InstanceRecord:
    """A disabled remote model: stopped (nothing to stop but the probing)."""
    if record.status == Status.stopped:
        return record
    return transition(
        InstanceRecord(id=record.id, status=record.status, restarts_total=record.restarts_total),
        Status.stopped,
        now,
    )


# -- the shell --------------------------------------------------------------------------------


class RemoteWatch:
    """Keeps the records of the remote models in force; one per Reconciler."""

    def __init__(
        self,
        records: Records,
        engines: Mapping[str, Engine],
        *,
        stop_grace_s: float,
        environ: Mapping[str, str] = os.environ,
        probe_wait_s: float | None = None,
    ) -> None:
        self.records = records
        self.engines = engines
        self.stop_grace_s = stop_grace_s
        self.environ = environ
        self.probe_wait_s = probe_wait_s
        """how long a pass waits for the probes it started; None: until they end"""
        self.prober = Prober()
        self.last_probe: dict[str, tuple[float, float]] = {}
        """model id -> (time of its last probe, its interval)"""
        self._clients: dict[str, tuple[object, httpx.Client]] = {}
        self.watched: frozenset[str] = frozenset()
        """the remote models of the last pass"""

    def watch(
        self,
        specs: Mapping[str, ModelSpec],
        states: Mapping[str, InstanceRecord],
        handles: Mapping[str, list[Handle]],
        now: float,
        dry_run: bool,
    ) -> dict[str, InstanceRecord]:
        """The records of the remote models `specs` after this pass's probes. A dry run sends
        nothing and changes nothing: it shows the records as they are."""
        if dry_run:
            return {m: states[m] for m in specs if m in states}
        self.watched = frozenset(specs)
        self._retire_engines(specs, handles)
        out: dict[str, InstanceRecord] = {}
        probing: list[str] = []
        started: list[str] = []
        for model_id, spec in sorted(specs.items()):
            record = states.get(model_id) or InstanceRecord(id=model_id)
            if not spec.enabled:
                out[model_id] = retire(record, now)
                continue
            fresh = record.spec_hash != spec.spec_hash()  # a new endpoint: probe it now
            record = arrive(record, spec, now)
            refusal = remote_key_refusal(spec, self.environ)
            if refusal is not None:
                out[model_id] = self._record(record, False, f"key withheld: {refusal}", now)
                continue
            out[model_id] = record
            probing.append(model_id)
            if self._due(spec, record, now, fresh) and self._start(spec, now):
                started.append(model_id)
        self.prober.keep(probing)
        for gone in set(self.last_probe) - set(probing):
            del self.last_probe[gone]
        for gone in set(self._clients) - set(probing):
            self._clients.pop(gone)[1].close()
        self.prober.wait(started, self.probe_wait_s)
        for model_id in probing:
            spec = specs[model_id]
            result = self.prober.take(model_id, spec.spec_hash())
            if result is not None:
                out[model_id] = self._judged(out[model_id], spec, result, now)
        return out

    def _due(self, spec: ModelSpec, record: InstanceRecord, now: float, fresh: bool) -> bool:
        if record.status == Status.starting or fresh:
            return True
        last = self.last_probe.get(spec.id)
        return last is None or now - last[0] >= spec.health_check.interval_s

    def _start(self, spec: ModelSpec, now: float) -> bool:
        self.last_probe[spec.id] = (now, spec.health_check.interval_s)
        client = self._client(spec)
        timeout = spec.health_check.timeout_s
        return self.prober.start(spec.id, spec.spec_hash(), probe_url(spec), timeout, client)

    def _judged(
        self, record: InstanceRecord, spec: ModelSpec, result: ProbeResult, now: float
    ) -> InstanceRecord:
        if result.ok:
            return self._record(record, True, None, now)
        reason = failure_reason(result, spec.health_check.timeout_s)
        return self._record(record, False, f"GET {probe_url(spec)}: {reason}", now)

    def _record(
        self, record: InstanceRecord, answered: bool, reason: str | None, now: float
    ) -> InstanceRecord:
        settled, news = settle(record, answered, reason, now)
        if news is not None:
            self.records.event(news.kind, record.id, news.message)
        return settled

    def _retire_engines(
        self, specs: Mapping[str, ModelSpec], handles: Mapping[str, list[Handle]]
    ) -> None:
        """An engine left from when a remote model's spec was a local one: stopped (the planner
        sees no remote model, so nothing else would stop it)."""
        for model_id in sorted(set(specs) & set(handles)):
            for handle in handles[model_id]:
                if handle.alive:
                    message = "stopping its engine: the model is remote now"
                    self.records.event(EventKind.stop, model_id, message)
                engine = self.engines.get(handle.framework)
                if engine is not None:
                    engine.stop(handle, self.stop_grace_s if handle.alive else 0)

    # -- between passes (the daemon) ---------------------------------------------------------

    def next_probe_at(self) -> float | None:
        return min((last + interval for last, interval in self.last_probe.values()), default=None)

    def probe_due(
        self, specs: Mapping[str, ModelSpec], states: Mapping[str, InstanceRecord], now: float
    ) -> bool:
        """The due probes without a pass: True when each answered as its record says (nothing
        to record); False when one says otherwise (the pass that follows takes its result)."""
        due: list[ModelSpec] = []
        for model_id, (last, interval) in sorted(self.last_probe.items()):
            spec = specs.get(model_id)
            if now - last < interval:
                continue
            if spec is None:
                return False
            ended = self.prober.result(model_id, spec.spec_hash()) is not None
            if self._start(spec, now) or ended:
                due.append(spec)
        self.prober.wait([s.id for s in due], self.probe_wait_s)
        for spec in due:
            result = self.prober.result(spec.id, spec.spec_hash())
            if result is None:
                continue
            record = states.get(spec.id)
            if record is None:
                return False
            if result.ok != (record.status == Status.running):
                return False
            reason = failure_reason(result, spec.health_check.timeout_s)
            if not result.ok and record.last_error != f"GET {probe_url(spec)}: {reason}":
                return False
            self.prober.take(spec.id, spec.spec_hash())
        return True

    # -- the host's side ---------------------------------------------------------------------

    def _client(self, spec: ModelSpec) -> httpx.Client:
        """One client per remote model (its key is a header of its own), made again when the
        key or the CA bundle changes."""
        key = self.environ.get(spec.api_key_env) if spec.api_key_env else None
        wanted = (key, self.environ.get(CA_FILE_ENV))
        kept = self._clients.get(spec.id)
        if kept is not None and kept[0] == wanted:
            return kept[1]
        if kept is not None:
            kept[1].close()
        client = remote_client(key, wanted[1])
        self._clients[spec.id] = (wanted, client)
        return client

    def close(self) -> None:
        for _, client in self._clients.values():
            client.close()
        self._clients.clear()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verified: the system's CAs (SSL_CERT_FILE included), plus `ca_file` when set. A bundle
    that cannot be read is logged and left out: an endpoint it would vouch for then fails its
    TLS check, the safe way round."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("$%s (%s) is not a readable CA bundle: %s", CA_FILE_ENV, ca_file, exc)
    return context


def remote_client(key: str | None, ca_file: str | None) -> httpx.Client:
    """A client for one endpoint's probes: its key as a Bearer header, TLS verified, no proxy
    from the environment, no redirect followed (a key goes to no host it was not bound to), and
    a fresh connection per probe (a refused one says the endpoint is down, not a kept socket)."""
    import httpx

    headers = {"User-Agent": USER_AGENT}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(
        trust_env=False,
        verify=tls_context(ca_file),
        headers=headers,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )
