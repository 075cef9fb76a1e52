"""Hypothesis fuzzing of the HTTP parser boundary: random bytes and shuffled request fragments
sent to a real sim and a real router. Whatever arrives, the server answers with a valid status
line or closes, and afterwards the process is still running and answers /health."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SimProcess
from faults.edgekit import CLOSED, connect, read_all, status_of
from httpclient import request

FRAGMENTS = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"/health",
    b"/v1/completions",
    b"/v1/models",
    b"?a=b",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"Host: x\r\n",
    b"Host: y\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Type: application/json\r\n",
    b"Expect: 100-continue\r\n",
    b"Expect: nope\r\n",
    b"Connection: close\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"\r\n",
    b"\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b'{"model":"demo","prompt":"x","max_tokens":2}',
    b":",
    b" ",
    b"\x00",
    b"\xff\xfe",
    b"a" * 300,
    b"X-Long: " + b"b" * 20000,
]
REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

inputs = st.one_of(
    st.binary(max_size=512),
    st.lists(st.sampled_from(FRAGMENTS), max_size=24).map(b"".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=12).map(lambda f: REQUEST + b"".join(f)),
)


@pytest.fixture(params=["gen_sim", "router"])
def server(request: pytest.FixtureRequest) -> SimProcess:
    sp: SimProcess = request.getfixturevalue(request.param)
    return sp


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=inputs)
def test_any_input_gets_a_status_line_or_a_close(server: SimProcess, data: bytes) -> None:
    with connect(server.url) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # what was sent is all there is
        reply = read_all(sock, timeout_s=5)
    assert reply.endswith(CLOSED), (data[:200], reply[:200])
    if reply != CLOSED:
        assert 100 <= status_of(reply) <= 599, (data[:200], reply[:200])
        assert reply[12:13] == b" ", reply[:40]


def test_the_servers_survived_the_fuzzing(server: SimProcess) -> None:
    assert server.proc.poll() is None
    assert request(server.url, "GET", "/health")[0] == 200
