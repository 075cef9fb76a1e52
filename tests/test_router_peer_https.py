"""The demand long-poll between router replicas over HTTPS: KEDA's StreamIsActive on one router
follows its peer through `GET /vfleet/demand?wait_s=` long-polls, which must work over TLS
(`--tls-cert` + `--peer-ca`), and must refuse a peer whose certificate it does not trust.

Real router processes (TLS, KEDA scaler) in front of a simulator, certificates made here; a
request for `cold` (a known model with no engine) is held by a router's activator: that is the
demand the stream must see."""

from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import SimProcess, start_sim
from httpclient import wait_for
from tlskit import TlsRouter, TlsRouters, issue, make_ca
from vfleet.router.keda import externalscaler_pb2 as pb
from vfleet.router.keda import externalscaler_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

SCALER_LINE = re.compile(r"KEDA external scaler \(gRPC\) on [\d.]+:(\d+)")
RPC_TIMEOUT_S = 30.0
REF = pb.ScaledObjectRef(
    name="chat", namespace="llm", scalerMetadata={"scalerAddress": "x", "models": "cold"}
)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    sp = start_sim("--model", "warm", "--profile", "instant")
    yield sp
    sp.stop()


Start = Callable[..., TlsRouter]


@pytest.fixture
def routers(tmp_path: Path, sim: SimProcess) -> Iterator[Start]:
    """Start a router serving HTTPS with `pair`, a KEDA scaler, and `cold` known (no engine);
    its own settings here are flags (`--peer`, `--peer-ca`)."""
    fleet = TlsRouters(tmp_path, sim.url)
    yield fleet.start
    fleet.stop()


def _tls_client(ca_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem.decode())


@pytest.fixture
def hold() -> Iterator[Callable[[TlsRouter, bytes], ssl.SSLSocket]]:
    """Leave a request for `cold` waiting on a router until its socket is closed (or the end)."""
    socks: list[ssl.SSLSocket] = []

    def send(router: TlsRouter, ca_pem: bytes) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", router.port), timeout=10)
        sock = _tls_client(ca_pem).wrap_socket(raw, server_hostname="127.0.0.1")
        body = json.dumps({"model": "cold", "prompt": "x", "max_tokens": 1}).encode()
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
            b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        socks.append(sock)
        return sock

    yield send
    for sock in socks:
        sock.close()


@pytest.fixture
def stream() -> Iterator[Callable[[TlsRouter], queue.Queue[bool]]]:
    """Open KEDA's StreamIsActive for `cold` on a router; its pushes land in a queue (read by
    a thread, so the test never blocks on a push that must not come)."""
    opened: list[tuple[grpc.Channel, Any]] = []

    def open_(router: TlsRouter) -> queue.Queue[bool]:
        ports = [int(m.group(1)) for line in router.log if (m := SCALER_LINE.search(line))]
        assert ports, "".join(router.log)
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[0]}")
        call = pb_grpc.ExternalScalerStub(channel).StreamIsActive(REF, timeout=RPC_TIMEOUT_S)
        opened.append((channel, call))
        pushed: queue.Queue[bool] = queue.Queue()

        def read() -> None:
            try:
                for message in call:
                    pushed.put(message.result)
            except grpc.RpcError:
                pass  # cancelled at the end of the test (or its deadline)

        threading.Thread(target=read, daemon=True).start()
        return pushed

    yield open_
    for channel, call in opened:
        call.cancel()
        channel.close()


def _next(pushed: queue.Queue[bool]) -> bool:
    return pushed.get(timeout=RPC_TIMEOUT_S)


def test_the_active_stream_follows_a_peer_over_https_verified_by_peer_ca(
    routers: Start,
    hold: Callable[[TlsRouter, bytes], ssl.SSLSocket],
    stream: Callable[[TlsRouter], queue.Queue[bool]],
    tmp_path: Path,
) -> None:
    ca = make_ca()
    ca_pem = ca.pem
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    peer = routers("peer", issue(ca, "peer"))
    url = f"https://127.0.0.1:{peer.port}"
    me = routers("me", issue(ca, "me"), "--peer", url, "--peer-ca", str(tmp_path / "ca.crt"))
    pushed = stream(me)
    assert _next(pushed) is False  # the current state, at once
    sock = hold(peer, ca_pem)  # held on the peer only
    assert _next(pushed) is True  # the long-poll over HTTPS brought it
    sock.close()  # the client gave up: the peer's queue is empty again
    assert _next(pushed) is False
    assert not any("no demand reading" in line for line in me.log), "".join(me.log)


def test_a_long_poll_over_https_is_answered_when_a_request_is_held(
    routers: Start, hold: Callable[[TlsRouter, bytes], ssl.SSLSocket]
) -> None:
    ca = make_ca()
    router = routers("r", issue(ca, "r"))
    raw = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    with _tls_client(ca.pem).wrap_socket(raw, server_hostname="127.0.0.1") as poll:
        poll.sendall(b"GET /vfleet/demand?wait_s=30 HTTP/1.1\r\nhost: x\r\n\r\n")
        # a whole request on another connection after it: the poll has been read, and waits
        assert _demand(router, ca.pem)["models"]["cold"]["held"] == 0
        hold(router, ca.pem)
        # answered by the hold: well before its own 30 s (this read gives up at half that)
        poll.settimeout(15)
        status, body = _response(poll)
    assert status == 200
    assert json.loads(body)["models"]["cold"]["held"] == 1


def _response(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length, read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    length = int({k.lower(): v for k, v in fields.items()}["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return int(lines[0].split(" ")[1]), body


def test_a_peer_whose_certificate_is_not_trusted_is_refused_on_the_stream(
    routers: Start,
    hold: Callable[[TlsRouter, bytes], ssl.SSLSocket],
    stream: Callable[[TlsRouter], queue.Queue[bool]],
    tmp_path: Path,
) -> None:
    mine, theirs = make_ca(), make_ca()  # two CAs: the peer's is not the one trusted
    (tmp_path / "ca.crt").write_bytes(mine.pem)
    peer = routers("peer", issue(theirs, "peer"))
    url = f"https://127.0.0.1:{peer.port}"
    me = routers("me", issue(mine, "me"), "--peer", url, "--peer-ca", str(tmp_path / "ca.crt"))
    hold(peer, theirs.pem)  # demand the untrusted peer would report
    pushed = stream(me)
    assert _next(pushed) is False
    # the stream's long-polls to the peer fail the TLS handshake, and say so
    assert wait_for(
        lambda: any(url in line and "certificate verify failed" in line for line in me.log),
        timeout_s=15,
    ), "".join(me.log)
    assert pushed.empty()  # its held request was never counted
    hold(me, mine.pem)  # the stream itself is alive: local demand is pushed
    assert _next(pushed) is True


def _demand(router: TlsRouter, ca_pem: bytes) -> dict[str, Any]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", router.port, timeout=10, context=_tls_client(ca_pem)
    )
    try:
        conn.request("GET", "/vfleet/demand")
        resp = conn.getresponse()
        assert resp.status == 200
        return dict(json.loads(resp.read()))
    finally:
        conn.close()
