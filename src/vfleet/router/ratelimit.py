"""Per-key request rate limits: token buckets, pure (the caller passes the clock reading)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class RateLimiter:
    """`per_minute` requests per key on average, bursts up to `burst` (default: a tenth of a
    minute's worth, at least 1). Keys are verified key identities (`vfleet.router.auth`), one
    per configured API key whatever the header's spelling, so the table stays bounded."""

    per_minute: float
    burst: float = 0.0
    buckets: dict[bytes, Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        if self.burst <= 0:
            self.burst = max(1.0, self.per_minute / 10)

    def take(self, key: bytes, now: float, cost: float = 1.0) -> float:
        """0.0 when a request costing `cost` may go (then charged); else the seconds until it
        could (for Retry-After). A cost above the burst is charged as the burst, so any single
        request can pass once the bucket is full."""
        rate = self.per_minute / 60.0
        cost = min(cost, self.burst)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * rate)
        b.updated = now
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / rate
