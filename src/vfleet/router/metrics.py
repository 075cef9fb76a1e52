"""The router's own Prometheus metrics (`vfleet_router_*`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from vfleet.prom import Histogram, fmt, labels
from vfleet.router.endpoints import Registry

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
HOLD_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


@dataclass(slots=True)
class RouterMetrics:
    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # model, url, status
    retries: Counter[str] = field(default_factory=Counter)  # model
    rejected: Counter[str] = field(default_factory=Counter)  # reason
    ttft: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    duration: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    # The activator, per model: seconds requests were held (released or expired), wakes (a
    # request held while none was), hold deadlines passed, and requests refused on a full queue.
    hold_seconds: dict[str, Histogram] = field(default_factory=dict)
    activations: Counter[str] = field(default_factory=Counter)
    hold_timeouts: Counter[str] = field(default_factory=Counter)
    hold_rejected: Counter[str] = field(default_factory=Counter)

    def observe_hold(self, model: str, seconds: float) -> None:
        hist = self.hold_seconds.get(model)
        if hist is None:
            hist = self.hold_seconds[model] = Histogram(HOLD_BUCKETS)
        hist.observe(seconds)

    def render(self, registry: Registry, held: Mapping[str, int] | None = None) -> bytes:
        """The exposition text; `held`: requests held now per model (the activator's gauge)."""
        out = [
            "# HELP vfleet_router_requests_total Requests answered, by model, endpoint, status.\n",
            "# TYPE vfleet_router_requests_total counter\n",
        ]
        for (model, url, status), n in sorted(self.requests.items()):
            lbl = labels({"model": model, "endpoint": url, "status": str(status)})
            out.append(f"vfleet_router_requests_total{lbl} {fmt(n)}\n")
        out += [
            "# HELP vfleet_router_retries_total Requests retried on another endpoint.\n",
            "# TYPE vfleet_router_retries_total counter\n",
        ]
        for model, n in sorted(self.retries.items()):
            out.append(f"vfleet_router_retries_total{labels({'model': model})} {fmt(n)}\n")
        out += [
            "# HELP vfleet_router_rejected_total Requests refused by the router, by reason.\n",
            "# TYPE vfleet_router_rejected_total counter\n",
        ]
        for reason, n in sorted(self.rejected.items()):
            out.append(f"vfleet_router_rejected_total{labels({'reason': reason})} {fmt(n)}\n")
        out += [
            "# HELP vfleet_router_endpoint_healthy 1 when the endpoint passes health probes.\n",
            "# TYPE vfleet_router_endpoint_healthy gauge\n",
        ]
        eps = sorted(registry.endpoints.values(), key=lambda e: e.url)
        for ep in eps:
            out.append(
                f"vfleet_router_endpoint_healthy{labels({'endpoint': ep.url})} "
                f"{fmt(float(ep.healthy))}\n"
            )
        out += [
            "# HELP vfleet_router_endpoint_inflight Requests in flight to the endpoint.\n",
            "# TYPE vfleet_router_endpoint_inflight gauge\n",
        ]
        for ep in eps:
            out.append(
                f"vfleet_router_endpoint_inflight{labels({'endpoint': ep.url})} "
                f"{fmt(ep.inflight)}\n"
            )
        for name, hist, what in (
            ("time_to_first_byte_seconds", self.ttft, "Router-seen time to the first body byte."),
            ("request_duration_seconds", self.duration, "Router-seen request duration."),
            ("inter_chunk_latency_seconds", self.itl, "Router-seen gaps between streamed chunks."),
        ):
            out += [
                f"# HELP vfleet_router_{name} {what}\n",
                f"# TYPE vfleet_router_{name} histogram\n",
            ]
            acc = 0
            for le, n in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                acc += n
                out.append(f'vfleet_router_{name}_bucket{{le="{fmt(le)}"}} {fmt(acc)}\n')
            out.append(f"vfleet_router_{name}_count {fmt(acc)}\n")
            out.append(f"vfleet_router_{name}_sum {fmt(hist.total)}\n")
        self._render_holds(out, held or {})
        return "".join(out).encode()

    def _render_holds(self, out: list[str], held: Mapping[str, int]) -> None:
        out += [
            "# HELP vfleet_router_held_requests Requests waiting for a ready engine.\n",
            "# TYPE vfleet_router_held_requests gauge\n",
        ]
        for model, n in sorted(held.items()):
            out.append(f"vfleet_router_held_requests{labels({'model': model})} {fmt(n)}\n")
        for name, counter, what in (
            ("activations_total", self.activations, "Requests held while none was: wake-ups."),
            ("hold_timeouts_total", self.hold_timeouts, "Held requests answered 503 at deadline."),
            ("hold_rejected_total", self.hold_rejected, "Requests refused: hold queue full."),
        ):
            out += [
                f"# HELP vfleet_router_{name} {what}\n",
                f"# TYPE vfleet_router_{name} counter\n",
            ]
            for model, n in sorted(counter.items()):
                out.append(f"vfleet_router_{name}{labels({'model': model})} {fmt(n)}\n")
        out += [
            "# HELP vfleet_router_hold_seconds Seconds requests waited for a ready engine.\n",
            "# TYPE vfleet_router_hold_seconds histogram\n",
        ]
        for model, hist in sorted(self.hold_seconds.items()):
            acc = 0
            for le, n in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                acc += n
                lbl = labels({"model": model, "le": fmt(le)})
                out.append(f"vfleet_router_hold_seconds_bucket{lbl} {fmt(acc)}\n")
            lbl = labels({"model": model})
            out.append(f"vfleet_router_hold_seconds_count{lbl} {fmt(acc)}\n")
            out.append(f"vfleet_router_hold_seconds_sum{lbl} {fmt(hist.total)}\n")
