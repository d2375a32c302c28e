"""Every host's gateway serves the whole fleet: the routing table a host's view of a fleet makes
(core.fleet.host_view -> build_routes), its JSON, how the table picks among hosts, what goes to
another host's gateway (the fleet key, the `model`), and the daemon's news about the hosts.

The expected tables are written out by hand, or computed by a model of the rule written here
(never by the code under test)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.cluster import ClusterSpec, DeclaredGPU, HostSpec
from reconciler.core.desired import DesiredState
from reconciler.core.events import EventKind
from reconciler.core.fleet import host_view
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import ModelSpec
from reconciler.gateway.errors import FORWARDED_HEADER, Refusal
from reconciler.gateway.peer_watch import PeerWatch, peers_of
from reconciler.gateway.peers import FleetKey, fleet_key_refusal, passed_back, peer_model
from reconciler.gateway.routes import (
    ApiKey,
    GatewaySettings,
    RouteInstance,
    RouteModel,
    Routes,
    build_routes,
    parse_routes,
)
from reconciler.gateway.table import Instance, Table

GATEWAYS = {"a": "http://10.0.0.1:8000", "b": "http://10.0.0.2:8000/", "c": "https://c.lan:9443"}
PEER_URL = {"a": "http://10.0.0.1:8000", "b": "http://10.0.0.2:8000", "c": "https://c.lan:9443"}
"""each host's gateway as a peer instance's URL: no trailing slash"""


def engine(model_id: str, hosts: list[str] | None, **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": model_id,
            "framework": "llama_cpp",
            "model_path": f"/models/{model_id}.gguf",
            "resource_requirements": {"gpu_memory_mb": 1000},
            "hosts": hosts,
            **fields,
        }
    )


def hosted(model_id: str) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": model_id,
            "framework": "remote",
            "endpoint": "https://api.example.com/v1",
            "upstream_model": "gpt-x",
        }
    )


def fleet(*specs: ModelSpec) -> DesiredState:
    gpus = [DeclaredGPU(index=0, memory_mb=24000)]
    hosts = {name: HostSpec(gpus=gpus, gateway=url) for name, url in GATEWAYS.items()}
    return DesiredState({s.id: s for s in specs}, ClusterSpec(), hosts=hosts)


def running(model_id: str, port: int) -> InstanceRecord:
    return InstanceRecord(id=model_id, status=Status.running, port=port, pid=1000 + port)


def shape(route: RouteModel) -> tuple[str, str | None, list[tuple[str, str, str]]]:
    """(status, local_status, [(host or 'here', url, id)...]) of a route."""
    instances = [(i.host or "here", i.url, i.id) for i in route.instances]
    return route.status, route.local_status, instances


# -- build_routes for a host's view ------------------------------------------------------------


def test_a_host_routes_its_own_models_locally_first_and_the_rest_to_the_hosts_that_run_them():
    desired = fleet(
        engine("mine", ["a"]),
        engine("theirs", ["b"], aliases=["chat"], fallback="mine"),
        engine("shared", ["c", "a", "b"]),
        hosted("cloud"),
    )
    records = {"mine": running("mine", 8101), "shared": running("shared", 8102)}
    routes = build_routes(host_view(desired, "a"), records)
    assert shape(routes.models["mine"]) == (
        "running",
        "running",
        [("here", "http://127.0.0.1:8101", "mine")],
    )
    assert shape(routes.models["theirs"]) == (
        "running",
        "elsewhere",
        [("b", "http://10.0.0.2:8000", "theirs@b")],
    )
    assert shape(routes.models["shared"]) == (
        "running",
        "running",
        [
            ("here", "http://127.0.0.1:8102", "shared"),
            ("c", "https://c.lan:9443", "shared@c"),
            ("b", "http://10.0.0.2:8000", "shared@b"),
        ],
    )
    theirs = routes.models["theirs"]
    assert (theirs.aliases, theirs.fallback, theirs.hosts) == (("chat",), "mine", ("b",))
    assert all(i.peer for i in theirs.instances)
    assert routes.models["shared"].hosts == ("c", "a", "b")
    cloud = routes.models["cloud"]
    assert cloud.hosts == () and cloud.local_status is None and cloud.remote is not None


def test_a_host_whose_gateway_is_down_is_left_out_and_a_model_only_it_runs_is_in_error():
    desired = fleet(
        engine("theirs", ["b"]),
        engine("shared", ["a", "b", "c"]),
        engine("off", ["b"], enabled=False),
    )
    starting = {"shared": InstanceRecord(id="shared", status=Status.starting)}
    view = host_view(desired, "a")
    one_down = build_routes(view, starting, down_hosts={"b"})
    assert shape(one_down.models["theirs"]) == ("error", "elsewhere", [])
    # its own instance starts: the other host that answers serves meanwhile
    assert shape(one_down.models["shared"]) == (
        "running",
        "starting",
        [("c", "https://c.lan:9443", "shared@c")],
    )
    assert one_down.models["off"].status == "disabled"
    all_down = build_routes(view, starting, down_hosts={"b", "c"})
    assert shape(all_down.models["shared"]) == ("starting", "starting", [])  # it waits for its own
    preempted = {"shared": InstanceRecord(id="shared", status=Status.preempted)}
    assert build_routes(view, preempted, down_hosts={"b", "c"}).models["shared"].status == (
        "preempted"
    )


def test_outside_a_fleet_the_table_is_as_it_always_was():
    spec = engine("solo", None)
    desired = DesiredState({"solo": spec}, ClusterSpec())
    route = build_routes(desired, {"solo": running("solo", 8100)}).models["solo"]
    assert shape(route) == ("running", None, [("here", "http://127.0.0.1:8100", "solo")])
    assert route.hosts == ()


HOST_NAMES = ["a", "b", "c"]


@settings(max_examples=150, deadline=None)
@given(
    placements=st.lists(
        st.lists(st.sampled_from(HOST_NAMES), min_size=1, max_size=3, unique=True),
        min_size=1,
        max_size=5,
    ),
    here=st.sampled_from(HOST_NAMES),
    down=st.sets(st.sampled_from(HOST_NAMES)),
    ready=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_each_route_lists_this_hosts_ready_instance_then_every_other_host_that_answers(
    placements: list[list[str]], here: str, down: set[str], ready: list[bool]
) -> None:
    specs = [engine(f"m{n}", hosts) for n, hosts in enumerate(placements)]
    records = {f"m{n}": running(f"m{n}", 8100 + n) for n in range(len(specs)) if ready[n]}
    routes = build_routes(host_view(fleet(*specs), here), records, down_hosts=down)
    for n, hosts in enumerate(placements):
        model_id = f"m{n}"
        runs_here = here in hosts
        local = ["here"] if runs_here and ready[n] else []
        peers = [h for h in hosts if h != here and h not in down]
        route = routes.models[model_id]
        assert [i.host or "here" for i in route.instances] == local + peers
        if local or peers:
            expected = "running"
        elif runs_here:
            expected = "starting"  # enabled, not running, no record yet: about to start
        else:
            expected = "error"
        assert route.status == expected
        assert route.local_status == (
            ("running" if local else "starting") if runs_here else "elsewhere"
        )


# -- the routing table's JSON ------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)


@st.composite
def fleet_models(draw: st.DrawFn) -> RouteModel:
    model_id = draw(names)
    hosts = draw(st.lists(st.sampled_from(HOST_NAMES), max_size=3, unique=True))
    here = draw(st.booleans())
    local = (
        [RouteInstance(f"http://127.0.0.1:{draw(st.integers(1024, 65535))}", id=model_id)]
        if here
        else []
    )
    peers = [RouteInstance(PEER_URL[h], id=f"{model_id}@{h}", host=h, peer=True) for h in hosts]
    return RouteModel(
        id=model_id,
        status=draw(st.sampled_from(["running", "starting", "error", "disabled"])),
        aliases=tuple(draw(st.lists(names, max_size=2))),
        fallback=draw(st.none() | names),
        instances=tuple(local + peers),
        hosts=tuple(hosts),
        local_status=draw(st.none() | st.sampled_from(["running", "elsewhere", "preempted"])),
    )


@settings(max_examples=100, deadline=None)
@given(
    models=st.lists(fleet_models(), max_size=4, unique_by=lambda m: m.id),
    host=st.sampled_from(["", *HOST_NAMES]),
    key_env=st.none() | st.from_regex(r"RECONCILER_SECRET_[A-Z0-9_]{1,12}", fullmatch=True),
    generation=st.integers(0, 2**40),
)
def test_routes_with_peer_instances_survive_their_json(
    models: list[RouteModel], host: str, key_env: str | None, generation: int
) -> None:
    settings_ = GatewaySettings(
        host=host,
        fleet_key_env=key_env,
        api_keys=(ApiKey("client", "RECONCILER_SECRET_CLIENT"),),
    )
    routes = Routes({m.id: m for m in models}, settings_, generation)
    assert parse_routes(routes.to_json()) == routes


# -- the table: hosts among instances ----------------------------------------------------------


def table_of(*models: RouteModel) -> Table:
    table = Table()
    table.load(Routes({m.id: m for m in models}, GatewaySettings(host="a"), 1))
    return table


def peer(model_id: str, host: str) -> RouteInstance:
    return RouteInstance(PEER_URL[host], id=f"{model_id}@{host}", host=host, peer=True)


def test_two_models_forwarded_to_one_host_keep_their_own_counts():
    table = table_of(
        RouteModel("x", "running", instances=(peer("x", "b"),)),
        RouteModel("y", "running", instances=(peer("y", "b"),)),
    )
    x, y = table.entries["x"].instances[0], table.entries["y"].instances[0]
    assert x is not y and (x.url, y.url) == (PEER_URL["b"], PEER_URL["b"])
    assert (x.model, x.host, x.peer) == ("x", "b", True)
    report = table.inflight_report()["instances"]
    assert {k: v["peer"] for k, v in report.items()} == {
        f"{PEER_URL['b']}#x": True,
        f"{PEER_URL['b']}#y": True,
    }


def test_a_host_that_refused_is_skipped_while_a_local_engine_that_failed_is_only_tried_last():
    table = table_of(
        RouteModel(
            "m",
            "running",
            instances=(RouteInstance("http://127.0.0.1:8100", id="m"), peer("m", "b")),
            routing="least_outstanding",
        )
    )
    entry = table.entries["m"]
    local, remote_host = entry.instances
    remote_host.down_until = 1e18  # refused a moment ago
    assert [table.pick(entry, set()) for _ in range(3)] == [local, local, local]
    assert table.pick(entry, {local.key}) is None  # no other host to try: fallback or 503
    local.down_until = 1e18
    remote_host.down_until = 0.0
    local.inflight = 0
    remote_host.inflight = 5
    assert table.pick(entry, set()) is remote_host  # a failed engine goes last, not away


def test_a_forwarded_request_sees_only_this_hosts_instances():
    table = table_of(
        RouteModel(
            "m",
            "running",
            instances=(peer("m", "b"),),
            local_status="starting",
            hosts=("a", "b"),
        ),
        RouteModel("far", "running", instances=(peer("far", "c"),), local_status="elsewhere"),
    )
    m, far = table.entries["m"], table.entries["far"]
    assert m.ready() and not m.ready_here() and m.local_status() == "starting"
    assert far.ready() and not far.ready_here() and far.local_status() == "elsewhere"
    assert m.peer_keys() == {f"{PEER_URL['b']}#m"}
    # the daemon's demand watch reads this host's own status (it starts this host's engines)
    assert table.inflight_report()["models"]["m"]["status"] == "starting"


# -- what another host's gateway gets -----------------------------------------------------------

FLEET = "RECONCILER_SECRET_FLEET"
FLEET_VALUE = "fleet-0123456789abcdefghijklmnopqrstuv"


def test_the_fleet_key_goes_only_to_gateways_whose_host_its_hosts_variable_lists():
    environ = {FLEET: FLEET_VALUE, f"{FLEET}_HOSTS": "10.0.0.2, c.lan"}
    assert fleet_key_refusal(FLEET, "http://10.0.0.2:8000", environ) is None
    assert fleet_key_refusal(FLEET, "https://C.LAN:9443", environ) is None
    refusal = fleet_key_refusal(FLEET, "http://10.0.0.9:8000", environ)
    assert (
        refusal is not None and "10.0.0.9 is not listed in RECONCILER_SECRET_FLEET_HOSTS" in refusal
    )
    assert FLEET_VALUE not in refusal
    unset = fleet_key_refusal(FLEET, "http://10.0.0.2:8000", {f"{FLEET}_HOSTS": "10.0.0.2"})
    assert unset == f"{FLEET} is not set in the gateway's environment"


def test_a_forwarded_request_carries_this_host_and_the_fleet_key_never_the_clients():
    environ = {FLEET: FLEET_VALUE, f"{FLEET}_HOSTS": "10.0.0.2"}
    keys = FleetKey(environ)
    settings_ = GatewaySettings(host="a", fleet_key_env=FLEET)
    to_b = Instance(PEER_URL["b"], "m", host="b", peer=True)
    client = {"Content-Type": "application/json"}  # the relay never takes the client's key
    headers = keys.headers(dict(client), settings_, "m", to_b)
    assert headers == {
        "Content-Type": "application/json",
        FORWARDED_HEADER: "a",
        "User-Agent": "reconciler-gateway",
        "Authorization": f"Bearer {FLEET_VALUE}",
    }
    to_c = Instance(PEER_URL["c"], "m", host="c", peer=True)
    try:
        keys.headers(dict(client), settings_, "m", to_c)
        raise AssertionError("the key went to a host its _HOSTS does not list")
    except Refusal as refusal:
        assert (refusal.status, refusal.code) == (502, "fleet_key_withheld")
    no_key = keys.headers(dict(client), GatewaySettings(host="a"), "m", to_c)
    assert "Authorization" not in no_key and no_key[FORWARDED_HEADER] == "a"


def test_the_other_gateway_gets_the_clients_name_for_the_model_or_the_fallbacks_id():
    table = table_of(
        RouteModel("m", "running", aliases=("chat",), instances=(peer("m", "b"),)),
        RouteModel("small", "running", instances=(peer("small", "c"),)),
    )
    m, small = table.entries["m"], table.entries["small"]
    assert peer_model({"model": "chat"}, m) == "chat"
    assert peer_model({"model": "m"}, m) == "m"
    assert peer_model({"model": "chat"}, small) == "small"  # m's fallback answers instead


def test_who_answered_comes_back_from_the_other_gateway():
    out = {"X-Reconciler-Model": "m", "X-Reconciler-Instance": "m@b"}
    passed_back(out, {"x-reconciler-model": "small", "x-reconciler-instance": "small.1"}, "b")
    assert out == {
        "X-Reconciler-Model": "small",
        "X-Reconciler-Instance": "small.1",
        "X-Reconciler-Host": "b",
    }
    out = {}
    passed_back(out, {"x-reconciler-host": "b", "retry-after": "7"}, "b")
    assert out == {"X-Reconciler-Host": "b", "Retry-After": "7"}


# -- the daemon's probes -----------------------------------------------------------------------


def test_the_daemon_reports_a_host_that_stops_answering_and_again_when_it_answers():
    view = host_view(fleet(engine("m", ["a", "b"])), "a")
    assert peers_of(view) == {"b": PEER_URL["b"], "c": PEER_URL["c"]}
    answers: dict[str, str | None] = {PEER_URL["b"]: None, PEER_URL["c"]: None}
    asked: list[str] = []
    watch = PeerWatch(lambda: view, asked.append, probe=lambda url, _t: answers[url])
    try:
        assert watch.probe_all() == [] and watch.down() == {}
        assert watch.news(peers_of(view)) == []
        answers[PEER_URL["b"]] = "connection refused by http://10.0.0.2:8000"
        assert watch.probe_all() == [
            "host b: unreachable (connection refused by http://10.0.0.2:8000)"
        ]
        assert set(watch.down()) == {"b"}
        assert watch.news(peers_of(view)) == [
            (EventKind.error, "host b: unreachable (connection refused by http://10.0.0.2:8000)")
        ]
        assert watch.probe_all() == [] and watch.news(peers_of(view)) == []  # no news
        answers[PEER_URL["b"]] = None
        assert watch.probe_all() == ["host b: answering"]
        assert watch.news(peers_of(view)) == [(EventKind.recovered, "host b: answering")]
        assert watch.down() == {}
    finally:
        watch.stop()
    assert peers_of(DesiredState({}, ClusterSpec())) == {}
