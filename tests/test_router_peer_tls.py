"""Router replicas that serve TLS ask each other for demand (the KEDA scaler's peers) over HTTPS,
and verify what they talk to: real router processes on 127.0.0.1 with certificates made here.

- Replicas sharing one self-signed certificate (the chart: one Secret) trust exactly it, with no
  other setting; a peer with another certificate is skipped and logged.
- A certificate issued by a CA: pinned the same way by default (its issuer is not trusted), or
  verified against `--peer-ca` plus `--peer-tls-name`; a wrong name is refused.
- Peers found in Kubernetes are asked over HTTPS when the router serves TLS.
- Plain-HTTP peers next to `--tls-cert`, and an unreadable `--peer-ca`, are one-line errors.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from conftest import SimProcess, run_vfleet, start_sim
from httpclient import free_port, wait_for
from kubefake import FakeKube
from tlskit import Pair, TlsRouter, TlsRouters, issue, make_ca, make_pair, replace
from vfleet.router.keda import externalscaler_pb2 as pb
from vfleet.router.keda import externalscaler_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

SCALER_LINE = re.compile(r"KEDA external scaler \(gRPC\) on [\d.]+:(\d+)")
RPC_TIMEOUT_S = 10.0
NAME = "router.vfleet.test"


def _issued(ca_name: str) -> tuple[Pair, bytes]:
    """A leaf for 127.0.0.1 and NAME issued by a new CA: (leaf chain + key, the CA's PEM)."""
    ca = make_ca(ca_name)
    return issue(ca, NAME, dns=[NAME]), ca.pem


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    sp = start_sim("--model", "warm", "--profile", "instant")
    yield sp
    sp.stop()


Start = Callable[..., TlsRouter]


@pytest.fixture
def routers(tmp_path: Path, sim: SimProcess) -> Iterator[Start]:
    """Start a TLS router with a KEDA scaler holding requests for `cold` (stopped at the end);
    its own settings here are config keys (`peers=[...]`, `port=`, ...)."""
    fleet = TlsRouters(tmp_path, sim.url)
    yield fleet.start
    fleet.stop()


@pytest.fixture
def hold(routers: Start) -> Iterator[Callable[[TlsRouter, Pair], None]]:
    """Leave a request for `cold` waiting on a router (held by its activator) until the end."""
    socks: list[ssl.SSLSocket] = []

    def send(router: TlsRouter, trusted: Pair) -> None:
        ctx = ssl.create_default_context(cadata=trusted.cert.decode())
        ctx.check_hostname = False  # the test only needs a TLS client that gets in
        raw = socket.create_connection(("127.0.0.1", router.port), timeout=10)
        sock = ctx.wrap_socket(raw)
        body = json.dumps({"model": "cold", "prompt": "x", "max_tokens": 1}).encode()
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        socks.append(sock)

    yield send
    for sock in socks:
        sock.close()


@pytest.fixture
def metric() -> Iterator[Callable[[TlsRouter], float]]:
    """The scaler's GetMetrics for `cold` on a router: its held requests plus its peers'."""
    channels: dict[int, grpc.Channel] = {}  # one per router, however often it is read

    def read(router: TlsRouter) -> float:
        ports = [int(m.group(1)) for line in router.log if (m := SCALER_LINE.search(line))]
        assert ports, "".join(router.log)
        channel = channels.get(ports[0])
        if channel is None:
            channel = channels[ports[0]] = grpc.insecure_channel(f"127.0.0.1:{ports[0]}")
        ref = pb.ScaledObjectRef(name="chat", namespace="llm", scalerMetadata={"models": "cold"})
        req = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="vfleet-cold")
        stub = pb_grpc.ExternalScalerStub(channel)
        return float(stub.GetMetrics(req, timeout=RPC_TIMEOUT_S).metricValues[0].metricValueFloat)

    yield read
    for channel in channels.values():
        channel.close()


def _equals(read: Callable[[TlsRouter], float], router: TlsRouter, want: float) -> bool:
    return read(router) == want


def _skipped(router: TlsRouter, peer: str, why: str) -> bool:
    return any(peer in line and why in line for line in list(router.log))


def test_replicas_sharing_a_self_signed_certificate_sum_their_demand_over_https(
    routers: Start, hold: Callable[[TlsRouter, Pair], None], metric: Callable[[TlsRouter], float]
) -> None:
    shared = make_pair("router")
    port_b = free_port()
    a = routers("a", shared, peers=[f"https://127.0.0.1:{port_b}"])
    b = routers("b", shared, port=port_b, peers=[f"https://127.0.0.1:{a.port}"])
    hold(a, shared)
    hold(a, shared)
    hold(b, shared)
    for router in (a, b):
        assert wait_for(functools.partial(_equals, metric, router, 3), timeout_s=15), "".join(
            router.log
        )
    assert not any("no demand reading" in line for line in a.log + b.log)


def test_a_renewed_certificate_is_trusted_once_this_router_has_it_too(
    routers: Start,
    hold: Callable[[TlsRouter, Pair], None],
    metric: Callable[[TlsRouter], float],
    tmp_path: Path,
) -> None:
    """A renewal reaches the replicas one by one: the peer with the new certificate is skipped
    until this router's own files carry it too, then counted again (no restart)."""
    old, new = make_pair("router"), make_pair("router")
    peer = routers("peer", old, tls_reload_s=0.05)
    url = f"https://127.0.0.1:{peer.port}"
    me = routers("me", old, peers=[url], tls_reload_s=0.05)
    hold(peer, old)
    assert wait_for(functools.partial(_equals, metric, me, 1), timeout_s=15), "".join(me.log)
    for name in ("peer", "me"):
        replace(tmp_path / f"{name}.key", new.key)
        replace(tmp_path / f"{name}.crt", new.cert)
        if name == "peer":
            assert wait_for(
                lambda: metric(me) == 0 and _skipped(me, url, "CERTIFICATE_VERIFY_FAILED"),
                timeout_s=15,
            ), "".join(me.log)
    assert wait_for(functools.partial(_equals, metric, me, 1), timeout_s=15), "".join(me.log)
    assert any("peer TLS trust reloaded" in line for line in me.log)


def test_a_peer_with_another_certificate_is_skipped_and_logged(
    routers: Start, hold: Callable[[TlsRouter, Pair], None], metric: Callable[[TlsRouter], float]
) -> None:
    mine, theirs = make_pair("router"), make_pair("impostor")
    other = routers("other", theirs)
    peer = f"https://127.0.0.1:{other.port}"
    me = routers("me", mine, peers=[peer])
    hold(other, theirs)
    hold(me, mine)
    # peers are asked when KEDA asks (GetMetrics here); the impostor's demand is never added
    assert wait_for(
        lambda: metric(me) == 1 and _skipped(me, peer, "CERTIFICATE_VERIFY_FAILED"),
        timeout_s=15,
    ), "".join(me.log)
    assert metric(me) == 1


@pytest.mark.parametrize(
    ("settings", "counted"),
    [
        ({}, True),  # the shared leaf pinned; its CA not trusted
        ({"peer_ca": "CA", "peer_tls_name": NAME}, True),
        ({"peer_ca": "CA"}, True),  # the peer's URL host, 127.0.0.1, is in the certificate
        ({"peer_ca": "CA", "peer_tls_name": "other.vfleet.test"}, False),
    ],
    ids=["pinned", "ca+name", "ca+url-host", "ca+wrong-name"],
)
def test_a_ca_issued_certificate_pinned_or_verified_against_peer_ca(
    routers: Start,
    hold: Callable[[TlsRouter, Pair], None],
    metric: Callable[[TlsRouter], float],
    tmp_path: Path,
    settings: dict[str, str],
    counted: bool,
) -> None:
    pair, ca = _issued("vfleet test CA")
    (tmp_path / "ca.crt").write_bytes(ca)
    more = {k: str(tmp_path / "ca.crt") if v == "CA" else v for k, v in settings.items()}
    trusted = Pair(ca, b"")
    peer = routers("peer", pair)
    url = f"https://127.0.0.1:{peer.port}"
    me = routers("me", pair, peers=[url], **more)
    hold(peer, trusted)
    hold(me, trusted)
    if counted:
        assert wait_for(functools.partial(_equals, metric, me, 2), timeout_s=15), "".join(me.log)
    else:
        assert wait_for(
            lambda: metric(me) == 1 and _skipped(me, url, "certificate verify failed"),
            timeout_s=15,
        ), "".join(me.log)
        assert metric(me) == 1


def test_another_certificate_from_the_same_ca_is_not_pinned(
    routers: Start, hold: Callable[[TlsRouter, Pair], None], metric: Callable[[TlsRouter], float]
) -> None:
    """Pinning trusts the router's own certificate, not every certificate its issuer signed."""
    mine, _ = _issued("CA one")
    theirs, _ = _issued("CA one")  # same CA name, but another CA key and leaf
    other = routers("other", theirs)
    url = f"https://127.0.0.1:{other.port}"
    me = routers("me", mine, peers=[url])
    assert wait_for(
        lambda: metric(me) == 0 and _skipped(me, url, "CERTIFICATE_VERIFY_FAILED"),
        timeout_s=15,
    ), "".join(me.log)


def test_peers_found_in_kubernetes_are_asked_over_https(
    routers: Start, hold: Callable[[TlsRouter, Pair], None], metric: Callable[[TlsRouter], float]
) -> None:
    shared = make_pair("router")
    labels = {"app.kubernetes.io/name": "vfleet", "app.kubernetes.io/component": "router"}
    with FakeKube() as kube:
        peer = routers("peer", shared)
        me = routers(
            "me",
            shared,
            k8s_api_url=kube.url,
            k8s_selector="app.kubernetes.io/component=engine",
            k8s_peer_selector=",".join(f"{k}={v}" for k, v in labels.items()),
        )
        kube.add_pod(socket.gethostname(), port=me.port, labels=labels)
        kube.add_pod("router-peer", port=peer.port, labels=labels)
        hold(me, shared)
        hold(peer, shared)
        hold(peer, shared)
        assert wait_for(functools.partial(_equals, metric, me, 3), timeout_s=15), "".join(me.log)
        assert not any("no demand reading" in line for line in me.log)


def _router_error(tmp_path: Path, *args: str) -> str:
    pair = make_pair("router")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pair.cert)
    key.write_bytes(pair.key)
    done = run_vfleet(
        "router",
        "--backend",
        "http://127.0.0.1:1",
        "--keda-port",
        "0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        *args,
        timeout_s=20,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_plain_http_peer_next_to_tls_is_refused_in_one_line(tmp_path: Path) -> None:
    line = _router_error(tmp_path, "--peer", "http://10.0.0.2:8000")
    assert "serves TLS" in line and "https://10.0.0.2:8000" in line, line


def test_an_unreadable_peer_ca_is_refused_in_one_line(tmp_path: Path) -> None:
    line = _router_error(tmp_path, "--peer-ca", str(tmp_path / "missing.crt"))
    assert "peer TLS trust file" in line and "missing.crt" in line, line
