"""Retry what has not started (issue 14, item 3): a request counts as started only once a byte of
its answer reached the client, so an engine that dies (or answers 502/503/504) while requests wait
in its queue, its stream heads already sent, costs retries on another engine, not errors.

Real router and sim processes on 127.0.0.1; the dying engine is killed with SIGKILL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from conftest import SimProcess
from httpclient import SSE, Client, metric_value, request, wait_for

Factory = Callable[..., SimProcess]
CLIENTS = 64
SLOW_STEP = ("--step-base-ms", "60000")  # the first step (prefill) outlasts the test: no token


def body(i: int) -> dict[str, Any]:
    """Even clients stream, odd ones wait for the whole answer."""
    return {
        "model": "demo",
        "prompt": f"client {i}",
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": i % 2 == 0,
    }


def assert_complete(i: int, status: int, raw: bytes) -> None:
    assert status == 200, raw[:300]
    if i % 2 == 0:
        sse = SSE.parse(raw)
        assert sse.done_last, raw[-300:]
        assert all("error" not in e for e in sse.events), sse.events
        assert sum(len(e["choices"][0]["text"]) > 0 for e in sse.events) >= 1
    else:
        assert json.loads(raw)["usage"]["completion_tokens"] == 4


def engine_load(sim: SimProcess) -> float:
    """Requests the engine holds: running (no token yet, with SLOW_STEP) plus waiting."""
    text = Client(sim.url).get("/metrics").body.decode()
    return metric_value(text, "vllm:num_requests_running") + metric_value(
        text, "vllm:num_requests_waiting"
    )


@pytest.mark.timeout(120)
def test_killing_an_engine_whose_requests_are_all_queued_loses_none(
    sim_factory: Factory, router_factory: Factory
) -> None:
    doomed = sim_factory(
        "--model", "demo", "--profile", "instant", "--max-num-seqs", "4", *SLOW_STEP
    )
    healthy = sim_factory("--model", "demo", "--profile", "instant", "--max-num-seqs", "4")
    router = router_factory(
        "--backend",
        doomed.url,
        "--backend",
        healthy.url,
        "--policy",
        "round_robin",
        "--health-interval",
        "0.2",
    )
    assert wait_for(lambda: _healthy_endpoints(router) == 2, timeout_s=10)
    results: list[tuple[int, bytes] | None] = [None] * CLIENTS

    def client(i: int) -> None:
        results[i] = request(router.url, "POST", "/v1/completions", body(i), 60)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    # Half the requests sit in the doomed engine (4 prefilling, the rest waiting), their stream
    # heads already sent, not one token produced.
    assert wait_for(lambda: engine_load(doomed) == CLIENTS // 2, timeout_s=30)
    doomed.proc.kill()
    doomed.wait_exit()
    for t in threads:
        t.join(timeout=60)
    for i, result in enumerate(results):
        assert result is not None, f"client {i} got no answer"
        assert_complete(i, *result)
    retries = Client(router.url).metric("vfleet_router_retries_total", model="demo")
    assert retries >= CLIENTS // 2


class _Unavailable(BaseHTTPRequestHandler):
    """An engine that is up but cannot serve: healthy to probes, 503 to inference."""

    protocol_version = "HTTP/1.1"
    posts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self._answer(200, b'{"object":"list","data":[{"id":"demo","object":"model"}]}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).posts.append(self.path)
        self._answer(503, b'{"error":{"message":"overloaded","type":"x","param":null,"code":503}}')

    def _answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def unavailable_engine() -> Iterator[str]:
    _Unavailable.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "full"])
def test_a_503_before_any_byte_is_retried_on_another_engine(
    sim_factory: Factory, router_factory: Factory, unavailable_engine: str, stream: bool
) -> None:
    ok = sim_factory("--model", "demo", "--profile", "instant")
    router = router_factory(
        "--backend",
        f"{unavailable_engine}=demo",
        "--backend",
        ok.url,
        "--policy",
        "round_robin",
        "--health-interval",
        "0.2",
    )
    assert wait_for(lambda: _healthy_endpoints(router) == 2, timeout_s=10)
    for _ in range(4):  # round robin: two of them go to the 503 engine first
        status, raw = request(router.url, "POST", "/v1/completions", body(0 if stream else 1))
        assert_complete(0 if stream else 1, status, raw)
    # Every request the 503 engine saw was retried (where the rotation sends them varies).
    posts = len(_Unavailable.posts)
    assert posts >= 1
    assert Client(router.url).metric("vfleet_router_retries_total", model="demo") == posts


def test_a_503_from_the_only_engine_is_relayed(
    router_factory: Factory, unavailable_engine: str
) -> None:
    router = router_factory("--backend", f"{unavailable_engine}=demo", "--health-interval", "0.2")
    assert wait_for(lambda: _healthy_endpoints(router) == 1, timeout_s=10)
    status, raw = request(router.url, "POST", "/v1/completions", body(1))
    assert status == 503
    assert json.loads(raw)["error"]["message"] == "overloaded"  # the engine's own answer


def _healthy_endpoints(router: SimProcess) -> float:
    text = Client(router.url).get("/metrics").body.decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("vfleet_router_endpoint_healthy{")
    )
