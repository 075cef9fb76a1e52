"""What routing policies see: immutable snapshots of endpoints and the request's routing key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndpointState:
    """One engine replica as the router knows it at the moment of the decision."""

    url: str  # base URL, e.g. http://127.0.0.1:8100
    healthy: bool
    inflight: int = 0  # requests this router process has in flight to it
    running: int = 0  # scraped vllm:num_requests_running
    waiting: int = 0  # scraped vllm:num_requests_waiting
    kv_usage: float = 0.0  # scraped vllm:kv_cache_usage_perc, 0..1


@dataclass(frozen=True, slots=True)
class RouteKey:
    """The routing-relevant facts of one request."""

    model: str
    session: str | None = None  # session header or the body's `user`
    prefix: tuple[int, ...] = ()  # chained hashes of the prompt's leading chunks
