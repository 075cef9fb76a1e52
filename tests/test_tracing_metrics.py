"""`vfleet_router_spans_total{outcome}`: what became of the router's OpenTelemetry spans,
summed over workers like every router counter.

End to end: a real `vfleet router` with two workers, a simulator engine, and an OTLP/HTTP
receiver on http.server that takes (or refuses) the span batches; every scrape (any worker may
answer one) shows the whole router's counts. The queue-full drop is driven directly on a Tracer
counting into a RouterMetrics, as the router wires them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import SimProcess
from httpclient import Client, wait_for
from vfleet.router.endpoints import Registry
from vfleet.router.metrics import RouterMetrics
from vfleet.router.tracing import Tracer

pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., SimProcess]
SAMPLE = re.compile(r'^vfleet_router_spans_total\{outcome="([a-z]+)"\} (\S+)$', re.M)
COMPLETION = {"model": "demo", "prompt": "hi", "max_tokens": 2}
SCRAPES = 6  # fresh connections: with two workers, all but surely both answer one
REQUESTS = 8


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver answering every POST with `status`, counting the batches."""

    protocol_version = "HTTP/1.1"
    status = 200
    batches: list[int]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.batches.append(body.count(b'"spanId"'))
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[int]]]:
    batches: list[int] = []
    status = getattr(request, "param", 200)
    handler = type("Bound", (Receiver,), {"batches": batches, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", batches
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def outcomes(router: SimProcess) -> dict[str, float]:
    got = Client(router.url).get("/metrics")
    assert got.status == 200
    return {k: float(v) for k, v in SAMPLE.findall(got.body.decode())}


def every_scrape(router: SimProcess, want: dict[str, float]) -> Callable[[], bool]:
    return lambda: all(outcomes(router) == want for _ in range(SCRAPES))


def _traced_router(receiver_url: str, sim_factory: Factory, router_factory: Factory) -> SimProcess:
    sim = sim_factory("--model", "demo", "--profile", "instant")
    router = router_factory("--backend", sim.url, "--workers", "2", "--otlp-endpoint", receiver_url)
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 2, timeout_s=20)
    return router


def test_exported_spans_are_counted_over_all_workers(
    receiver: tuple[str, list[int]], sim_factory: Factory, router_factory: Factory
) -> None:
    url, batches = receiver
    router = _traced_router(url, sim_factory, router_factory)
    # every outcome's series is there, at 0, before the first span
    assert every_scrape(router, {"exported": 0.0, "dropped": 0.0, "failed": 0.0})()
    client = Client(router.url)
    for _ in range(REQUESTS):
        assert client.post("/v1/completions", COMPLETION).status == 200
    assert wait_for(lambda: sum(batches) == REQUESTS, timeout_s=20)
    want = {"exported": float(REQUESTS), "dropped": 0.0, "failed": 0.0}
    assert wait_for(every_scrape(router, want), timeout_s=20), outcomes(router)


@pytest.mark.parametrize("receiver", [503], indirect=True)
def test_spans_the_collector_refuses_are_counted_failed(
    receiver: tuple[str, list[int]], sim_factory: Factory, router_factory: Factory
) -> None:
    url, batches = receiver
    router = _traced_router(url, sim_factory, router_factory)
    client = Client(router.url)
    for _ in range(REQUESTS):
        assert client.post("/v1/completions", COMPLETION).status == 200
    assert wait_for(lambda: sum(batches) == REQUESTS, timeout_s=20)
    want = {"exported": 0.0, "dropped": 0.0, "failed": float(REQUESTS)}
    assert wait_for(every_scrape(router, want), timeout_s=20), outcomes(router)


def test_no_series_without_tracing(sim_factory: Factory, router_factory: Factory) -> None:
    sim = sim_factory("--model", "demo", "--profile", "instant")
    router = router_factory("--backend", sim.url)
    assert Client(router.url).post("/v1/completions", COMPLETION).status == 200
    text = Client(router.url).get("/metrics").body.decode()
    assert "# TYPE vfleet_router_spans_total counter\n" in text
    assert outcomes(router) == {}


def test_spans_dropped_on_a_full_queue_reach_the_scrape() -> None:
    metrics = RouterMetrics()
    tracer = Tracer("http://127.0.0.1:9", max_queue=2, seed=1, count=metrics.span_outcome)
    for _ in range(5):
        span = tracer.begin({}, "POST", "/v1/completions")
        assert span is not None
        span.finish("m", "http://e", 1, 200, 0.01)
    text = metrics.render(Registry()).decode()
    got = {k: float(v) for k, v in SAMPLE.findall(text)}
    assert got == {"exported": 0.0, "dropped": 3.0, "failed": 0.0}
    assert tracer.dropped == 3
