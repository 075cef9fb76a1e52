"""The engines the router knows, what they serve, and whether they are up.

Owns each endpoint's mutable runtime state (health, the router's in-flight count, scraped engine
load, breaker backoff) and turns it into the immutable `EndpointState` snapshots policies read.
Health decisions are pure functions of probe results and the clock value passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vfleet.router.breaker import Breaker
from vfleet.router.state import EndpointState

MAX_BACKOFF_S = 30.0


def backoff_s(failures: int, base_s: float) -> float:
    """Seconds before an ejected endpoint is probed again: doubling, capped."""
    return min(MAX_BACKOFF_S, base_s * float(2 ** max(0, failures - 1)))


@dataclass(slots=True)
class Endpoint:
    url: str
    static_models: tuple[str, ...] = ()  # configured; empty means "whatever /v1/models says"
    cards: list[dict[str, Any]] = field(default_factory=list)  # from its /v1/models
    healthy: bool = False
    inflight: int = 0
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    # The engine's prefix-cache counters at the last probe, and hits per queried token between
    # the last two probes that saw queries (re-exported by the router's /metrics).
    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    prefix_hit_ratio: float = 0.0
    failures: int = 0  # consecutive
    next_probe_at: float = 0.0
    # Listed as still loading (endpoints file `"state": "starting"`): while down, probed fast and
    # without backoff (the fast prober); served once its /health answers 200.
    starting: bool = False
    # The circuit breaker on its request errors (router.ejection); `ejected` mirrors it for the
    # request path: while set, the endpoint is left out of routing though its probes pass.
    breaker: Breaker = field(default_factory=Breaker)
    ejected: bool = False

    @property
    def models(self) -> tuple[str, ...]:
        return self.static_models or tuple(str(c.get("id")) for c in self.cards)

    def snapshot(self) -> EndpointState:
        return EndpointState(
            self.url,
            self.healthy and not self.ejected,
            self.inflight,
            self.running,
            self.waiting,
            self.kv_usage,
        )

    def observe_prefix_cache(self, hits: float, queries: float) -> None:
        """Record the engine's prefix-cache counters; the ratio covers the tokens queried since
        the last probe (all of them after an engine restart reset its counters)."""
        dq = queries - self.prefix_queries
        dh = hits - self.prefix_hits
        if dq < 0:
            dq, dh = queries, hits
        if dq > 0:
            self.prefix_hit_ratio = min(1.0, max(0.0, dh / dq))
        self.prefix_hits, self.prefix_queries = hits, queries

    @property
    def unprobed(self) -> bool:
        """Newly listed: no probe has answered or failed yet."""
        return self.next_probe_at == 0.0

    def mark_up(self, now: float, interval_s: float) -> None:
        self.healthy = True
        self.failures = 0
        self.next_probe_at = now + interval_s

    def mark_down(self, now: float, interval_s: float) -> None:
        """Eject until the next probe, backing off while it keeps failing (circuit breaker);
        one listed as starting is left to the fast prober, without backoff."""
        self.healthy = False
        if self.starting:
            return
        self.failures += 1
        self.next_probe_at = now + backoff_s(self.failures, interval_s)


@dataclass(slots=True)
class Registry:
    """Endpoints by URL, and which serve a model (aliases resolved here)."""

    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> served model name
    known: tuple[str, ...] = ()  # served names listed by /v1/models even with no engine up

    def set_endpoints(self, wanted: Iterable[tuple[str, tuple[str, ...], bool]]) -> None:
        """Make the endpoint set equal `wanted` ((url, static models, starting)), keeping known
        state (a starting endpoint already found healthy stays served)."""
        new: dict[str, Endpoint] = {}
        for url, models, starting in wanted:
            ep = self.endpoints.get(url) or Endpoint(url)
            ep.static_models = models
            ep.starting = starting
            new[url] = ep
        self.endpoints = new

    def resolve(self, model: str) -> str:
        return self.aliases.get(model, model)

    def serving(self, model: str) -> list[Endpoint]:
        return [ep for ep in self.endpoints.values() if model in ep.models]

    def ready(self, model: str) -> list[Endpoint]:
        """The healthy endpoints serving `model` (none ejected by its breaker)."""
        return [
            ep
            for ep in self.endpoints.values()
            if ep.healthy and not ep.ejected and model in ep.models
        ]

    def model_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for ep in self.endpoints.values():
            for m in ep.models:
                seen[m] = None
        return list(seen)

    def model_cards(self, created: int) -> list[dict[str, Any]]:
        """/v1/models across endpoints, one card per id (LoRA adapters included), then the known
        models no engine serves now (scaled to zero), then aliases."""
        cards: dict[str, dict[str, Any]] = {}
        for ep in self.endpoints.values():
            for card in ep.cards:
                cards.setdefault(str(card.get("id")), card)
            for m in ep.static_models:
                cards.setdefault(m, _card(m, created))
        for m in self.known:
            cards.setdefault(m, _card(m, created))
        for alias, target in self.aliases.items():
            if target in cards and alias not in cards:
                cards[alias] = {**cards[target], "id": alias}
        return list(cards.values())


def _card(model: str, created: int) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "vfleet",
        "root": model,
        "parent": None,
    }


def parse_load(metrics_text: str) -> tuple[int, int, float]:
    """(running, waiting, kv usage) from an engine's /metrics, summed over its engines."""
    running = waiting = 0
    kv = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, rest = line.partition("{")
        value = rest.rpartition(" ")[2] if rest else line.rpartition(" ")[2]
        try:
            v = float(value)
        except ValueError:
            continue
        if name == "vllm:num_requests_running":
            running += int(v)
        elif name == "vllm:num_requests_waiting":
            waiting += int(v)
        elif name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            kv = max(kv, v)
    return running, waiting, kv


def parse_prefix_cache(metrics_text: str) -> tuple[float, float]:
    """(hits, queries), in tokens, from an engine's /metrics prefix-cache counters, summed over
    its engines (vLLM V1 names; 0, 0 when it exports none)."""
    hits = queries = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("vllm:prefix_cache_"):
            continue
        name, _, rest = line.partition("{")
        value = rest.rpartition(" ")[2] if rest else line.rpartition(" ")[2]
        name = name.split(" ", 1)[0]
        try:
            v = float(value)
        except ValueError:
            continue
        if name == "vllm:prefix_cache_hits_total":
            hits += v
        elif name == "vllm:prefix_cache_queries_total":
            queries += v
    return hits, queries
