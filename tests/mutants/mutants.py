"""The deliberate faults of `make mutants`: each names a file, an exact snippet of it, what the
snippet becomes, and the tests that must notice (unit tests, and for the gateway the integration
tests that run it as a process in front of stand-in engines). A snippet must occur exactly once
in its file; when the code it names is rewritten, the mutant must be rewritten with it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    """the fault, as a user would notice it"""
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]


# cheap example-based tests first: with -x a mutant is usually killed in the first file
SCHEDULE = (
    "tests/unit/test_scenarios.py",
    "tests/unit/test_schedule.py",
    "tests/unit/test_plan.py",
    "tests/unit/test_victim_properties.py",
    "tests/unit/test_schedule_properties.py",
)
RETRY = ("tests/unit/test_retry.py",)
HEALTH = ("tests/unit/test_health.py",)
# the gateway's own process and real stand-in engines: the fault tests first (they are shorter)
GATEWAY = ("tests/integration/test_gateway_faults.py", "tests/integration/test_gateway.py")
ACTIVATION = ("tests/unit/test_activation.py",)
ONE_PLAN = ("tests/unit/test_plan_pass.py",)
REPLICAS = ("tests/unit/test_replicas.py",)

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "a model may preempt one of equal priority",
        "reconciler/core/schedule/passes.py",
        "self._evaluate(d, d.priority, d.priority, None, ())",
        "self._evaluate(d, d.priority, d.priority + 1, None, ())",
        SCHEDULE,
    ),
    Mutant(
        "reserved_memory_mb is ignored",
        "reconciler/core/schedule/values.py",
        "max(0, g.memory_total - reserved_mb - g.unmanaged_mb)",
        "max(0, g.memory_total - g.unmanaged_mb)",
        SCHEDULE,
    ),
    Mutant(
        "a fallback preempts at its own priority, not only below its primary's",
        "reconciler/core/schedule/passes.py",
        "self._evaluate(fallback, effective, power, d.id, (*chain, d.id))",
        "self._evaluate(fallback, effective, effective, d.id, (*chain, d.id))",
        SCHEDULE,
    ),
    Mutant(
        "an unschedulable model's fallback never runs",
        "reconciler/core/schedule/passes.py",
        "if fallback is not None and fallback.id not in chain:",
        "if False and fallback is not None and fallback.id not in chain:",
        SCHEDULE,
    ),
    Mutant(
        "victims are not the fewest: every lower-priority model on the GPU is preempted",
        "reconciler/core/schedule/victims.py",
        "if count is None:\n            count = self._victim_count(g, memory, level)\n",
        "count = len(pool)\n",
        SCHEDULE,
    ),
    Mutant(
        "a converged host restarts its engines",
        "reconciler/core/plan/actions.py",
        "return same and self.running[mid].reusable",
        "return same and self.running[mid].reusable and False",
        SCHEDULE,
    ),
    Mutant(
        "stops do not come before starts",
        "reconciler/core/plan/actions.py",
        "ordered = [*_in_order(stops), *_in_order(preempts), *_in_order(starts)]",
        "ordered = [*_in_order(starts), *_in_order(stops), *_in_order(preempts)]",
        SCHEDULE,
    ),
    Mutant(
        "a port already given in this pass is given again",
        "reconciler/core/schedule/board.py",
        "self.next in self.used or self.next in self.fixed or self.next in self.held",
        "self.next in self.fixed or self.next in self.held",
        SCHEDULE,
    ),
    Mutant(
        "a changed spec does not restart the engine",
        "reconciler/core/plan/make.py",
        "    if obs.spec_hash not in (None, h):\n        return False\n",
        "",
        SCHEDULE,
    ),
    Mutant(
        "lower priority goes first",
        "reconciler/core/schedule/values.py",
        "return (-d.priority, d.id)",
        "return (d.priority, d.id)",
        SCHEDULE,
    ),
    Mutant(
        "a model that gave up is started again without a spec change",
        "reconciler/core/plan/make.py",
        "if obs is not None and obs.given_up and not obs.occupies",
        "if False and obs is not None and obs.given_up and not obs.occupies",
        SCHEDULE,
    ),
    Mutant(
        "restart backoff without a cap",
        "reconciler/core/health.py",
        "return min(min(base_s * (2.0**exponent), cap_s) * factor, cap_s)",
        "return base_s * (2.0**exponent) * factor",
        RETRY,
    ),
    Mutant(
        "restart backoff does not double",
        "reconciler/core/health.py",
        "exponent = min(max(attempt - 1, 0), 64)",
        "exponent = 0",
        RETRY,
    ),
    Mutant(
        "jitter beyond its bounds",
        "reconciler/core/health.py",
        "factor = min(max(jitter, 1.0 - JITTER), 1.0 + JITTER)",
        "factor = jitter",
        RETRY,
    ),
    Mutant(
        "max_retries off by one",
        "reconciler/core/health.py",
        "gave_up = restarts > policy.max_retries",
        "gave_up = restarts >= policy.max_retries",
        RETRY,
    ),
    Mutant(
        "the startup timeout is ignored",
        "reconciler/core/health.py",
        "if now - started_at <= check.startup_timeout_s:",
        "if True:",
        HEALTH,
    ),
    Mutant(
        "failure_threshold off by one",
        "reconciler/core/health.py",
        "if misses < check.failure_threshold:",
        "if misses <= check.failure_threshold:",
        HEALTH,
    ),
    Mutant(
        "the probe timeout is silently capped at 2 s",
        "reconciler/core/health.py",
        "    return check.timeout_s\n",
        "    return min(check.timeout_s, 2.0)\n",
        HEALTH,
    ),
    # -- the gateway ---------------------------------------------------------------------------
    Mutant(
        "an engine's 502/503 is passed to the client instead of failing over",
        "reconciler/gateway/relay.py",
        "RETRY_STATUSES = {502: Failover.http_502, 503: Failover.http_503}",
        "RETRY_STATUSES = {}",
        GATEWAY,
    ),
    Mutant(
        "a dead instance is no longer put last",
        "reconciler/gateway/table.py",
        "key = (down, instance.inflight)",
        "key = (False, instance.inflight)",
        (*GATEWAY, "tests/unit/test_fleet_routes.py"),
    ),
    Mutant(
        "requests no longer go to the instance with the fewest in flight",
        "reconciler/gateway/table.py",
        "key = (down, instance.inflight)",
        "key = (down, 0)",
        GATEWAY,
    ),
    Mutant(
        "the client's model name is sent to the engine instead of the engine's own",
        "reconciler/gateway/relay.py",
        'if payload.get("model") == name:\n        return body',
        "return body",
        GATEWAY,
    ),
    Mutant(
        "the in-flight gauge never goes down",
        "reconciler/gateway/relay.py",
        "self.metrics.inflight_add(target.id, -1)",
        "self.metrics.inflight_add(target.id, 0)",
        GATEWAY,
    ),
    Mutant(
        "every failover is counted as a connection failure",
        "reconciler/gateway/relay.py",
        "self.metrics.failover(target.id, result.reason)",
        "self.metrics.failover(target.id, Failover.connection)",
        GATEWAY,
    ),
    Mutant(
        "a stream is buffered and sent at its end",
        "reconciler/gateway/relay.py",
        "async for chunk in _chained(first_chunk, rest):",
        "for chunk in [c async for c in _chained(first_chunk, rest)]:",
        GATEWAY,
    ),
    Mutant(
        "a full queue's 429 has no Retry-After",
        "reconciler/gateway/errors.py",
        'return Refusal(429, message, "rate_limit_error", "queue_full", retry_after=retry_after)',
        'return Refusal(429, message, "rate_limit_error", "queue_full")',
        GATEWAY,
    ),
    Mutant(
        "no instance answering is a 502 without Retry-After",
        "reconciler/gateway/errors.py",
        'Refusal(503, message, UNAVAILABLE, "upstream_unavailable", retry_after=retry_after)',
        'Refusal(502, message, UNAVAILABLE, "upstream_unavailable")',
        GATEWAY,
    ),
    Mutant(
        "a draining instance still gets new requests",
        "reconciler/gateway/table.py",
        "return self.listed and not self.draining",
        "return self.listed",
        GATEWAY,
    ),
    Mutant(
        "the queue holds one more request than max_queue",
        "reconciler/gateway/server.py",
        "if entry.waiting >= settings.max_queue:",
        "if entry.waiting > settings.max_queue:",
        GATEWAY,
    ),
    # -- on-demand activation ------------------------------------------------------------------
    Mutant(
        "replicas ignore their model's traffic when deciding idleness",
        "reconciler/core/activation.py",
        "seen = traffic.get(model_of(model_id), Traffic())",
        "seen = traffic.get(model_id, Traffic())",
        ACTIVATION,
    ),
    Mutant(
        "an in-use on-demand model is stopped idle_timeout_s after it started",
        "reconciler/core/activation.py",
        "_first_known(seen.last_request_at, running_since.get(model_id), now, 0.0)",
        "_first_known(running_since.get(model_id), seen.last_request_at, now, 0.0)",
        ACTIVATION,
    ),
    Mutant(
        "a request in flight does not make a model wanted",
        "reconciler/core/activation.py",
        "return self.queued > 0 or self.inflight > 0",
        "return self.queued > 0",
        ACTIVATION,
    ),
    Mutant(
        "an idle on-demand model is never stopped for its idle timeout",
        "reconciler/core/activation.py",
        "and idle_s >= spec.idle_timeout_s:",
        "and idle_s >= spec.idle_timeout_s and False:",
        ACTIVATION,
    ),
    Mutant(
        "the most recently used idle engine is stopped first",
        "reconciler/core/activation.py",
        "order = sorted(idle, key=lambda m: (idle[m], m))",
        "order = sorted(idle, key=lambda m: (-idle[m], m))",
        ACTIVATION,
    ),
    Mutant(
        "every idle engine is stopped when one would make room",
        "reconciler/core/activation.py",
        "        if fit(removed) is Fit.free:\n            return removed\n",
        "        if fit(removed) is Fit.free:\n            return frozenset(order)\n",
        ACTIVATION,
    ),
    Mutant(
        "a wanted model preempts a lower priority while an idle engine could have made room",
        "reconciler/core/activation.py",
        "return Fit.preempting if preempted else Fit.free",
        "return Fit.free",
        ONE_PLAN,
    ),
    Mutant(
        "a wanted model that waits for an engine in use to go idle is reported unschedulable",
        "reconciler/core/activation.py",
        "if unplaced and fit(running & decision.keep) is not Fit.unplaced:",
        "if unplaced and fit(frozenset()) is not Fit.unplaced:",
        ONE_PLAN,
    ),
    # -- replicas ------------------------------------------------------------------------------
    Mutant(
        "instance 0 gets a suffix (going to two replicas restarts the first)",
        "reconciler/core/serving.py",
        'return model_id if index == 0 else f"{model_id}{SEPARATOR}{index}"',
        'return f"{model_id}{SEPARATOR}{index}"',
        REPLICAS,
    ),
    Mutant(
        "an instance is not known as its model's (the gateway routes it apart)",
        "reconciler/core/serving.py",
        "return instance.split(SEPARATOR, 1)[0]",
        "return instance",
        REPLICAS,
    ),
    Mutant(
        "only instance 0 of a set-aside model is set aside",
        "reconciler/core/serving.py",
        "broken.update(dict.fromkeys(instance_ids(spec) if spec else [model_id], why))",
        "broken.update(dict.fromkeys([model_id], why))",
        REPLICAS,
    ),
    Mutant(
        "a replicated model shows its first instance's status, not its best",
        "reconciler/gateway/routes.py",
        "status=min(statuses, key=lambda s: _STATUS_RANK.get(s, len(_STATUS_RANK))),",
        "status=statuses[0],",
        REPLICAS,
    ),
    # -- carrying out a plan --------------------------------------------------------------------
    Mutant(
        "a model whose engine could not be stopped is started again beside it",
        "reconciler/loop/execution.py",
        "if not done.ok:",
        "if False:",
        ("tests/unit/test_execution.py",),
    ),
    Mutant(
        "a failed probe that ended between passes is taken for nothing to record",
        "reconciler/loop/supervision.py",
        "ended = self.prober.result(model_id, owner(handle)) is not None",
        "ended = bool(self.prober.result(model_id, owner(handle)))",
        ("tests/unit/test_supervision_probes.py",),
    ),
    # -- the Docker engine -----------------------------------------------------------------------
    Mutant(
        "the Docker daemon is asked before a model's mount is checked",
        "reconciler/engines/docker_runtime.py",
        "            model_mounts(spec.model_path)  # a host path",
        "            self._client()\n            model_mounts(spec.model_path)  # a host path",
        ("tests/security/test_docker_mounts.py",),
    ),
)
