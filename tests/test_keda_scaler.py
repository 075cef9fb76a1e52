"""KEDA's external scaler served by `vfleet router --keda-port`: the generated grpcio stubs as
KEDA's side, real router processes with sim engines as ours. A request for a known model with
no engine (`--model cold`) is held by the router's activator; that is the demand KEDA must see
at once (IsActive, the StreamIsActive push) and summed over router replicas (GetMetrics).
The pure parts (trigger metadata, sums, rates) are tested at the end without processes.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import SimProcess
from httpclient import free_port, raw_socket, request, wait_for
from kubefake import FakeKube
from vfleet.router.keda import externalscaler_pb2 as pb
from vfleet.router.keda import externalscaler_pb2_grpc as pb_grpc
from vfleet.router.keda.query import (
    Counts,
    MetadataError,
    RateWindow,
    ScalerQuery,
    demand,
    parse_demand_body,
    parse_metadata,
    requests_by_source,
    target_sizes,
)

Factory = Callable[..., SimProcess]
Stubs = Callable[[SimProcess], Any]  # a router -> an ExternalScalerStub on its scaler port
Held = Callable[[SimProcess, str], socket.socket]
SCALER_LINE = re.compile(r"KEDA external scaler \(gRPC\) on [\d.]+:(\d+)")
RPC_TIMEOUT_S = 10.0


def _scaler_port(router: SimProcess) -> int:
    """The scaler's port, from the line the router prints once it listens (bounded wait)."""
    found: list[int] = []

    def seen() -> bool:
        for line in list(router.log):
            m = SCALER_LINE.search(line)
            if m:
                found.append(int(m.group(1)))
                return True
        return False

    assert wait_for(seen, timeout_s=10), "".join(router.log)
    return found[0]


@pytest.fixture
def channels() -> Iterator[Stubs]:
    opened: list[grpc.Channel] = []

    def stub(router: SimProcess) -> Any:
        channel = grpc.insecure_channel(f"127.0.0.1:{_scaler_port(router)}")
        opened.append(channel)
        return pb_grpc.ExternalScalerStub(channel)

    yield stub
    for channel in opened:
        channel.close()


@pytest.fixture
def held() -> Iterator[Held]:
    """Send a request and leave it waiting for its answer: held while the model has no engine.
    Closing the socket (at the end) takes it out of the router's queue."""
    socks: list[socket.socket] = []

    def send(router: SimProcess, model: str) -> socket.socket:
        body = json.dumps({"model": model, "prompt": "x", "max_tokens": 1}).encode()
        sock = raw_socket(router.url)
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        socks.append(sock)
        return sock

    yield send
    for sock in socks:
        sock.close()


def _ref(models: str, target: str = "") -> pb.ScaledObjectRef:
    meta = {"scalerAddress": "ignored", "models": models}
    if target:
        meta["target"] = target
    return pb.ScaledObjectRef(name="chat", namespace="llm", scalerMetadata=meta)


def _summed(stub: Any, ref: pb.ScaledObjectRef, want: float) -> bool:
    return _metric(stub, ref) == want


def _metric(stub: Any, ref: pb.ScaledObjectRef) -> float:
    req = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="vfleet-cold")
    values = stub.GetMetrics(req, timeout=RPC_TIMEOUT_S).metricValues
    assert len(values) == 1 and values[0].metricName == "vfleet-cold"
    assert values[0].metricValue == round(values[0].metricValueFloat)
    return float(values[0].metricValueFloat)


def _active(stub: Any, ref: pb.ScaledObjectRef) -> bool:
    return bool(stub.IsActive(ref, timeout=RPC_TIMEOUT_S).result)


def _router(router_factory: Factory, sim: SimProcess, *args: str) -> SimProcess:
    return router_factory(
        "--backend", sim.url, "--model", "cold", "--keda-port", "0", "--hold-timeout", "60", *args
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_is_active_flips_on_the_first_held_request(
    workers: str, sim_factory: Factory, router_factory: Factory, channels: Stubs, held: Held
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = _router(router_factory, sim, "--workers", workers)
    stub = channels(router)
    ref = _ref("cold,warm", target="16")
    assert not _active(stub, ref)
    assert _metric(stub, ref) == 0
    spec = stub.GetMetricSpec(ref, timeout=RPC_TIMEOUT_S).metricSpecs
    assert [(s.metricName, s.targetSize, s.targetSizeFloat) for s in spec] == [
        ("vfleet-cold", 16, 16.0)
    ]
    sock = held(router, "cold")
    assert wait_for(lambda: _active(stub, ref), timeout_s=10)
    assert _metric(stub, ref) == 1
    assert not _active(stub, _ref("warm"))  # another model's demand is not this one's
    sock.close()  # the client gave up: the request leaves the queue
    assert wait_for(lambda: not _active(stub, ref), timeout_s=10)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_stream_pushes_active_when_a_request_is_held(
    workers: str, sim_factory: Factory, router_factory: Factory, channels: Stubs, held: Held
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = _router(router_factory, sim, "--workers", workers)
    stream = channels(router).StreamIsActive(_ref("cold"), timeout=30)
    try:
        assert next(stream).result is False  # the current state, at once
        sent = time.monotonic()
        sock = held(router, "cold")
        assert next(stream).result is True
        print(
            f"\nworkers={workers}: StreamIsActive pushed active "
            f"{(time.monotonic() - sent) * 1000:.1f} ms after the request was sent"
        )
        sock.close()
        assert next(stream).result is False
    finally:
        stream.cancel()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_sum_the_demand_of_peered_routers(
    workers: str, sim_factory: Factory, router_factory: Factory, channels: Stubs, held: Held
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    port_b = free_port()
    a = _router(
        router_factory,
        sim,
        "--workers",
        workers,
        "--model",
        "other",
        "--peer",
        f"http://127.0.0.1:{port_b}",
    )
    b = _router(
        router_factory,
        sim,
        "--workers",
        workers,
        "--model",
        "other",
        "--port",
        str(port_b),
        "--peer",
        a.url,
    )
    assert b.port == port_b
    stubs = [channels(a), channels(b)]
    ref = _ref("cold")
    for _ in range(2):
        held(a, "cold")
    held(b, "cold")
    for stub in stubs:
        assert wait_for(functools.partial(_summed, stub, ref, 3), timeout_s=10)
        assert _active(stub, ref)
    # a request held by the peer alone makes this router's stream push "active" too
    stream = stubs[0].StreamIsActive(_ref("other"), timeout=30)
    try:
        assert next(stream).result is False
        held(b, "other")
        assert next(stream).result is True
    finally:
        stream.cancel()


def test_peers_found_in_kubernetes_are_summed_but_not_this_pod(
    sim_factory: Factory, router_factory: Factory, channels: Stubs, held: Held
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    labels = {"app.kubernetes.io/name": "vfleet", "app.kubernetes.io/component": "router"}
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    with FakeKube() as kube:
        peer = router_factory("--backend", sim.url, "--model", "cold", "--hold-timeout", "60")
        engines = "app.kubernetes.io/component=engine"
        me = _router(
            router_factory,
            sim,
            "--k8s-api-url",
            kube.url,
            "--k8s-selector",
            engines,
            "--k8s-peer-selector",
            selector,
        )
        stub = channels(me)
        # this router's own pod matches the selector too: it must not count itself twice
        kube.add_pod(socket.gethostname(), port=me.port, labels=labels)
        kube.add_pod("router-peer", port=peer.port, labels=labels)
        held(me, "cold")
        held(peer, "cold")
        held(peer, "cold")
        assert wait_for(functools.partial(_summed, stub, _ref("cold"), 3), timeout_s=10)
        assert _metric(stub, _ref("cold")) == 3


def test_a_peer_that_does_not_answer_is_skipped(
    sim_factory: Factory, router_factory: Factory, channels: Stubs, held: Held
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    dead = f"http://127.0.0.1:{free_port()}"
    router = _router(router_factory, sim, "--peer", dead)
    stub = channels(router)
    held(router, "cold")
    assert wait_for(lambda: _metric(stub, _ref("cold")) == 1, timeout_s=10)
    for _ in range(3):
        _metric(stub, _ref("cold"))
    skipped = [line for line in router.log if dead in line and "skipped" in line]
    assert len(skipped) == 1, router.log  # said once, not on every reading


def test_bad_metadata_is_invalid_argument(
    sim_factory: Factory, router_factory: Factory, channels: Stubs
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    stub = channels(_router(router_factory, sim))
    for meta in ({}, {"models": "cold", "target": "-1"}, {"models": "cold", "metric": "gpu"}):
        ref = pb.ScaledObjectRef(name="x", namespace="y", scalerMetadata=meta)
        with pytest.raises(grpc.RpcError) as err:
            stub.IsActive(ref, timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        next(stub.StreamMetricSpec(_ref("cold"), timeout=RPC_TIMEOUT_S))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rps_metric_counts_requests(
    sim_factory: Factory, router_factory: Factory, channels: Stubs
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = _router(router_factory, sim)
    stub = channels(router)
    ref = pb.ScaledObjectRef(
        name="x", namespace="y", scalerMetadata={"models": "warm", "metric": "rps"}
    )
    assert _rps(stub, ref) == 0  # the first sample starts the window
    body = {"model": "warm", "prompt": "x", "max_tokens": 1}
    for _ in range(5):
        assert request(router.url, "POST", "/v1/completions", body)[0] == 200
    assert _rps(stub, ref) > 0


def _rps(stub: Any, ref: pb.ScaledObjectRef) -> float:
    req = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="vfleet-warm")
    return float(stub.GetMetrics(req, timeout=RPC_TIMEOUT_S).metricValues[0].metricValueFloat)


def test_grpc_is_loaded_only_with_a_keda_port(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    plain = router_factory("--backend", sim.url)
    scaler = _router(router_factory, sim)
    _scaler_port(scaler)
    assert "cygrpc" not in _maps(plain)  # the router's memory matters
    assert "cygrpc" in _maps(scaler)


def _maps(sp: SimProcess) -> str:
    return Path(f"/proc/{sp.proc.pid}/maps").read_text()


def test_peers_need_a_keda_port(router_factory: Factory) -> None:
    with pytest.raises(AssertionError, match="set --keda-port"):
        router_factory(
            "--backend", "http://127.0.0.1:1", "--peer", "http://127.0.0.1:2", timeout_s=10
        )


# -- pure parts ------------------------------------------------------------------------------


def test_metadata() -> None:
    q = parse_metadata({"models": " Qwen/Qwen3-8B, qwen ,qwen", "target": "2.5"})
    assert q == ScalerQuery(("Qwen/Qwen3-8B", "qwen"), 2.5)
    assert q.metric_name == "vfleet-qwen-qwen3-8b"
    assert parse_metadata({"model": "a"}).models == ("a",)
    assert parse_metadata({"models": "a", "metric": "rps", "window": "30"}).window_s == 30
    for bad in (
        {},
        {"models": " , "},
        {"models": "a", "target": "x"},
        {"models": "a", "target": "0"},
        {"models": "a", "window": "inf"},
        {"models": "a", "metric": "gpu"},
    ):
        with pytest.raises(MetadataError):
            parse_metadata(bad)
    assert target_sizes(2.5) == (2, 2.5) and target_sizes(0.2) == (1, 0.2)


def test_demand_sums_sources_and_models() -> None:
    local = {"a": Counts(1, 2, 9), "b": Counts(4, 0, 1)}
    peer = {"a": Counts(0, 3, 5), "c": Counts(7, 7, 7)}
    assert demand(("a",), [local, peer]) == 6
    assert demand(("a", "b", "x"), [local, peer]) == 10
    assert requests_by_source(("a", "b"), {"l": local, "p": peer}) == {"l": 10, "p": 5}


def test_peer_demand_body() -> None:
    body = json.dumps(
        {
            "models": {
                "a": {"inflight": 1, "held": 2, "requests": 3},
                "b": {"held": -1, "inflight": True},
                "c": 5,
            },
            "endpoints": {},
            "workers": 2,
        }
    ).encode()
    assert parse_demand_body(body) == {"a": Counts(1, 2, 3), "b": Counts()}
    for bad in (b"[]", b"{}", b"not json"):
        with pytest.raises(ValueError):
            parse_demand_body(bad)


def test_rate_window_over_restarts_and_new_sources() -> None:
    w = RateWindow(10.0)
    assert w.add(0.0, {"a": 100}) == 0.0
    assert w.add(5.0, {"a": 150, "b": 7}) == 10.0  # b was not there at the window's start
    assert w.add(10.0, {"a": 20, "b": 9}) == 7.2  # a restarted: 50 + 20, b: 2, over 10 s
    assert w.add(30.0, {"a": 40, "b": 9}) == 1.0  # the window moved past the old samples


@given(st.lists(st.tuples(st.floats(0.01, 5.0), st.integers(0, 50)), min_size=1, max_size=80))
def test_rate_window_is_bounded_and_never_negative(steps: list[tuple[float, int]]) -> None:
    w = RateWindow(20.0)
    t, n = 0.0, 0
    for dt, more in steps:
        t, n = t + dt, n + more
        rate = w.add(t, {"local": n})
        assert rate >= 0
        assert rate <= 50 / 0.01 + 1e-6
    assert len(w._samples) <= 256
