"""Oversized input at the client edge: refused while it arrives, never buffered whole or echoed,
with the process's memory flat and other clients served meanwhile (issue 14, item 1).

Each case runs against a sim and a router, both with the default `EdgeLimits`. Memory is read
from /proc and printed; the only bound asserted is generous (50 MB, where the unbounded server
grew by 284 MB for the 100 MB request line), so it flags a regression, not a tuning change.
"""

from __future__ import annotations

import pytest

from conftest import SimProcess
from faults.edgekit import (
    CLOSED,
    connect,
    error_of,
    read_all,
    rss_kb,
    send_until_answered,
    status_of,
)
from httpclient import request

MB = 1 << 20
FILLER = b"a" * 65536
GROWTH_BOUND_KB = 50 * 1024


@pytest.fixture(params=["gen_sim", "router"])
def server(request: pytest.FixtureRequest) -> SimProcess:
    sp: SimProcess = request.getfixturevalue(request.param)
    return sp


def _served(sp: SimProcess) -> bool:
    return request(sp.url, "GET", "/health")[0] == 200


def test_a_100_mb_request_line_gets_414_long_before_it_is_sent(server: SimProcess) -> None:
    before = rss_kb(server.proc.pid)
    with connect(server.url) as big:
        big.sendall(b"GET /" + b"a" * 4096)  # under the limit: the server waits for more
        assert _served(server)  # another client, while this request line is half-sent
        sent, answered = send_until_answered(big, b"", FILLER, 100 * MB)
        reply = read_all(big)
    after = rss_kb(server.proc.pid)
    print(
        f"100 MB request line: {sent / MB:.1f} MB sent before the answer; "
        f"RSS {before} -> {after} kB"
    )
    assert answered and sent < 25 * MB
    assert status_of(reply) == 414 and reply.endswith(CLOSED)
    assert b"aaaa" not in reply  # the input is never echoed
    assert error_of(reply)["type"] == "invalid_request_error"
    assert after - before < GROWTH_BOUND_KB
    assert _served(server)


def test_a_30_mb_header_value_gets_431_as_it_arrives(server: SimProcess) -> None:
    before = rss_kb(server.proc.pid)
    with connect(server.url) as big:
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "
        sent, answered = send_until_answered(big, head, FILLER, 30 * MB)
        reply = read_all(big)
    after = rss_kb(server.proc.pid)
    print(f"30 MB header: {sent / MB:.1f} MB sent before the answer; RSS {before} -> {after} kB")
    assert answered and sent < 25 * MB
    assert status_of(reply) == 431 and reply.endswith(CLOSED)
    assert b"aaaa" not in reply
    error_of(reply)
    assert after - before < GROWTH_BOUND_KB
    assert _served(server)


def test_a_lying_content_length_gets_413_without_waiting_for_the_body(server: SimProcess) -> None:
    # 2 of 2,000,000,000 declared bytes arrive: the answer cannot wait for the rest.
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2000000000\r\n\r\n{}"
    )
    with connect(server.url) as sock:
        sock.sendall(head)
        reply = read_all(sock)
    assert status_of(reply) == 413 and reply.endswith(CLOSED)
    error_of(reply)
    assert _served(server)


def test_a_chunked_body_over_the_limit_is_refused_as_it_grows(server: SimProcess) -> None:
    # No declared length: the body is counted while it arrives and refused past 64 MiB.
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (len(FILLER), FILLER)
    with connect(server.url) as sock:
        sent, answered = send_until_answered(sock, head, chunk, 200 * MB)
        reply = read_all(sock)
    assert answered and sent < 100 * MB
    assert status_of(reply) == 413 and reply.endswith(CLOSED)
