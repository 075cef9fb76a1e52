"""OpenTelemetry tracing of proxied requests: W3C trace context in, one span per request out.

Off by default. Without `--otlp-endpoint` the router builds no `Tracer`, the request path reads
one attribute (`Router.tracer is None`) and allocates nothing, and a client's `traceparent` and
`tracestate` reach the engines untouched, as every other header does.

With it, each proxied request gets a span (kind SERVER) in the client's trace: its parent is the
span named by the client's `traceparent` (a request without one, or with a malformed one, starts
a new trace). The engines are sent the same trace id with this span's id as the parent, as W3C
Trace Context asks of a participating intermediary, so an engine that traces (vLLM with
`--otlp-traces-endpoint`) hangs its spans under the router's; `tracestate` is kept as it came
(dropped only with a trace the router started itself). A client that marks its trace not sampled
(flags bit 0 clear) is not recorded, and its headers go on untouched.

A finished span is appended to a bounded queue (full: the span is dropped and counted) and a task
of the worker's event loop sends the queue in batches, every `flush_s` or sooner when a batch is
full, as OTLP/HTTP JSON (`POST {endpoint}/v1/traces`), one connection per batch, bounded in time.
A failed batch is counted and not retried: a collector that is down costs the router nothing but
the lost spans. The counts (exported, dropped, failed) also go to the router's shared metrics
table through `count` (`vfleet_router_spans_total`, summed over workers like every counter).

Why not the OpenTelemetry SDK: its span objects, context propagation and BatchSpanProcessor cost
~25-35 us of CPU per span on this project's 2-core benchmark box, about what a whole proxied
request costs the router (~40 us); this recorder costs ~2 us a span plus ~2 us to encode it in
the export task (compiled; `benchmarks/otel_cost.py` measures both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import orjson

from vfleet.http import client

log = logging.getLogger(__name__)

TRACEPARENT: Final = b"traceparent"
TRACESTATE: Final = b"tracestate"
# Request headers a traced request's own context replaces (the child's, and a new trace's).
REPLACED: Final = frozenset({TRACEPARENT})
REPLACED_ROOT: Final = frozenset({TRACEPARENT, TRACESTATE})

MAX_QUEUE: Final = 4096  # finished spans waiting for export, per worker
BATCH: Final = 512  # spans per export request
FLUSH_S: Final = 1.0
TIMEOUT_S: Final = 5.0  # one export exchange, connect included
SPAN_KIND_SERVER: Final = 2
# What became of finished spans: the `outcome` label of vfleet_router_spans_total.
EXPORTED: Final = "exported"  # taken by the collector
DROPPED: Final = "dropped"  # the queue was full
FAILED: Final = "failed"  # in a batch the collector did not take (refused, timed out, down)
OUTCOMES: Final = (EXPORTED, DROPPED, FAILED)
STATUS_ERROR: Final = 2
_HEX: Final = frozenset("0123456789abcdef")


def parse_traceparent(value: bytes | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a W3C `traceparent` value, lower-case hex; None when
    absent or malformed (version ff, wrong lengths, upper-case or non-hex digits, all-zero ids;
    a future version may append fields after a dash)."""
    if value is None or len(value) < 55:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    version, trace_id, parent_id, flags = text[:2], text[3:35], text[36:52], text[53:55]
    if text[2] != "-" or text[35] != "-" or text[52] != "-":
        return None
    if version == "ff" or (version == "00" and len(text) != 55):
        return None
    if len(text) > 55 and text[55] != "-":
        return None
    if not _HEX.issuperset(version + trace_id + parent_id + flags):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id, int(flags, 16)


class Span:
    """One proxied request's span: begun when the request is read, finished once answered."""

    __slots__ = (
        "attempts",
        "duration_s",
        "endpoint",
        "error",
        "header",
        "method",
        "model",
        "parent_id",
        "root",
        "route",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
        "tracer",
        "ttft_s",
    )

    def __init__(
        self,
        tracer: Tracer,
        trace_id: str,
        parent_id: str,
        span_id: str,
        flags: int,
        method: str,
        route: str,
    ) -> None:
        self.tracer = tracer
        self.trace_id = trace_id
        self.parent_id = parent_id  # "" for a trace the router started
        self.root = not parent_id
        self.span_id = span_id
        self.start_ns = time.time_ns()
        self.method = method
        self.route = route
        # The `traceparent` line the engines get: this span is their parent. Concatenation:
        # compiled, bytes % formatting is a generic call several times slower.
        tail = b"-01\r\n" if flags == 1 else b"-%02x\r\n" % flags
        self.header = b"traceparent: 00-" + trace_id.encode() + b"-" + span_id.encode() + tail
        self.ttft_s = -1.0  # the first body byte, seconds after the start; -1: none came
        self.model = ""
        self.endpoint = ""
        self.attempts = 0
        self.status = 0
        self.duration_s = 0.0
        self.error = ""

    def finish(
        self,
        model: str,
        endpoint: str,
        attempts: int,
        status: int,
        duration_s: float,
        error: str = "",
    ) -> None:
        """The request is over: queue the span for export."""
        self.model = model
        self.endpoint = endpoint
        self.attempts = attempts
        self.status = status
        self.duration_s = duration_s
        self.error = error
        self.tracer.queue_span(self)


class Tracer:
    """Begins spans for requests, keeps finished ones in a bounded queue, exports them.

    `count(outcome, n)`: told of every span's outcome (one of OUTCOMES), each at 0 at the start
    so every series exists before the first export; None: only this tracer's attributes."""

    def __init__(
        self,
        endpoint: str,
        service: str = "vfleet-router",
        max_queue: int = MAX_QUEUE,
        batch: int = BATCH,
        flush_s: float = FLUSH_S,
        timeout_s: float = TIMEOUT_S,
        seed: int | None = None,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.url, self.path = traces_url(endpoint)
        self.max_queue = max_queue
        self.batch = batch
        self.flush_s = flush_s
        self.timeout_s = timeout_s
        # Ids from a PRNG, not os.urandom: that is a system call per request. Trace and span ids
        # must be unique, not secret.
        self._rng = random.Random(seed)
        self.queue: deque[Span] = deque()
        self.resource = [{"key": "service.name", "value": {"stringValue": service}}]
        self.exported = 0
        self.dropped = 0  # the queue was full
        self.failed = 0  # in batches the collector did not take
        self._wake: asyncio.Event | None = None
        self._count = count
        if count is not None:
            for outcome in OUTCOMES:
                count(outcome, 0)

    def begin(self, headers: dict[bytes, bytes], method: str, route: str) -> Span | None:
        """A span for a request with these headers; None when the client's trace is not sampled
        (nothing is recorded and its headers go on untouched)."""
        parent = parse_traceparent(headers.get(TRACEPARENT))
        rng = self._rng
        span_id = (rng.getrandbits(64) or 1).to_bytes(8, "big").hex()
        if parent is None:
            trace_id = (rng.getrandbits(128) or 1).to_bytes(16, "big").hex()
            return Span(self, trace_id, "", span_id, 1, method, route)
        trace_id, parent_id, flags = parent
        if not flags & 1:
            return None
        return Span(self, trace_id, parent_id, span_id, flags, method, route)

    def queue_span(self, span: Span) -> None:
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.dropped += 1
            count = self._count
            if count is not None:
                count(DROPPED, 1)
            return
        queue.append(span)
        wake = self._wake
        if wake is not None and len(queue) >= self.batch and not wake.is_set():
            wake.set()

    async def run(self) -> None:
        """Export forever: every `flush_s`, or as soon as a batch is full."""
        self._wake = wake = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.flush_s)
            wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued now, in batches."""
        queue = self.queue
        while queue:
            spans = [queue.popleft() for _ in range(min(len(queue), self.batch))]
            body = encode(spans, self.resource)
            try:
                answer = await client.post(
                    self.url, self.path, body, b"application/json", self.timeout_s
                )
                ok = 200 <= answer.status < 300
            except (OSError, ValueError) as exc:
                ok = False
                answer = client.Response(0, repr(exc).encode())
            count = self._count
            if ok:
                self.exported += len(spans)
                if count is not None:
                    count(EXPORTED, len(spans))
                continue
            if not self.failed:
                log.warning(
                    "OTLP export to %s%s failed (%s); spans of failed batches are dropped",
                    self.url,
                    self.path,
                    answer.status or answer.body.decode(errors="replace"),
                )
            self.failed += len(spans)
            if count is not None:
                count(FAILED, len(spans))
            return  # the rest waits for the next round


def traces_url(endpoint: str) -> tuple[str, str]:
    """(base URL, path) spans are POSTed to: `http://HOST:PORT` gets OTLP's `/v1/traces`, a URL
    with a path is used as it is. ValueError for anything but an http:// URL with a host."""
    if not endpoint.startswith("http://"):
        raise ValueError(f"the OTLP endpoint must be an http:// URL, not {endpoint!r}")
    authority, slash, path = endpoint.removeprefix("http://").partition("/")
    client.split_url(authority)  # ValueError without a host
    path = slash + path
    return "http://" + authority, path if path.strip("/") else "/v1/traces"


def span_json(span: Span) -> dict[str, Any]:
    """One span in OTLP/JSON: ids in hex, times in nanoseconds since the epoch as strings (OTLP
    JSON's int64). Dict literals for orjson: compiled, 2.1 us a span against 3.0 us for the same
    JSON written from bytes templates (measured when this was written)."""
    attrs = [
        {"key": "http.request.method", "value": {"stringValue": span.method}},
        {"key": "url.path", "value": {"stringValue": span.route}},
        {"key": "http.response.status_code", "value": {"intValue": str(span.status)}},
        {"key": "vfleet.attempts", "value": {"intValue": str(span.attempts)}},
    ]
    if span.model:
        attrs.append({"key": "gen_ai.request.model", "value": {"stringValue": span.model}})
    if span.endpoint:
        attrs.append({"key": "vfleet.endpoint", "value": {"stringValue": span.endpoint}})
    if span.ttft_s >= 0.0:
        ttft = {"doubleValue": span.ttft_s}
        attrs.append({"key": "vfleet.time_to_first_byte_s", "value": ttft})
    if span.error:
        attrs.append({"key": "error.type", "value": {"stringValue": span.error}})
    out: dict[str, Any] = {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "name": span.method + " " + span.route,
        "kind": SPAN_KIND_SERVER,
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.start_ns + int(span.duration_s * 1e9)),
        "attributes": attrs,
    }
    if span.parent_id:
        out["parentSpanId"] = span.parent_id
    if span.error or span.status >= 500:
        out["status"] = {"code": STATUS_ERROR, "message": span.error or str(span.status)}
    return out


def encode(spans: list[Span], resource: list[dict[str, Any]]) -> bytes:
    """An OTLP/HTTP JSON ExportTraceServiceRequest carrying `spans`."""
    scope = {"scope": {"name": "vfleet.router"}, "spans": [span_json(s) for s in spans]}
    return orjson.dumps(
        {"resourceSpans": [{"resource": {"attributes": resource}, "scopeSpans": [scope]}]}
    )
