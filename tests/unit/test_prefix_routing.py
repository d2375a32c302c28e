"""Prefix-affinity routing (gateway.affinity, Table.pick with a prefix key): the key function
and the affinity rule, the rule checked against a small model of it written here."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.serving import expand
from reconciler.core.spec import ModelSpec
from reconciler.gateway.affinity import PREFIX_CHARS, Affinity, overloaded, prefix_key
from reconciler.gateway.routes import RouteInstance, RouteModel, Routes, build_routes, parse_routes
from reconciler.gateway.table import Table

roles = st.sampled_from(["system", "user", "assistant"])
texts = st.text(max_size=300)
message = st.fixed_dictionaries({"role": roles, "content": texts})
conversations = st.lists(message, min_size=1, max_size=8)


@given(conversations, st.lists(message, max_size=6))
def test_a_conversation_that_grows_keeps_its_key(start: list, more: list) -> None:
    # everything up to the first user message is the key; turns after it only ever append
    opening = [*start, {"role": "user", "content": "q"}]
    assert prefix_key({"messages": opening}) == prefix_key({"messages": opening + more})


@given(conversations, texts, texts)
def test_a_different_leading_message_gives_a_different_key(rest: list, a: str, b: str) -> None:
    if a[:PREFIX_CHARS] == b[:PREFIX_CHARS]:
        return
    first_a = {"role": "system", "content": a}
    first_b = {"role": "system", "content": b}
    assert prefix_key({"messages": [first_a, *rest]}) != prefix_key({"messages": [first_b, *rest]})


@given(st.text(max_size=PREFIX_CHARS * 2), st.text(max_size=200))
def test_a_completion_keys_on_the_leading_characters_of_its_prompt(prompt: str, more: str) -> None:
    key = prefix_key({"prompt": prompt})
    assert key == prefix_key({"prompt": [prompt]})
    if len(prompt) >= PREFIX_CHARS:
        assert key == prefix_key({"prompt": prompt + more})


def test_the_role_is_part_of_the_key_and_unkeyable_bodies_have_none() -> None:
    user = prefix_key({"messages": [{"role": "user", "content": "x"}]})
    assert user != prefix_key({"messages": [{"role": "system", "content": "x"}]})
    assert prefix_key({"input": ["a", "b"]}) is None
    assert prefix_key({"messages": "not a list"}) is None
    assert prefix_key({"messages": [1, 2]}) is None
    parts = [{"type": "text", "text": "x"}]
    assert prefix_key({"messages": [{"role": "user", "content": parts}]}) is not None


def test_a_huge_body_costs_no_more_than_the_bound() -> None:
    # the work is bounded by PREFIX_CHARS and MAX_MESSAGES, not the body: compare work done
    # (characters touched), not time, so that the test does not depend on the machine
    huge = "x" * 50_000_000
    body = {"messages": [{"role": "system", "content": huge}] * 100_000}
    small = {"messages": [{"role": "system", "content": huge[:PREFIX_CHARS]}]}
    assert prefix_key(body) == prefix_key(small)
    many = {"messages": [{"role": "system", "content": ""}] * 1_000_000}
    assert prefix_key(many) == prefix_key({"messages": many["messages"][:64]})
    parts = [{"type": "text", "text": huge}] * 100_000
    assert prefix_key({"messages": [{"role": "user", "content": parts}]}) is not None


def test_overloaded_is_beyond_the_slack_and_beyond_twice_the_least() -> None:
    assert not overloaded(2, 0) and overloaded(3, 0)
    assert not overloaded(4, 2) and overloaded(5, 2)
    assert not overloaded(100, 50) and overloaded(101, 50)


def test_the_map_forgets_the_least_recently_used_key() -> None:
    affinity = Affinity(capacity=2)
    affinity.served(1, "a")
    affinity.served(2, "b")
    affinity.served(1, "a")  # 1 used again: 2 is the oldest now
    affinity.served(3, "c")
    assert affinity.get(2) is None and affinity.get(1) == "a" and len(affinity) == 2


def table(n: int, routing: str = "prefix") -> Table:
    urls = [f"http://127.0.0.1:{9000 + i}" for i in range(n)]
    ids = ["m"] + [f"m.{i}" for i in range(1, n)]
    instances = tuple(RouteInstance(u, id=i) for u, i in zip(urls, ids, strict=True))
    route = RouteModel("m", "running", instances=instances, routing=routing)
    t = Table()
    t.load(Routes({"m": route}))
    return t


class Oracle:
    """The rule, written plainly: a key goes where it went last unless that instance has more
    than max(least + 2, 2 x least) in flight; a new key, or a moved one, to the least loaded."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}

    def choose(self, key: int, load: list[int]) -> set[int]:
        least = min(load)
        where = self.last.get(key)
        if where is not None and load[where] <= max(least + 2, 2 * least):
            return {where}
        return {i for i, n in enumerate(load) if n == least}  # ties: any of them


operations = st.lists(
    st.tuples(st.sampled_from(["send", "end"]), st.integers(0, 5), st.integers(0, 2)),
    max_size=80,
)


@settings(max_examples=200)
@given(operations)
def test_the_pick_follows_the_rule(ops: list) -> None:
    t = table(3)
    entry = t.entries["m"]
    instances = entry.instances
    oracle = Oracle()
    for op, key, which in ops:
        if op == "end":
            if instances[which].inflight:
                instances[which].inflight -= 1
            continue
        load = [i.inflight for i in instances]
        allowed = oracle.choose(key, load)
        picked = t.pick(entry, set(), key)
        assert picked is not None
        index = instances.index(picked)
        assert index in allowed, (key, load, index, allowed)
        oracle.last[key] = index
        picked.inflight += 1


def test_a_down_or_excluded_instance_gives_its_prefixes_away() -> None:
    t = table(2)
    entry = t.entries["m"]
    first = t.pick(entry, set(), 7)
    assert first is not None and t.pick(entry, set(), 7) is first
    other = t.pick(entry, {first.key}, 7)  # failover: the key moves
    assert other is not None and other is not first
    assert t.pick(entry, set(), 7) is other
    other.down_until = time.monotonic() + 60
    assert t.pick(entry, set(), 7) is first


def test_least_outstanding_ignores_the_key_and_the_ids_name_the_instances() -> None:
    t = table(2, "least_outstanding")
    entry = t.entries["m"]
    assert not entry.by_prefix() and table(2).entries["m"].by_prefix()
    assert not table(1).entries["m"].by_prefix()
    assert [i.id for i in entry.instances] == ["m", "m.1"]
    a = t.pick(entry, set())
    assert a is not None
    a.inflight += 1
    b = t.pick(entry, set())
    assert b is not None and b is not a


def spec(**fields: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": "m", "framework": "llama_cpp", "model_path": "/models/m.gguf", **fields}
    )


def test_routing_defaults_to_prefix_and_restarts_nothing() -> None:
    assert spec().routing == "prefix"
    assert spec(routing="least_outstanding").spec_hash() == spec().spec_hash()


def test_the_routes_carry_routing_and_instance_ids() -> None:
    desired = DesiredState(
        models={"m": spec(replicas=2, routing="least_outstanding")}, cluster=ClusterSpec()
    )
    records = {
        "m": InstanceRecord(id="m", status=Status.running, port=9001),
        "m.1": InstanceRecord(id="m.1", status=Status.running, port=9002),
    }
    routes = build_routes(expand(desired), records)
    route = parse_routes(routes.to_json()).models["m"]
    assert route.routing == "least_outstanding"
    assert [i.id for i in route.instances] == ["m", "m.1"]
