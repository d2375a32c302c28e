"""Remote models in the gateway, without processes: the routing table's JSON, the path and body
an endpoint gets, the key rule as the gateway applies it, the CA bundle, and the table's counts
that max_concurrency and overflow read."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import ModelSpec
from reconciler.gateway.relay import (
    CA_FILE_ENV,
    endpoint_headers,
    endpoint_path,
    key_check,
    tls_context,
    with_model,
)
from reconciler.gateway.routes import (
    ApiKey,
    GatewaySettings,
    OverflowRoute,
    RemoteRoute,
    RouteInstance,
    RouteModel,
    Routes,
    RoutesError,
    build_routes,
    parse_routes,
)
from reconciler.gateway.table import Table

# -- the routing table's JSON ------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
endpoints = st.builds(
    "{}://{}{}".format,
    st.sampled_from(["http", "https"]),
    st.sampled_from(["api.example.com", "127.0.0.1:8443", "box.lan:8080"]),
    st.sampled_from(["", "/v1", "/openai/v1", "/v1/"]),
)
remotes = st.builds(
    RemoteRoute,
    endpoint=endpoints,
    upstream_model=st.text(min_size=1, max_size=30),
    key_env=st.none() | st.from_regex(r"RECONCILER_SECRET_[A-Z0-9_]{1,12}", fullmatch=True),
    max_concurrency=st.none() | st.integers(1, 10_000),
)
overflows = st.builds(OverflowRoute, model=names, queue_over=st.integers(0, 10_000))


@st.composite
def route_models(draw: st.DrawFn) -> RouteModel:
    remote = draw(st.none() | remotes)
    status = draw(st.sampled_from(["running", "starting", "error", "disabled", "preempted"]))
    running_remote = remote is not None and status == "running"
    instances = (RouteInstance(remote.endpoint),) if running_remote and remote else ()
    if remote is None:
        urls = st.builds("http://127.0.0.1:{}".format, st.integers(1024, 65535))
        instances = tuple(
            RouteInstance(u, draining=d)
            for u, d in draw(st.lists(st.tuples(urls, st.booleans()), max_size=3))
        )
    return RouteModel(
        id=draw(names),
        status=status,
        enabled=draw(st.booleans()),
        aliases=tuple(draw(st.lists(names, max_size=2))),
        fallback=draw(st.none() | names),
        served_name=None if remote is not None else draw(st.none() | names),
        instances=instances,
        remote=remote,
        overflow=None if remote is not None else draw(st.none() | overflows),
    )


@given(st.lists(route_models(), max_size=5), st.integers(0, 10**9))
def test_the_routes_json_round_trips_remote_and_overflow_routes(
    models: list[RouteModel], generation: int
) -> None:
    settings = GatewaySettings(api_keys=(ApiKey("ci", "RECONCILER_SECRET_CI"),))
    routes = Routes({m.id: m for m in models}, settings, generation)
    assert parse_routes(routes.to_json()) == routes


def test_the_routes_json_names_the_contracts_keys() -> None:
    cloud = RouteModel(
        "cloud",
        "running",
        instances=(RouteInstance("https://api.example.com/v1"),),
        remote=RemoteRoute("https://api.example.com/v1", "gpt-4o", "RECONCILER_SECRET_OAI", 4),
    )
    local = RouteModel("local", "starting", overflow=OverflowRoute("cloud", 8))
    data = json.loads(Routes({"cloud": cloud, "local": local}).to_json())["models"]
    assert data["cloud"]["remote"] == {
        "endpoint": "https://api.example.com/v1",
        "upstream_model": "gpt-4o",
        "key_env": "RECONCILER_SECRET_OAI",
        "max_concurrency": 4,
    }
    assert data["cloud"]["overflow"] is None and data["local"]["remote"] is None
    assert data["local"]["overflow"] == {"model": "cloud", "queue_over": 8}


def test_a_malformed_remote_route_keeps_the_old_table() -> None:
    text = Routes({"m": RouteModel("m", "running")}).to_json()
    broken = json.loads(text)
    broken["models"]["m"]["remote"] = "https://api.example.com/v1"
    with pytest.raises(RoutesError):
        parse_routes(json.dumps(broken))
    broken["models"]["m"]["remote"] = {"endpoint": "https://x/v1"}  # no upstream_model
    with pytest.raises(RoutesError):
        parse_routes(json.dumps(broken))


# -- what the endpoint gets --------------------------------------------------------------------

PATHS = [
    # endpoint, the client's request target, what the endpoint is asked for
    ("https://api.example.com/v1", "/v1/chat/completions", "/v1/chat/completions"),
    ("https://api.example.com/v1/", "/v1/chat/completions", "/v1/chat/completions"),
    ("https://api.example.com", "/v1/chat/completions", "/chat/completions"),
    ("https://gw.example.com/openai/v1", "/v1/embeddings", "/openai/v1/embeddings"),
    ("http://box.lan:8080/v1", "/v1/completions?x=1", "/v1/completions?x=1"),
    ("https://api.example.com/api/v2", "/v1/responses", "/api/v2/responses"),
]


@pytest.mark.parametrize(("endpoint", "client", "expected"), PATHS)
def test_the_endpoint_path_is_its_own_path_then_the_clients_after_v1(
    endpoint: str, client: str, expected: str
) -> None:
    assert endpoint_path(endpoint, client) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), names, names)
def test_only_the_model_of_the_body_changes(extra: dict, asked: str, upstream: str) -> None:
    payload = {**extra, "model": asked}
    body = json.dumps(payload).encode()
    sent = json.loads(with_model(body, payload, upstream))
    assert sent == {**extra, "model": upstream}
    if asked == upstream:  # nothing to change: the client's bytes as they came
        assert with_model(body, payload, upstream) is body


def test_the_clients_authorization_is_never_forwarded() -> None:
    remote = RemoteRoute("https://api.example.com/v1", "gpt-4o", "RECONCILER_SECRET_OAI")
    client = {"Content-Type": "application/json", "authorization": "Bearer client-key"}
    headers = endpoint_headers(remote, client, "Bearer host-key")
    assert headers["Authorization"] == "Bearer host-key"
    assert "client-key" not in json.dumps(headers)
    assert "client-key" not in json.dumps(endpoint_headers(remote, client, None))


# -- the key -----------------------------------------------------------------------------------

KEY = "sk-0123456789abcdef0123456789"
OAI = RemoteRoute("https://api.example.com/v1", "gpt-4o", "RECONCILER_SECRET_OAI")
KEY_CASES = [
    # environment, header sent (None: none), withheld
    ({"RECONCILER_SECRET_OAI": KEY, "RECONCILER_SECRET_OAI_HOSTS": "api.example.com"}, True, False),
    (
        {"RECONCILER_SECRET_OAI": KEY, "RECONCILER_SECRET_OAI_HOSTS": "API.example.com."},
        True,
        False,
    ),
    (
        {"RECONCILER_SECRET_OAI": KEY, "RECONCILER_SECRET_OAI_HOSTS": "x.com,api.example.com"},
        True,
        False,
    ),
    ({"RECONCILER_SECRET_OAI": KEY}, False, True),
    (
        {"RECONCILER_SECRET_OAI": KEY, "RECONCILER_SECRET_OAI_HOSTS": "evil.example.com"},
        False,
        True,
    ),
    ({"RECONCILER_SECRET_OAI": KEY, "RECONCILER_SECRET_OAI_HOSTS": "example.com"}, False, True),
    ({"RECONCILER_SECRET_OAI_HOSTS": "api.example.com"}, False, True),
]


@pytest.mark.parametrize(("environ", "sent", "withheld"), KEY_CASES)
def test_the_key_goes_only_to_a_host_the_operator_binds(
    environ: dict[str, str], sent: bool, withheld: bool
) -> None:
    check = key_check("cloud", OAI, environ)
    assert check.authorization == (f"Bearer {KEY}" if sent else None)
    assert (check.refusal is not None) == withheld
    assert KEY not in (check.refusal or "")


def test_a_remote_model_without_a_key_sends_none() -> None:
    route = RemoteRoute("http://box.lan:8080/v1", "llama", None)
    assert key_check("box", route, {"RECONCILER_SECRET_OAI": KEY}).authorization is None


# -- TLS -------------------------------------------------------------------------------------


def test_the_hosts_ca_bundle_is_trusted_beside_the_systems(tmp_path: Path) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(bundle)
    subject = ca.cert_pem.bytes().decode()
    plain = tls_context({})
    with_bundle = tls_context({CA_FILE_ENV: str(bundle)})
    assert with_bundle.verify_mode == ssl.CERT_REQUIRED and with_bundle.check_hostname
    der = ssl.PEM_cert_to_DER_cert(subject)
    assert der in with_bundle.get_ca_certs(binary_form=True)
    assert der not in plain.get_ca_certs(binary_form=True)
    broken = tls_context({CA_FILE_ENV: str(tmp_path / "missing.pem")})
    assert broken.verify_mode == ssl.CERT_REQUIRED  # still verifying, without the bundle


# -- the table's counts ----------------------------------------------------------------------


def test_two_remote_models_on_one_endpoint_keep_their_own_counts() -> None:
    url = "https://api.example.com/v1"
    one = RouteModel("one", "running", instances=(RouteInstance(url),), remote=OAI)
    route_two = RemoteRoute(url, "gpt-4o-mini", None, max_concurrency=1)
    two = RouteModel("two", "running", instances=(RouteInstance(url),), remote=route_two)
    table = Table()
    table.load(Routes({"one": one, "two": two}, generation=1))
    first, second = table.entries["one"].instances[0], table.entries["two"].instances[0]
    assert first is not second and first.url == second.url == url
    second.inflight = 1
    assert table.entries["two"].full() and not table.entries["one"].full()
    table.load(Routes({"one": one, "two": two}, generation=2))
    assert table.entries["two"].instances[0] is second  # counts survive a reload
    report = table.inflight_report()["instances"]
    assert isinstance(report, dict)
    assert {v["model"]: v["remote"] for v in report.values()} == {"one": True, "two": True}


# -- the daemon's table for remote models ------------------------------------------------------


def spec(model_id: str, **fields: object) -> ModelSpec:
    base = {"id": model_id, "framework": "llama_cpp", "model_path": "/m.gguf"}
    return ModelSpec.model_validate({**base, **fields})


def cloud(model_id: str, **fields: object) -> ModelSpec:
    remote = {"framework": "remote", "endpoint": "https://api.example.com/v1"}
    return ModelSpec.model_validate({"id": model_id, **remote, **fields})


STATUS_CASES = [
    # the remote model's record (None: not probed yet), enabled, its gateway status, instances;
    # before its first probe answers a request waits, as for an engine that starts
    (None, True, "starting", 0),
    (Status.starting, True, "starting", 0),
    (Status.running, True, "running", 1),
    (Status.error, True, "error", 0),
    (None, False, "disabled", 0),
    (Status.running, False, "running", 1),  # disabled, yet another model's fallback
]


@pytest.mark.parametrize(("status", "enabled", "shown", "instances"), STATUS_CASES)
def test_a_remote_model_runs_at_its_endpoint_while_its_probe_answers(
    status: Status | None, enabled: bool, shown: str, instances: int
) -> None:
    models = {"c": cloud("c", enabled=enabled)}
    records = {} if status is None else {"c": InstanceRecord(id="c", status=status)}
    route = build_routes(DesiredState(models, ClusterSpec()), records).models["c"]
    assert (route.status, len(route.instances)) == (shown, instances)
    if instances:
        assert route.instances[0].url == "https://api.example.com/v1"


def test_the_table_carries_the_remote_fields_and_the_overflow() -> None:
    models = {
        "c": cloud(
            "c",
            upstream_model="gpt-4o",
            api_key_env="RECONCILER_SECRET_OAI",
            max_concurrency=3,
            aliases=["gpt"],
        ),
        "d": cloud("d"),
        "local": spec("local", fallback="c", overflow={"model": "c", "queue_over": 4}),
    }
    running = {"c": InstanceRecord(id="c", status=Status.running)}
    routes = build_routes(DesiredState(models, ClusterSpec()), running)
    c, d, local = routes.models["c"], routes.models["d"], routes.models["local"]
    assert c.remote == RemoteRoute(
        "https://api.example.com/v1", "gpt-4o", "RECONCILER_SECRET_OAI", 3
    )
    assert c.aliases == ("gpt",) and c.served_name is None
    assert d.remote is not None and d.remote.upstream_model == "d"  # default: its id
    assert d.remote.key_env is None and d.remote.max_concurrency is None
    assert local.overflow == OverflowRoute("c", 4) and local.fallback == "c"
    assert local.remote is None and c.overflow is None
    assert parse_routes(routes.to_json()) == routes
