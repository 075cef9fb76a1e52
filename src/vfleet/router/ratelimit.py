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
    minute's worth, at least 1). Keys are the configured API keys, so the table stays bounded."""

    per_minute: float
    burst: float = 0.0
    buckets: dict[bytes, Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        if self.burst <= 0:
            self.burst = max(1.0, self.per_minute / 10)

    def take(self, key: bytes, now: float) -> float:
        """0.0 when the request may go; else the seconds until it could (for Retry-After)."""
        rate = self.per_minute / 60.0
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * rate)
        b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / rate
