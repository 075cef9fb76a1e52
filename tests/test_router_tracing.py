"""OpenTelemetry: W3C trace context reaches the engines, and with --otlp-endpoint the router
sends one span per proxied request to an OTLP/HTTP collector.

End to end with real processes and sockets on 127.0.0.1: a `vfleet router`, an engine on
http.server that records the headers it is sent, and an OTLP/HTTP JSON receiver on http.server
standing in for a collector. The pure parts of router.tracing are tested directly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import start_router
from httpclient import Client
from vfleet.router.tracing import Tracer, encode, parse_traceparent, traces_url

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class Recorder(BaseHTTPRequestHandler):
    """An engine (GET: /v1/models, /health, /metrics; POST: a chat answer) or, on
    /v1/traces, an OTLP receiver. Every POST's headers and body are recorded."""

    protocol_version = "HTTP/1.1"
    posts: list[tuple[str, dict[str, str], bytes]]
    models = json.dumps({"object": "list", "data": [{"id": "demo", "object": "model"}]})

    def do_GET(self) -> None:
        self._send(self.models.encode() if self.path == "/v1/models" else b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.posts.append((self.path, headers, body))
        answer = b"{}" if self.path == "/v1/traces" else b'{"choices": []}'
        self._send(answer)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve() -> tuple[ThreadingHTTPServer, list[tuple[str, dict[str, str], bytes]]]:
    posts: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Bound", (Recorder,), {"posts": posts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, posts


@pytest.fixture
def engine() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    server, posts = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}", posts
    server.shutdown()
    server.server_close()


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    server, posts = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}", posts
    server.shutdown()
    server.server_close()


def spans_of(posts: list[tuple[str, dict[str, str], bytes]]) -> list[dict[str, Any]]:
    out = []
    for path, headers, body in posts:
        assert path == "/v1/traces" and headers["content-type"] == "application/json"
        for rs in json.loads(body)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                out.extend(ss["spans"])
    return out


def wait_spans(posts: list[tuple[str, dict[str, str], bytes]], n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        spans = spans_of(list(posts))
        if len(spans) >= n:
            return spans
        time.sleep(0.1)
    raise AssertionError(f"{len(spans_of(list(posts)))} spans arrived, wanted {n}")


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


def test_trace_context_forwarded_untouched_without_tracing(engine: Any) -> None:
    url, posts = engine
    rp = start_router("--backend", url, "--health-interval", "0.2")
    try:
        r = Client(rp.url).post(
            "/v1/chat/completions", CHAT, headers={"traceparent": SAMPLED, "tracestate": STATE}
        )
        assert r.status == 200
    finally:
        rp.stop()
    [(_, headers, _)] = [p for p in posts if p[0] == "/v1/chat/completions"]
    assert headers["traceparent"] == SAMPLED
    assert headers["tracestate"] == STATE


def test_span_exported_in_the_clients_trace(engine: Any, collector: Any) -> None:
    url, posts = engine
    otlp, received = collector
    rp = start_router("--backend", url, "--health-interval", "0.2", "--otlp-endpoint", otlp)
    try:
        c = Client(rp.url)
        traced = c.post(
            "/v1/chat/completions", CHAT, headers={"traceparent": SAMPLED, "tracestate": STATE}
        )
        fresh = c.post("/v1/chat/completions", CHAT)  # no context: the router starts a trace
        unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
        skipped = c.post("/v1/chat/completions", CHAT, headers={"traceparent": unsampled})
        assert (traced.status, fresh.status, skipped.status) == (200, 200, 200)
        spans = wait_spans(received, 2)
    finally:
        rp.stop()
    sent = [h for path, h, _ in posts if path == "/v1/chat/completions"]
    assert len(sent) == 3
    by_trace = {s["traceId"]: s for s in spans}
    assert len(spans) == 2 and len(by_trace) == 2  # the unsampled request made none
    span = by_trace[TRACE_ID]
    assert span["parentSpanId"] == PARENT_ID
    assert span["kind"] == 2 and span["name"] == "POST /v1/chat/completions"
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])
    a = attrs(span)
    assert a["gen_ai.request.model"] == "demo"
    assert a["vfleet.endpoint"] == url
    assert a["vfleet.attempts"] == "1"
    assert a["http.response.status_code"] == "200"
    assert a["vfleet.time_to_first_byte_s"] >= 0.0
    # The engine is sent the same trace, with the router's span as its parent; tracestate as is.
    assert sent[0]["traceparent"] == f"00-{TRACE_ID}-{span['spanId']}-01"
    assert sent[0]["tracestate"] == STATE
    # A request without context: a new trace, which the engine joins too.
    [root] = [s for s in spans if s["traceId"] != TRACE_ID]
    assert "parentSpanId" not in root
    assert sent[1]["traceparent"] == f"00-{root['traceId']}-{root['spanId']}-01"
    # Not sampled by the client: its header went on untouched.
    assert sent[2]["traceparent"] == unsampled


def test_span_of_a_request_no_engine_took(collector: Any) -> None:
    """A refused request (no engine is up, holding off) is traced too, as an error."""
    otlp, received = collector
    down = ("--backend", "http://127.0.0.1:9=demo", "--hold-timeout", "0")
    rp = start_router(*down, "--health-interval", "0.2", "--otlp-endpoint", otlp)
    try:
        r = Client(rp.url).post("/v1/chat/completions", CHAT, headers={"traceparent": SAMPLED})
        spans = wait_spans(received, 1)
    finally:
        rp.stop()
    [span] = spans
    assert r.status >= 500
    assert attrs(span)["http.response.status_code"] == str(r.status)
    assert span["status"]["code"] == 2


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (SAMPLED.encode(), (TRACE_ID, PARENT_ID, 1)),
        (f"01-{TRACE_ID}-{PARENT_ID}-03-future".encode(), (TRACE_ID, PARENT_ID, 3)),
        (None, None),
        (b"", None),
        (f"ff-{TRACE_ID}-{PARENT_ID}-01".encode(), None),  # version ff is invalid
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra".encode(), None),  # version 00 has 4 fields
        (f"00-{'0' * 32}-{PARENT_ID}-01".encode(), None),
        (f"00-{TRACE_ID}-{'0' * 16}-01".encode(), None),
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01".encode(), None),
        (f"00_{TRACE_ID}-{PARENT_ID}-01".encode(), None),
        (b"00-" + b"\xff" * 52, None),
    ],
)
def test_parse_traceparent(value: bytes | None, parsed: tuple[str, str, int] | None) -> None:
    assert parse_traceparent(value) == parsed


def test_traces_url() -> None:
    assert traces_url("http://otel:4318") == ("http://otel:4318", "/v1/traces")
    assert traces_url("http://otel:4318/") == ("http://otel:4318", "/v1/traces")
    assert traces_url("http://otel:4318/custom/traces") == ("http://otel:4318", "/custom/traces")
    for bad in ("https://otel:4318", "otel:4318", "http://"):
        with pytest.raises(ValueError):
            traces_url(bad)


def test_queue_is_bounded_and_drops_are_counted() -> None:
    tracer = Tracer("http://127.0.0.1:9", max_queue=2, seed=1)
    for _ in range(5):
        span = tracer.begin({}, "POST", "/v1/completions")
        assert span is not None
        span.finish("m", "http://e", 1, 200, 0.01)
    assert (len(tracer.queue), tracer.dropped) == (2, 3)
    body = json.loads(encode(list(tracer.queue), tracer.resource))
    assert len(body["resourceSpans"][0]["scopeSpans"][0]["spans"]) == 2


def test_failed_export_is_counted_not_retried() -> None:
    tracer = Tracer("http://127.0.0.1:9", timeout_s=2.0, seed=1)  # port 9: nothing listens
    span = tracer.begin({b"traceparent": SAMPLED.encode()}, "POST", "/v1/completions")
    assert span is not None
    span.finish("m", "http://e", 1, 200, 0.01)
    asyncio.run(tracer.flush())
    assert (tracer.failed, tracer.exported, len(tracer.queue)) == (1, 0, 0)
