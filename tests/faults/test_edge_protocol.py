"""HTTP/1.1 semantics at the edge (issue 14, item 1): Upgrade answered once, Expect:
100-continue, exactly one Host, pipelined requests in order with bounded buffering, and garbage
behind a streaming response refused only after the stream ends intact.

Each case runs against a sim and a router (default `EdgeLimits`), through raw sockets.
"""

from __future__ import annotations

import json

import pytest

from conftest import SimProcess
from faults.edgekit import CLOSED, connect, error_of, read_all, read_head, status_of
from httpclient import RawReader, http_request

STREAM = {"model": "demo", "prompt": "x", "max_tokens": 40, "ignore_eos": True, "stream": True}
GARBAGE = b"\x16\x03\x01 this is not HTTP\r\n\r\n"


@pytest.fixture(params=["slow_engine", "router"])
def server(request: pytest.FixtureRequest) -> SimProcess:
    sp: SimProcess = request.getfixturevalue(request.param)
    return sp


def _post_head(length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (length, extra)
    )


def test_an_upgrade_request_gets_one_response_and_a_close(server: SimProcess) -> None:
    req = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x85frame"
    )
    with connect(server.url) as sock:
        sock.sendall(req)
        reply = read_all(sock)
    assert status_of(reply) == 200 and reply.endswith(CLOSED)
    assert reply.count(b"HTTP/1.1 ") == 1  # no second answer to the bytes after it


def test_connect_and_upgrades_with_a_body_are_refused(server: SimProcess) -> None:
    for req in (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    ):
        with connect(server.url) as sock:
            sock.sendall(req)
            reply = read_all(sock)
        assert status_of(reply) == 400 and reply.endswith(CLOSED), reply
        assert reply.count(b"HTTP/1.1 ") == 1
        error_of(reply)


def test_expect_100_continue_is_answered_before_the_body(server: SimProcess) -> None:
    body = json.dumps({"model": "demo", "prompt": "x", "max_tokens": 2}).encode()
    with connect(server.url) as sock:
        sock.sendall(_post_head(len(body), b"Expect: 100-continue\r\n"))
        assert read_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body is sent
        sock.sendall(body)
        status, _, answer = RawReader(sock).response()
    assert status == 200 and json.loads(answer)["usage"]["completion_tokens"] == 2


def test_expectations_that_are_refused(server: SimProcess) -> None:
    cases = (
        (_post_head(2, b"Expect: 100-continue\r\n").replace(b"2", b"2000000000", 1), 413),
        (_post_head(2, b"Expect: something-else\r\n"), 417),
    )
    for head, want in cases:
        with connect(server.url) as sock:
            sock.sendall(head)
            reply = read_all(sock)
        assert status_of(reply) == want and reply.endswith(CLOSED), reply
        assert b"100 Continue" not in reply
        error_of(reply)


def test_http_1_1_needs_exactly_one_host(server: SimProcess) -> None:
    for head in (
        b"GET /health HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    ):
        with connect(server.url) as sock:
            sock.sendall(head)
            reply = read_all(sock)
        assert status_of(reply) == 400 and reply.endswith(CLOSED), head
        assert "Host" in error_of(reply)["message"]
    with connect(server.url) as sock:  # HTTP/1.0 has no Host requirement
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert status_of(read_all(sock)) == 200


def test_pipelined_requests_are_answered_in_order(server: SimProcess) -> None:
    reqs = [
        http_request(
            "POST",
            "/v1/completions",
            {"model": "demo", "prompt": "p", "max_tokens": 5, "ignore_eos": True},
        ),
        http_request("GET", "/health"),
        http_request("POST", "/v1/completions", STREAM),
        http_request("GET", "/v1/models"),
        http_request("GET", "/nope"),
    ]
    with connect(server.url) as sock:
        sock.sendall(b"".join(reqs))
        reader = RawReader(sock)
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 5
        assert reader.response()[0] == 200
        status, headers, body = reader.response()
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert body.count(b"data: ") > 2 and body.endswith(b"data: [DONE]\n\n")
        assert json.loads(reader.response()[2])["object"] == "list"
        assert reader.response()[0] == 404
        assert read_all(sock, timeout_s=0.2) == b""  # exactly one response per request


def test_many_pipelined_requests_behind_a_stream_are_held_then_answered(
    server: SimProcess,
) -> None:
    # ~150 kB of requests behind a stream: more than the server holds unparsed (64 kB), so it
    # stops reading until the stream ends; then every request is answered, in order.
    health = http_request("GET", "/health")
    count = 150_000 // len(health)
    with connect(server.url) as sock:
        sock.sendall(http_request("POST", "/v1/completions", STREAM) + health * count)
        reader = RawReader(sock)
        assert reader.response()[2].endswith(b"data: [DONE]\n\n")
        for _ in range(count):
            assert reader.response()[0] == 200
        assert read_all(sock, timeout_s=0.2) == b""


@pytest.mark.parametrize("together", [True, False], ids=["same-write", "mid-stream"])
def test_garbage_behind_a_stream_is_refused_after_the_stream_ends_intact(
    server: SimProcess, together: bool
) -> None:
    with connect(server.url) as sock:
        stream = http_request("POST", "/v1/completions", STREAM)
        sock.sendall(stream + GARBAGE if together else stream)
        reader = RawReader(sock)
        if not together:
            while b"data: " not in reader.buf:  # the stream is under way
                reader.buf += sock.recv(65536)
            sock.sendall(GARBAGE)
        status, _, body = reader.response()
        assert status == 200
        assert body.count(b"data: ") > 2 and body.endswith(b"data: [DONE]\n\n")
        rest = reader.buf + read_all(sock)
    assert status_of(rest) == 400 and rest.endswith(CLOSED)
    assert error_of(rest)["message"] == "Malformed HTTP request."
