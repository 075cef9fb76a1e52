"""Fault injection in `vfleet sim`: errors, hangs, crashes, slow start, failing health, cut streams.

Every fault is observed from outside, over real sockets, against a real simulator process.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from conftest import SimProcess, start_sim
from httpclient import free_port, request

COMPLETION = {"prompt": "Hello, fault injection.", "max_tokens": 4, "ignore_eos": True}
SimFactory = Callable[..., SimProcess]


def complete(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    return request(url, "POST", "/v1/completions", COMPLETION, timeout)


def assert_internal_error(status: int, body: bytes) -> None:
    assert status == 500
    err = json.loads(body)
    assert list(err) == ["error"]
    assert list(err["error"]) == ["message", "type", "param", "code"]
    assert err["error"]["type"] == "InternalServerError"
    assert err["error"]["code"] == 500
    assert err["error"]["param"] is None
    assert isinstance(err["error"]["message"], str) and err["error"]["message"]


# -- errors ----------------------------------------------------------------------------------


def test_error_rate_1_answers_every_inference_request_with_500(sim_factory: SimFactory) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant", "--error-rate", "1.0")
    for _ in range(3):
        assert_internal_error(*complete(sp.url))
    status, body = request(
        sp.url,
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert_internal_error(status, body)
    # Only inference fails: the rest of the server is fine.
    assert request(sp.url, "GET", "/health") == (200, b"")
    assert request(sp.url, "GET", "/v1/models")[0] == 200


def error_pattern(url: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        status, body = complete(url)
        if status == 500:
            assert_internal_error(status, body)
        else:
            assert status == 200, body
            assert json.loads(body)["usage"]["completion_tokens"] == 4
        out.append(status)
    return out


def test_error_rate_half_mixes_errors_and_answers_reproducibly(sim_factory: SimFactory) -> None:
    args = ("--model", "m", "--profile", "instant", "--error-rate", "0.5", "--seed", "7")
    a = sim_factory(*args)
    b = sim_factory(*args)
    pattern = error_pattern(a.url, 24)
    assert 4 <= pattern.count(500) <= 20, pattern
    assert 200 in pattern
    assert error_pattern(b.url, 24) == pattern, "the same --seed gives the same faults"


# -- crashes ---------------------------------------------------------------------------------


def test_crash_after_requests_exits_at_the_nth_inference_request(sim_factory: SimFactory) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant", "--crash-after-requests", "3")
    assert complete(sp.url)[0] == 200
    assert request(sp.url, "GET", "/health")[0] == 200  # not an inference request
    assert complete(sp.url)[0] == 200
    assert sp.proc.poll() is None
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        complete(sp.url)
    assert sp.wait_exit(5) != 0
    with pytest.raises(ConnectionRefusedError):
        request(sp.url, "GET", "/health", timeout=2)


def test_crash_after_seconds_exits_in_bounded_time(sim_factory: SimFactory) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant", "--crash-after-seconds", "1")
    ready = time.monotonic()
    assert request(sp.url, "GET", "/health", timeout=2)[0] == 200
    assert complete(sp.url)[0] == 200
    assert sp.wait_exit(5) != 0
    elapsed = time.monotonic() - ready
    assert 0.8 <= elapsed <= 5, elapsed
    assert any("crash" in line for line in sp.log)


# -- hangs -----------------------------------------------------------------------------------


def test_hang_rate_1_never_answers_but_health_does(sim_factory: SimFactory) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant", "--hang-rate", "1.0")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        complete(sp.url, timeout=1.0)
    assert time.monotonic() - t0 >= 0.9
    assert request(sp.url, "GET", "/health", timeout=2) == (200, b"")
    assert sp.proc.poll() is None
    # Switched off at run time, the fault stops.
    status, _ = request(sp.url, "POST", "/sim/faults", {"hang_rate": 0.0})
    assert status == 200
    assert complete(sp.url)[0] == 200


# -- start-up --------------------------------------------------------------------------------


def test_startup_delay_keeps_the_port_closed_until_ready() -> None:
    port = free_port()
    refused: list[float] = []  # seconds since launch of each refused connection attempt
    result: list[SimProcess] = []
    t0 = time.monotonic()

    def launch() -> None:
        result.append(start_sim("--model", "m", "--port", str(port), "--startup-delay", "1.5"))

    th = threading.Thread(target=launch, daemon=True)
    th.start()
    try:
        while th.is_alive() and time.monotonic() - t0 < 10:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
                break
            except ConnectionRefusedError:
                refused.append(time.monotonic() - t0)
                time.sleep(0.05)
        th.join(timeout=10)
        ready_after = time.monotonic() - t0
        assert result, "the simulator never printed its ready line"
        sp = result[0]
        assert sp.port == port
        assert ready_after >= 1.4, ready_after
        assert refused and max(refused) >= 1.2, "the port should stay closed during the delay"
        assert request(sp.url, "GET", "/health", timeout=2) == (200, b"")
    finally:
        th.join(timeout=10)
        for sp in result:
            sp.stop()


# -- health ----------------------------------------------------------------------------------


def test_health_failing_flag(sim_factory: SimFactory) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant", "--health-failing")
    assert request(sp.url, "GET", "/health") == (503, b"")
    assert request(sp.url, "GET", "/ping") == (503, b"")
    assert request(sp.url, "POST", "/ping") == (503, b"")
    assert complete(sp.url)[0] == 200  # the engine itself still serves


# -- runtime changes -------------------------------------------------------------------------


def test_faults_change_at_run_time(sim_factory: SimFactory) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant")
    status, body = request(sp.url, "GET", "/sim/faults")
    assert status == 200
    initial = json.loads(body)
    assert initial["health_failing"] is False and initial["error_rate"] == 0.0
    assert initial["requests_seen"] == 0

    status, body = request(sp.url, "POST", "/sim/faults", {"health_failing": True})
    assert status == 200 and json.loads(body)["health_failing"] is True
    assert request(sp.url, "GET", "/health")[0] == 503
    assert request(sp.url, "GET", "/ping")[0] == 503
    assert request(sp.url, "POST", "/sim/faults", {"health_failing": False})[0] == 200
    assert request(sp.url, "GET", "/health") == (200, b"")

    assert request(sp.url, "POST", "/sim/faults", {"error_rate": 1.0})[0] == 200
    assert_internal_error(*complete(sp.url))
    assert json.loads(request(sp.url, "GET", "/sim/faults")[1])["error_rate"] == 1.0
    assert request(sp.url, "POST", "/sim/faults", {"error_rate": 0})[0] == 200
    assert complete(sp.url)[0] == 200
    assert json.loads(request(sp.url, "GET", "/sim/faults")[1])["requests_seen"] == 2


@pytest.mark.parametrize(
    "change",
    [{"no_such_fault": 1}, {"error_rate": 2.0}, {"error_rate": "high"}, {"health_failing": 1}],
)
def test_bad_fault_changes_are_400(sim_factory: SimFactory, change: dict[str, object]) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant")
    before = request(sp.url, "GET", "/sim/faults")[1]
    status, body = request(sp.url, "POST", "/sim/faults", change)
    assert status == 400
    err = json.loads(body)["error"]
    assert err["code"] == 400 and err["type"] == "BadRequestError"
    assert request(sp.url, "GET", "/sim/faults")[1] == before, "a rejected change changes nothing"


def test_fault_change_that_is_not_json_is_400(sim_factory: SimFactory) -> None:
    sp = sim_factory("--model", "m", "--profile", "instant")
    u = urlsplit(sp.url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=5)
    try:
        conn.request(
            "POST", "/sim/faults", body=b"{nope", headers={"content-type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 400
        assert json.loads(resp.read())["error"]["code"] == 400
    finally:
        conn.close()


# -- cut streams -----------------------------------------------------------------------------


def read_stream(url: str, body: dict[str, object]) -> tuple[list[bytes], bool]:
    """SSE `data:` payloads of a streamed completion, and whether the chunked body was complete.

    Reads the raw socket to EOF (the request asks for `connection: close`), so a cut connection
    shows as a body without its terminating zero-length chunk.
    """
    u = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nhost: {u.netloc}\r\ncontent-type: application/json"
        f"\r\ncontent-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    ).encode()
    raw = b""
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=5) as s:
        s.sendall(head + payload)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            raw += data
    header, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep and header.startswith(b"HTTP/1.1 200"), raw[:200]
    assert b"transfer-encoding: chunked" in header.lower()
    text, complete = b"", False
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            complete = rest.startswith(b"\r\n")
            break
        if len(rest) < size + 2:
            text += rest[:size]  # a chunk cut in the middle
            break
        text += rest[:size]
        rest = rest[size + 2 :]
    events = [ln[6:] for ln in text.split(b"\n") if ln.startswith(b"data: ")]
    return events, complete


@pytest.mark.parametrize("profile", ["small", "instant"])
def test_drop_stream_after_chunks_cuts_the_connection(
    sim_factory: SimFactory, profile: str
) -> None:
    sp = sim_factory("--model", "m", "--profile", profile, "--drop-stream-after-chunks", "3")
    body = {"prompt": "Stream to me.", "max_tokens": 20, "ignore_eos": True, "stream": True}
    events, complete = read_stream(sp.url, body)
    assert not complete, "the stream should be cut, not finished"
    assert b"[DONE]" not in events
    # Three chunks reach the client, then the connection is cut.
    assert len(events) == 3, events
    for ev in events:
        assert json.loads(ev)["choices"][0]["finish_reason"] is None
    # The simulator survives and forgets the dropped request.
    assert request(sp.url, "GET", "/health") == (200, b"")
    status, _ = request(sp.url, "POST", "/sim/faults", {"drop_stream_after_chunks": 0})
    assert status == 200
    events, complete = read_stream(sp.url, body)
    assert complete and events[-1] == b"[DONE]"
    assert len(events) == 21
