"""Backpressure toward slow clients (issue 14, item 2): while a client's socket buffer is full the
router stops reading that engine connection, so the memory a slow client costs is bounded by a
constant, not by the size of its answer; a client that leaves aborts its engine request.

The engine is a real sim that does not itself slow down for a slow reader: it finishes every
stream at once and keeps what the router has not read in its own buffers. Router memory is read
from /proc/PID/status (a memory bound, not a timing threshold).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

import pytest

from conftest import SimProcess
from faults.edgekit import rss_kb
from httpclient import Client, http_request, request, wait_for

Factory = Callable[..., SimProcess]
CLIENTS = 10
TOKENS = 26000  # about 6 MB of SSE per stream
STREAM = {"model": "demo", "prompt": "x", "max_tokens": TOKENS, "ignore_eos": True, "stream": True}
MAX_GROWTH_KB = 10 * 1024


def finished(sim: SimProcess) -> float:
    return Client(sim.url).metric("vllm:request_success_total", finished_reason="length")


def inflight(router: SimProcess) -> float:
    return Client(router.url).metric("vfleet_router_endpoint_inflight")


def slow_client(url: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(10)
    host, _, port = url.removeprefix("http://").partition(":")
    sock.connect((host, int(port)))
    sock.sendall(http_request("POST", "/v1/completions", STREAM))
    return sock


@pytest.mark.timeout(120)
def test_slow_readers_cost_the_router_bounded_memory(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "demo", "--profile", "instant", "--max-model-len", "32768")
    router = router_factory("--backend", sim.url, "--health-interval", "0.5")
    assert wait_for(lambda: request(router.url, "GET", "/ready")[0] == 200, timeout_s=10)
    for _ in range(2):  # warm-up: whole streams at full speed
        status, raw = request(router.url, "POST", "/v1/completions", STREAM, 30)
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    done = finished(sim)
    baseline = rss_kb(router.proc.pid)
    socks = [slow_client(router.url) for _ in range(CLIENTS)]
    try:
        # The engine has written all of every stream; what the clients have not read is in the
        # kernel, the sim, or the router: the router must not be holding it.
        assert wait_for(lambda: finished(sim) == done + CLIENTS, timeout_s=60)
        peak = rss_kb(router.proc.pid)
        got = [b""] * CLIENTS
        for _ in range(20):  # a slow read: a few hundred bytes per client per round
            for i, sock in enumerate(socks):
                got[i] += sock.recv(256)
            peak = max(peak, rss_kb(router.proc.pid))
            time.sleep(0.05)
        assert peak - baseline < MAX_GROWTH_KB, (baseline, peak)
        for data in got:
            assert data.startswith(b"HTTP/1.1 200"), data[:200]
            assert b"data: {" in data
        assert inflight(router) == CLIENTS  # all still being relayed, at the clients' pace
    finally:
        for sock in socks:
            sock.close()
    # Clients that leave end their requests (the engine connections are dropped).
    assert wait_for(lambda: inflight(router) == 0, timeout_s=10)
    status, raw = request(router.url, "POST", "/v1/completions", STREAM, 30)
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")


@pytest.mark.timeout(60)
def test_a_client_that_leaves_a_paused_stream_aborts_the_engine_request(
    sim_factory: Factory, router_factory: Factory
) -> None:
    # 2 ms per step: the stream lasts about a minute unless it is aborted.
    sim = sim_factory(
        "--model", "demo", "--profile", "instant", "--step-base-ms", "2", "--max-model-len", "32768"
    )
    router = router_factory("--backend", sim.url, "--health-interval", "0.5")
    assert wait_for(lambda: request(router.url, "GET", "/ready")[0] == 200, timeout_s=10)
    sc = Client(sim.url)
    aborted = sc.metric("vllm:request_success_total", finished_reason="abort")
    sock = slow_client(router.url)
    assert sock.recv(64).startswith(b"HTTP/1.1 200")  # then never read again: paused
    assert wait_for(lambda: sc.metric("vllm:num_requests_running") == 1, timeout_s=10)
    sock.close()
    assert wait_for(
        lambda: sc.metric("vllm:request_success_total", finished_reason="abort") == aborted + 1,
        timeout_s=10,
    )
    assert wait_for(lambda: inflight(router) == 0, timeout_s=10)


@pytest.mark.timeout(60)
def test_a_client_stalled_past_the_idle_timeout_is_dropped(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "demo", "--profile", "instant", "--max-model-len", "32768")
    router = router_factory("--backend", sim.url, "--health-interval", "0.5", "--idle-timeout", "1")
    assert wait_for(lambda: request(router.url, "GET", "/ready")[0] == 200, timeout_s=10)
    sock = slow_client(router.url)  # never reads: its buffer fills and the relay pauses
    try:
        assert wait_for(lambda: inflight(router) == 1, timeout_s=10)
        assert wait_for(lambda: inflight(router) == 0, timeout_s=20)
        sock.settimeout(10)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while part := sock.recv(1 << 20):  # what was already sent, then the end
                got += part
        assert got.startswith(b"HTTP/1.1 200")
        assert not got.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # cut, not finished
    finally:
        sock.close()
