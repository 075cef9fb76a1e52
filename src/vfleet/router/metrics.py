"""The router's own Prometheus metrics (`vfleet_router_*`): the families, how each worker
records into its row of the shared table (router.sharedmetrics), and the exposition text a
scrape answers, summed over all workers. docs/metrics.md lists every family; a test keeps the
two in step.

Gauges about engines (health, in flight, the engines' own load) are rendered from this
worker's registry and the shared demand table when the scrape comes, not recorded per request.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from vfleet.prom import fmt, labels
from vfleet.router.demand import DemandTable
from vfleet.router.endpoints import Registry
from vfleet.router.kvindex import KvIndex
from vfleet.router.policies import KvDecision
from vfleet.router.sharedmetrics import (
    ENDPOINT_GRACE_S,
    HistogramFamily,
    MetricsRow,
    MetricsTable,
    SharedCounter,
    SharedHistogram,
)

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
# How long a request the kv policy prepared waited for its KV-block chain: from well under a
# millisecond (an incremental encode) to the router's wait bound (kvroute.CHAIN_WAIT_S).
CHAIN_WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


# Family ids in the shared table (0 means a free slot).
REQUESTS: Final = 1
RETRIES: Final = 2
REJECTED: Final = 3
TTFT: Final = 4
DURATION: Final = 5
ITL: Final = 6
ACTIVATIONS: Final = 7
HOLD_TIMEOUTS: Final = 8
HOLD_REJECTED: Final = 9
HOLD_SECONDS: Final = 10
KEY_TOKENS: Final = 11  # per API key (its name, never the secret): router.tenants
KV_DECISIONS: Final = 12  # the kv policy's decisions, by model and reason
KV_TOKENS: Final = 13  # prompt tokens it routed, and those it expected the engine to hold
# Replicas an autoscaler wants, by (model, source); written only by the KEDA scaler's own row.
AUTOSCALER_DESIRED: Final = 14
ROUTING_DECISIONS: Final = 15  # endpoint choices, by (model, policy, reason)
KEY_REQUESTS: Final = 16  # per API key name, model and the status the client got: router.tenants
BREAKER_EVENTS: Final = 17  # circuit breaker events, by (upstream, event): router.ejection
SPANS: Final = 18  # trace spans by outcome (exported, dropped, failed): router.tracing
# 1 in a worker's row while its breaker holds the endpoint in the state, by (upstream, state):
# the rows' sum is how many workers hold it there (router.ejection's `shown`)
BREAKER_STATES: Final = 19
KV_CHAINS: Final = 20  # requests the kv policy prepared, by (model, outcome): router.kvroute
KV_CHAIN_WAIT: Final = 21  # seconds those that waited for their chain waited, by model
# Families whose values say what a worker holds now, not what it counted: zeroed in the row of a
# worker that exited (router.app's wait_workers), so a dead worker's open breakers do not linger.
WORKER_GAUGES: Final = frozenset({BREAKER_STATES})
# Values per series; negative for a histogram: its buckets (with +Inf) and its sum.
WIDTHS: Final[dict[int, int]] = {
    REQUESTS: 1,
    RETRIES: 1,
    REJECTED: 1,
    TTFT: -(len(LATENCY_BUCKETS) + 2),
    DURATION: -(len(LATENCY_BUCKETS) + 2),
    ITL: -(len(LATENCY_BUCKETS) + 2),
    ACTIVATIONS: 1,
    HOLD_TIMEOUTS: 1,
    HOLD_REJECTED: 1,
    HOLD_SECONDS: -(len(HOLD_BUCKETS) + 2),
    KEY_TOKENS: 1,
    KV_DECISIONS: 1,
    KV_TOKENS: 1,
    AUTOSCALER_DESIRED: 1,
    ROUTING_DECISIONS: 1,
    KEY_REQUESTS: 1,
    BREAKER_EVENTS: 1,
    SPANS: 1,
    BREAKER_STATES: 1,
    KV_CHAINS: 1,
    KV_CHAIN_WAIT: -(len(CHAIN_WAIT_BUCKETS) + 2),
}
NO_ENDPOINT: Final = "-"  # the upstream label of requests the router answered itself
# The label naming an engine (its URL). Not `endpoint`: the Prometheus Operator gives every
# target an `endpoint` label (the port name), which would rename ours `exported_endpoint`; not
# `engine`: vLLM labels its own series with that (the engine index of a data-parallel server).
UPSTREAM: Final = "upstream"


def _request_labels(key: tuple[str, str, int]) -> str:
    return labels({"model": key[0], UPSTREAM: key[1], "status": str(key[2])})[1:-1]


def _request_endpoint(key: tuple[str, str, int]) -> str:
    return "" if key[1] == NO_ENDPOINT else key[1]


def _key_token_labels(key: tuple[str, str, str]) -> str:
    return labels({"key": key[0], "model": key[1], "kind": key[2]})[1:-1]


def _key_request_labels(key: tuple[str, str, int]) -> str:
    return labels({"key": key[0], "model": key[1], "code": str(key[2])})[1:-1]


def _breaker_labels(key: tuple[str, str]) -> str:
    return labels({UPSTREAM: key[0], "event": key[1]})[1:-1]


def _breaker_endpoint(key: tuple[str, str]) -> str:
    return key[0]


def _breaker_state_labels(key: tuple[str, str]) -> str:
    return labels({UPSTREAM: key[0], "state": key[1]})[1:-1]


def _model_labels(model: str) -> str:
    return labels({"model": model})[1:-1]


def _kv_decision_labels(key: tuple[str, str]) -> str:
    return labels({"model": key[0], "reason": key[1]})[1:-1]


def _kv_chain_labels(key: tuple[str, str]) -> str:
    return labels({"model": key[0], "outcome": key[1]})[1:-1]


def _kv_token_labels(key: tuple[str, str]) -> str:
    return labels({"model": key[0], "kind": key[1]})[1:-1]


def _reason_labels(reason: str) -> str:
    return labels({"reason": reason})[1:-1]


def _desired_labels(key: tuple[str, str]) -> str:
    return labels({"model": key[0], "source": key[1]})[1:-1]


def _outcome_labels(outcome: str) -> str:
    return labels({"outcome": outcome})[1:-1]


def _decision_labels(key: tuple[str, str, str]) -> str:
    return labels({"model": key[0], "policy": key[1], "reason": key[2]})[1:-1]


class ScalerMetrics:
    """What the KEDA external scaler records: the replicas its last answer implies per model.

    It writes a row of its own in the shared table (the scaler runs in a process of its own, or
    beside the only worker), so the scrape, on any worker, shows its values as they are."""

    def __init__(self, row: MetricsRow) -> None:
        self.desired: SharedCounter[tuple[str, str]] = SharedCounter(
            row, AUTOSCALER_DESIRED, _desired_labels
        )

    def set_desired(self, models: Collection[str], replicas: int) -> None:
        for model in models:
            self.desired[(model, "keda")] = replicas


class RouterMetrics:
    """This worker's recorders (each writes its row of the shared table) and the scrape.

    `row`: this worker's row (a one-worker table of its own when None); `demand`: the shared
    demand table, for the in-flight and held gauges summed over workers."""

    def __init__(
        self,
        row: MetricsRow | None = None,
        demand: DemandTable | None = None,
        grace_s: float = ENDPOINT_GRACE_S,
    ) -> None:
        if row is None:
            row = MetricsTable.create(1, slots=1024).row(0, grace_s)
        self.row = row
        self.demand = demand
        # Keyed like collections.Counter: `metrics.requests[(model, url, status)] += 1`.
        self.requests: SharedCounter[tuple[str, str, int]] = SharedCounter(
            row, REQUESTS, _request_labels, _request_endpoint
        )
        self.retries: SharedCounter[str] = SharedCounter(row, RETRIES, _model_labels)
        self.rejected: SharedCounter[str] = SharedCounter(row, REJECTED, _reason_labels)
        self.activations: SharedCounter[str] = SharedCounter(row, ACTIVATIONS, _model_labels)
        self.hold_timeouts: SharedCounter[str] = SharedCounter(row, HOLD_TIMEOUTS, _model_labels)
        self.hold_rejected: SharedCounter[str] = SharedCounter(row, HOLD_REJECTED, _model_labels)
        # The activator, per model: seconds requests were held (released or expired).
        self.hold_seconds = HistogramFamily(row, HOLD_SECONDS, HOLD_BUCKETS, "model")
        # Tokens used per (key name, model, prompt|completion), from the engines' usage.
        self.key_tokens: SharedCounter[tuple[str, str, str]] = SharedCounter(
            row, KEY_TOKENS, _key_token_labels
        )
        # Requests per (key name, model or "-", status the client got): router.tenants.
        self.key_requests: SharedCounter[tuple[str, str, int]] = SharedCounter(
            row, KEY_REQUESTS, _key_request_labels
        )
        # The kv policy: decisions by (model, reason); tokens by (model, prompt|predicted_hit).
        self.kv_decisions: SharedCounter[tuple[str, str]] = SharedCounter(
            row, KV_DECISIONS, _kv_decision_labels
        )
        self.kv_tokens: SharedCounter[tuple[str, str]] = SharedCounter(
            row, KV_TOKENS, _kv_token_labels
        )
        # Whether each request the kv policy prepared had a chain, or why not (KvRouting.count).
        self.kv_chains: SharedCounter[tuple[str, str]] = SharedCounter(
            row, KV_CHAINS, _kv_chain_labels
        )
        self.kv_chain_seconds = HistogramFamily(row, KV_CHAIN_WAIT, CHAIN_WAIT_BUCKETS, "model")
        # Every endpoint choice, by (model, policy, reason): router.proxy counts it.
        self.routing_decisions: SharedCounter[tuple[str, str, str]] = SharedCounter(
            row, ROUTING_DECISIONS, _decision_labels
        )
        # Circuit breaker events by (endpoint, opened|half_opened|closed|spared).
        self.breaker_events: SharedCounter[tuple[str, str]] = SharedCounter(
            row, BREAKER_EVENTS, _breaker_labels, _breaker_endpoint
        )
        # Whether this worker's breaker holds an endpoint open, half open or in a trial.
        self.breaker_states: SharedCounter[tuple[str, str]] = SharedCounter(
            row, BREAKER_STATES, _breaker_state_labels, _breaker_endpoint
        )
        # OTLP trace spans by outcome; only with tracing on (router.tracing's Tracer counts).
        self.spans: SharedCounter[str] = SharedCounter(row, SPANS, _outcome_labels)
        # The replicas `vfleet up`'s autoscaler wants per served name, as this worker last read
        # them from the file the supervisor writes (router.autoscaled); every worker reads it.
        self.local_desired: dict[str, int] = {}
        self.ttft = self._plain(TTFT)
        self.duration = self._plain(DURATION)
        self.itl = self._plain(ITL)

    def _plain(self, fid: int) -> SharedHistogram:
        hist = HistogramFamily(self.row, fid, LATENCY_BUCKETS).get("")
        if hist is None:  # a fresh row always has room for these three
            raise RuntimeError("metrics table row full at start")
        return hist

    def kv_decision(self, decision: KvDecision) -> None:
        """Count one decision of the kv policy (its observer)."""
        model = decision.model
        self.kv_decisions[(model, decision.reason.value)] += 1
        if decision.prompt_tokens:
            self.kv_tokens.inc((model, "prompt"), decision.prompt_tokens)
        if decision.cached_tokens:
            self.kv_tokens.inc((model, "predicted_hit"), decision.cached_tokens)

    def kv_chain(self, model: str, outcome: str) -> None:
        """Count one request the kv policy prepared, by outcome (router.kvroute.OUTCOMES)."""
        self.kv_chains.inc((model, outcome))

    def kv_chain_wait(self, model: str, seconds: float) -> None:
        """A request the kv policy prepared waited `seconds` for its chain (router.kvroute)."""
        self.kv_chain_seconds.observe(model, seconds)

    def breaker_event(self, url: str, event: str) -> None:
        """Count one circuit breaker event of an endpoint (router.ejection)."""
        self.breaker_events.inc((url, event))

    def breaker_state(self, url: str, state: str, on: int) -> None:
        """This worker's breaker of `url` entered (1) or left (0) `state` (router.ejection)."""
        self.breaker_states[(url, state)] = on

    def span_outcome(self, outcome: str, n: int) -> None:
        """Count `n` trace spans with this outcome (the Tracer's `count`)."""
        self.spans.inc(outcome, n)

    def observe_hold(self, model: str, seconds: float) -> None:
        self.hold_seconds.observe(model, seconds)

    def sweep(self, listed: Collection[str], now: float) -> None:
        """Retire series of endpoints gone for the grace period (see router.sharedmetrics)."""
        self.row.sweep(listed, now)

    def render(
        self,
        registry: Registry,
        held: Mapping[str, int] | None = None,
        kv: KvIndex | None = None,
    ) -> bytes:
        """The exposition text; `held`: requests held now per model (the activator's gauge,
        replaced by the sum over workers when the demand table is known)."""
        sums = self.row.table.collect(WIDTHS)
        out: list[str] = []
        _counter(
            out,
            "requests_total",
            "Requests answered, by model, upstream (engine), status.",
            sums[REQUESTS],
        )
        _counter(out, "retries_total", "Requests retried on another endpoint.", sums[RETRIES])
        _counter(
            out, "rejected_total", "Requests refused by the router, by reason.", sums[REJECTED]
        )
        self._render_endpoints(out, registry)
        out += [
            "# HELP vfleet_router_kv_blocks KV blocks the engine holds, as this router process "
            "learned from its KV events (the kv policy).\n",
            "# TYPE vfleet_router_kv_blocks gauge\n",
        ]
        # An engine with events on any data-parallel rank (not only rank 0) is listed.
        if kv is not None:
            for url in sorted(registry.endpoints):
                if any(kv.seq(url, r) >= 0 for r in kv.ranks(url)):
                    n = kv.blocks_of(url)
                    out.append(f"vfleet_router_kv_blocks{labels({UPSTREAM: url})} {fmt(n)}\n")
        for name, fid, what in (
            ("time_to_first_byte_seconds", TTFT, "Router-seen time to the first body byte."),
            ("request_duration_seconds", DURATION, "Router-seen request duration."),
            ("inter_chunk_latency_seconds", ITL, "Router-seen gaps between streamed chunks."),
        ):
            _histogram(out, name, what, LATENCY_BUCKETS, sums[fid])
        self._render_holds(out, sums, held or {})
        _counter(
            out,
            "key_tokens_total",
            "Tokens used per API key name, model and kind (prompt, completion).",
            sums[KEY_TOKENS],
        )
        _counter(
            out,
            "key_requests_total",
            "Requests per API key name, model (- when refused before the body was read) and "
            "the status code the client got.",
            sums[KEY_REQUESTS],
        )
        _counter(
            out,
            "kv_decisions_total",
            "Decisions of the kv policy, by model and reason.",
            sums[KV_DECISIONS],
        )
        _counter(
            out,
            "kv_tokens_total",
            "Prompt tokens the kv policy routed (kind prompt), and those it expected the chosen "
            "engine to hold (kind predicted_hit).",
            sums[KV_TOKENS],
        )
        _counter(
            out,
            "kv_chains_total",
            "Requests the kv policy prepared, by model and outcome: cached or computed (routed "
            "with a KV-block chain), or why none (then routed as prefix).",
            sums[KV_CHAINS],
        )
        _histogram(
            out,
            "kv_chain_wait_seconds",
            "Seconds requests the kv policy prepared waited for their KV-block chain, by model "
            "(those routed at once, with a cached chain or none, are not counted).",
            CHAIN_WAIT_BUCKETS,
            sums[KV_CHAIN_WAIT],
        )
        _counter(
            out,
            "routing_decisions_total",
            "Endpoint choices, by model, policy and reason (picked, retry, none).",
            sums[ROUTING_DECISIONS],
        )
        _counter(
            out,
            "breaker_events_total",
            "Circuit breaker events per endpoint: opened, half_opened, closed, spared.",
            sums[BREAKER_EVENTS],
        )
        out += [
            "# HELP vfleet_router_breaker_workers Router workers whose circuit breaker holds the "
            "endpoint in the state (open, half_open, trial); 0: closed in every worker.\n",
            "# TYPE vfleet_router_breaker_workers gauge\n",
        ]
        for lbl, vals in sorted(sums[BREAKER_STATES].items()):
            out.append(f"vfleet_router_breaker_workers{{{lbl}}} {fmt(vals[0])}\n")
        _counter(
            out,
            "spans_total",
            "Trace spans of proxied requests by outcome: exported (the collector took them), "
            "dropped (the export queue was full), failed (in batches the collector did not take).",
            sums[SPANS],
        )
        self._render_replicas(out, registry, sums[AUTOSCALER_DESIRED], held or {})
        _counter(
            out,
            "metrics_dropped_total",
            "Series increments not recorded: the shared metrics table was full.",
            {"": [float(self.row.table.dropped())]},
        )
        return "".join(out).encode()

    def _render_endpoints(self, out: list[str], registry: Registry) -> None:
        eps = sorted(registry.endpoints.values(), key=lambda e: e.url)
        inflight = self.demand.endpoints() if self.demand is not None else {}
        gauges: tuple[tuple[str, str, list[float]], ...] = (
            (
                "endpoint_healthy",
                "1 when the endpoint passes health probes.",
                [float(ep.healthy) for ep in eps],
            ),
            (
                "breaker_open",
                "1 while the circuit breaker keeps the endpoint out for its errors.",
                [float(ep.ejected) for ep in eps],
            ),
            (
                "endpoint_inflight",
                "Requests in flight to the endpoint, all router workers.",
                [float(inflight.get(ep.url, ep.inflight)) for ep in eps],
            ),
            (
                "endpoint_running_requests",
                "Requests the engine is running (vllm:num_requests_running, last probe).",
                [float(ep.running) for ep in eps],
            ),
            (
                "endpoint_waiting_requests",
                "Requests queued in the engine (vllm:num_requests_waiting, last probe).",
                [float(ep.waiting) for ep in eps],
            ),
            (
                "endpoint_kv_cache_usage_ratio",
                "Fraction of the engine's KV cache in use, 0 to 1 (last probe).",
                [ep.kv_usage for ep in eps],
            ),
            (
                "endpoint_prefix_cache_hit_ratio",
                "Engine prefix-cache hits per queried token between the last two probes.",
                [ep.prefix_hit_ratio for ep in eps],
            ),
        )
        for name, what, values in gauges:
            out += [
                f"# HELP vfleet_router_{name} {what}\n",
                f"# TYPE vfleet_router_{name} gauge\n",
            ]
            for ep, v in zip(eps, values, strict=True):
                out.append(f"vfleet_router_{name}{labels({UPSTREAM: ep.url})} {fmt(v)}\n")

    def _render_replicas(
        self,
        out: list[str],
        registry: Registry,
        keda: Mapping[str, list[float]],
        known: Collection[str],
    ) -> None:
        """Desired replicas (the autoscalers') against ready ones (what this router sees);
        `known`: models to list at 0 ready too (configured, held, scaled to zero)."""
        desired = dict(keda)
        for model, n in self.local_desired.items():
            desired[_desired_labels((model, "local"))] = [float(n)]
        out += [
            "# HELP vfleet_router_autoscaler_desired_replicas Replicas an autoscaler wants per "
            "model: source local (vfleet up) or keda (the last metric answered to KEDA, over "
            "its target).\n",
            "# TYPE vfleet_router_autoscaler_desired_replicas gauge\n",
        ]
        for lbl, vals in sorted(desired.items()):
            out.append(f"vfleet_router_autoscaler_desired_replicas{{{lbl}}} {fmt(vals[0])}\n")
        ready: dict[str, int] = dict.fromkeys([*self.local_desired, *known], 0)
        for ep in registry.endpoints.values():
            for model in ep.models:
                ready[model] = ready.get(model, 0) + int(ep.healthy)
        out += [
            "# HELP vfleet_router_model_ready_replicas Endpoints serving the model that pass "
            "health probes.\n",
            "# TYPE vfleet_router_model_ready_replicas gauge\n",
        ]
        for model, n in sorted(ready.items()):
            out.append(f"vfleet_router_model_ready_replicas{labels({'model': model})} {fmt(n)}\n")

    def _render_holds(
        self, out: list[str], sums: dict[int, dict[str, list[float]]], held: Mapping[str, int]
    ) -> None:
        out += [
            "# HELP vfleet_router_held_requests Requests waiting for a ready engine.\n",
            "# TYPE vfleet_router_held_requests gauge\n",
        ]
        everywhere = self.demand.models() if self.demand is not None else {}
        for model in sorted(held):
            d = everywhere.get(model)
            n = d.held if d is not None else held[model]
            out.append(f"vfleet_router_held_requests{labels({'model': model})} {fmt(n)}\n")
        for name, fid, what in (
            ("activations_total", ACTIVATIONS, "Requests held while none was: wake-ups."),
            ("hold_timeouts_total", HOLD_TIMEOUTS, "Held requests answered 503 at deadline."),
            ("hold_rejected_total", HOLD_REJECTED, "Requests refused: hold queue full."),
        ):
            _counter(out, name, what, sums[fid])
        _histogram(
            out,
            "hold_seconds",
            "Seconds requests waited for a ready engine.",
            HOLD_BUCKETS,
            sums[HOLD_SECONDS],
        )


def _counter(out: list[str], name: str, what: str, series: Mapping[str, list[float]]) -> None:
    out += [f"# HELP vfleet_router_{name} {what}\n", f"# TYPE vfleet_router_{name} counter\n"]
    for lbl, vals in sorted(series.items()):
        text = f"{{{lbl}}}" if lbl else ""
        out.append(f"vfleet_router_{name}{text} {fmt(vals[0])}\n")


def _histogram(
    out: list[str],
    name: str,
    what: str,
    bounds: tuple[float, ...],
    series: Mapping[str, list[float]],
) -> None:
    out += [f"# HELP vfleet_router_{name} {what}\n", f"# TYPE vfleet_router_{name} histogram\n"]
    for lbl, vals in sorted(series.items()):
        sep = "," if lbl else ""
        acc = 0.0
        for le, n in zip((*bounds, float("inf")), vals, strict=False):
            acc += n
            out.append(f'vfleet_router_{name}_bucket{{{lbl}{sep}le="{fmt(le)}"}} {fmt(acc)}\n')
        text = f"{{{lbl}}}" if lbl else ""
        out.append(f"vfleet_router_{name}_count{text} {fmt(acc)}\n")
        out.append(f"vfleet_router_{name}_sum{text} {fmt(vals[len(bounds) + 1])}\n")
