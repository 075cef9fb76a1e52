"""CPU per traced request: the OpenTelemetry Python SDK against vfleet's own recorder.

Both sides do what the router does per request: read the client's `traceparent`, start a SERVER
span with the request's attributes, make the `traceparent` the engine is sent, end the span into
a batching queue; and, apart, encode the spans as an OTLP export would. The SDK side uses a
BatchSpanProcessor with an exporter that drops what it gets (so no network is measured), vfleet's
side `router.tracing` (compiled when run from a compiled install). The SDK is optional: without
it only vfleet's numbers are printed.

usage: python benchmarks/otel_cost.py [--n 20000]
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from vfleet.router.tracing import Tracer, encode

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ours(n: int) -> tuple[float, float]:
    """(us per span begun and finished, us per span encoded)."""
    tracer = Tracer("http://127.0.0.1:9", max_queue=n + 1, seed=1)
    headers = {b"traceparent": TRACEPARENT.encode()}

    def one() -> None:
        span = tracer.begin(headers, "POST", "/v1/chat/completions")
        assert span is not None
        span.ttft_s = 0.001
        span.finish("demo", "http://127.0.0.1:8001", 1, 200, 0.002)

    per_span = timeit.timeit(one, number=n) / n * 1e6
    spans = list(tracer.queue)[:512]
    per_encoded = timeit.timeit(lambda: encode(spans, tracer.resource), number=20) / 20 / 512
    return per_span, per_encoded * 1e6


def sdk(n: int) -> float | None:
    """us per span through the SDK, or None when it is not installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracer = provider.get_tracer("vfleet.router")
    propagator = TraceContextTextMapPropagator()
    carrier = {"traceparent": TRACEPARENT}

    def one() -> None:
        context = propagator.extract(carrier)
        span = tracer.start_span(
            "POST /v1/chat/completions", context=context, kind=trace.SpanKind.SERVER
        )
        span.set_attribute("http.request.method", "POST")
        span.set_attribute("url.path", "/v1/chat/completions")
        span.set_attribute("gen_ai.request.model", "demo")
        span.set_attribute("vfleet.endpoint", "http://127.0.0.1:8001")
        span.set_attribute("vfleet.attempts", 1)
        span.set_attribute("http.response.status_code", 200)
        span.set_attribute("vfleet.time_to_first_byte_s", 0.001)
        out: dict[str, str] = {}
        propagator.inject(out, context=trace.set_span_in_context(span))
        span.end()

    per_span = timeit.timeit(one, number=n) / n * 1e6
    provider.shutdown()
    return per_span


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    per_span, per_encoded = ours(args.n)
    print(f"vfleet router.tracing: {per_span:.2f} us a span, {per_encoded:.2f} us to encode it")
    through_sdk = sdk(args.n)
    if through_sdk is None:
        print("opentelemetry-sdk not installed: no SDK numbers")
    else:
        print(f"opentelemetry-sdk: {through_sdk:.2f} us a span (export not included)")


if __name__ == "__main__":
    main()
