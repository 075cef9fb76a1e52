"""Slow and idle clients at the edge: header and body timeouts (408), idle keep-alive connections
closed quietly, and a clear refusal past the connection bound (issue 14, item 1).

The sims here are started with short timeouts (1 s); the tests wait for events with bounded
loops and never assert how long anything took.
"""

from __future__ import annotations

import http.client
import select
import time
from collections.abc import Callable

import pytest

from conftest import SimProcess
from faults.edgekit import CLOSED, connect, error_of, read_all, status_of
from httpclient import RawReader, request, wait_for

SHORT = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keepalive_timeout_s": 1.0}
HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def quick(edge_sim_factory: Callable[..., SimProcess]) -> SimProcess:
    return edge_sim_factory(**SHORT)


def test_slowloris_headers_get_408(quick: SimProcess) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with connect(quick.url) as sock:
        for i, byte in enumerate(head):  # 1 byte per 0.1 s, until the server answers
            sock.send(bytes([byte]))
            if select.select([sock], [], [], 0.1)[0]:
                break
            if i == 20:  # meanwhile, other clients are served
                assert request(quick.url, "GET", "/health")[0] == 200
        reply = read_all(sock)
    assert i < len(head) - 1, "the slow head was never refused"
    assert status_of(reply) == 408 and reply.endswith(CLOSED)
    assert "headers" in error_of(reply)["message"]


def test_a_stalled_body_gets_408(quick: SimProcess) -> None:
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt": '
    )
    with connect(quick.url) as sock:
        sock.sendall(head)
        reply = read_all(sock, timeout_s=10)
    assert status_of(reply) == 408 and reply.endswith(CLOSED)
    assert "body" in error_of(reply)["message"]


def test_an_idle_keep_alive_connection_is_closed_quietly(quick: SimProcess) -> None:
    with connect(quick.url) as sock:
        sock.sendall(HEALTH)
        reader = RawReader(sock)
        assert reader.response()[0] == 200
        assert reader.buf + read_all(sock, timeout_s=10) == CLOSED  # nothing written, just closed
    with connect(quick.url) as sock:  # a connection that never sends a byte
        assert read_all(sock, timeout_s=10) == CLOSED


def test_a_busy_keep_alive_connection_stays_open(quick: SimProcess) -> None:
    # Requests 0.3 s apart on one connection: each gap is below the idle timeout of 1 s.
    with connect(quick.url) as sock:
        for _ in range(6):
            sock.sendall(HEALTH)
            assert RawReader(sock).response()[0] == 200
            time.sleep(0.3)


def test_connections_past_the_bound_are_refused_with_503(
    edge_sim_factory: Callable[..., SimProcess],
) -> None:
    sim = edge_sim_factory(max_connections=4)
    held = [connect(sim.url) for _ in range(4)]
    try:
        for sock in held:  # each one is accepted and served
            sock.sendall(HEALTH)
            assert RawReader(sock).response()[0] == 200
        with connect(sim.url) as extra:
            reply = read_all(extra)
        assert status_of(reply) == 503 and reply.endswith(CLOSED)
        assert error_of(reply)["type"] == "service_unavailable"
        held.pop().close()  # room for one more, once the server sees the close
        assert wait_for(lambda: _health(sim) == 200, timeout_s=5)
    finally:
        for sock in held:
            sock.close()


def _health(sp: SimProcess) -> int:
    try:
        return request(sp.url, "GET", "/health", timeout=2)[0]
    except (OSError, http.client.HTTPException):  # refused and closed under our feet
        return 0
