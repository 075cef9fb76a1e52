"""Sliding-window limits, pure: what a window holds, whether a cost fits, how long until it does.

A limit is "at most `limit` units (requests or tokens) in any `window_s` seconds", time cut into
buckets of `window_s / buckets`. A decision counts the current bucket and the `buckets` before it
(`words` buckets in all): a little more than the window, never less, so the limit holds over every
`window_s` interval and a charge leaves at most one bucket width late. Each bucket is one 64-bit
word holding its epoch (which bucket-width slice of time it counts) in the high half and its
count in the low half, so one store writes both: a reader in another process never sees a count
paired with the wrong epoch. Counts are signed (a settled reservation may give tokens back), 32
bits per bucket and writer.

Why windows and not token buckets: a token bucket is one read-modify-write state, which several
router processes could only share under a lock (and a worker killed while holding it would stop
every other). Windows are sums: each process writes its own words only (router.sharedlimits), and
any process can add them all up. The clock is the caller's reading of one system-wide clock
(CLOCK_MONOTONIC), the same in every worker on a host.

Requests per minute keep the burst the router has always allowed: a tenth of a minute's worth (at
least one) at once, i.e. `burst` requests in any `burst / rate` seconds.
"""

from __future__ import annotations

import math
from typing import Final

# A bucket word plus HALF is (epoch << 32) + count + HALF, its low half never negative:
# `(x >> 32)` is the epoch and `(x & LOW) - HALF` the count (router.sharedlimits reads so too).
HALF: Final = 1 << 31
LOW: Final = (1 << 32) - 1


def pack(epoch: int, count: int) -> int:
    """One bucket word: `epoch` and a signed 32-bit `count` (clamped)."""
    count = max(-HALF, min(HALF - 1, count))
    return (epoch << 32) + count


def unpack(word: int) -> tuple[int, int]:
    """(epoch, count) of a bucket word."""
    count = ((word + HALF) & LOW) - HALF
    return (word - count) >> 32, count


class Window:
    """`limit` units in any `window_s` seconds, counted in `buckets` buckets. (A plain class, not
    a dataclass: the bucket width is derived once here, and mypyc compiles this module.)"""

    __slots__ = ("buckets", "limit", "width_s", "width_us", "window_s")

    def __init__(self, limit: float, window_s: float, buckets: int) -> None:
        self.limit = limit
        self.window_s = window_s
        self.buckets = buckets
        self.width_s = window_s / buckets  # one bucket's seconds
        self.width_us = max(1, round(self.width_s * 1e6))  # the same, whole microseconds

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return (self.limit, self.window_s, self.buckets) == (
            other.limit,
            other.window_s,
            other.buckets,
        )

    def __hash__(self) -> int:
        return hash((self.limit, self.window_s, self.buckets))

    def __repr__(self) -> str:
        return f"Window(limit={self.limit}, window_s={self.window_s}, buckets={self.buckets})"

    @property
    def words(self) -> int:
        """Buckets stored: the window's and the current one."""
        return self.buckets + 1

    def epoch(self, now: float) -> int:
        return math.floor(now / self.width_s)

    def per(self, replicas: int) -> Window:
        """This limit shared by `replicas` routers that do not talk: each enforces its share."""
        if replicas <= 1:
            return self
        return Window(self.limit / replicas, self.window_s, self.buckets)


def requests_window(per_minute: float) -> Window:
    """Requests per minute with a burst of a tenth of a minute's worth (at least one)."""
    if per_minute <= 0:
        raise ValueError("requests per minute must be > 0")
    burst = max(1.0, per_minute / 10)
    return Window(burst, burst * 60.0 / per_minute, 12)


def tokens_per_minute(limit: float) -> Window:
    if limit <= 0:
        raise ValueError("tokens per minute must be > 0")
    return Window(limit, 60.0, 12)


def tokens_per_day(limit: float) -> Window:
    """A rolling 24 hours, counted by the hour."""
    if limit <= 0:
        raise ValueError("tokens per day must be > 0")
    return Window(limit, 86_400.0, 24)


def ages(window: Window, words: list[list[int]], now: float) -> list[int]:
    """Units counted per bucket age (0: the current bucket, up to `buckets`), summed over
    writers' bucket words; buckets of an older epoch (expired, or never written) count nothing."""
    current = window.epoch(now)
    n = window.words
    out = [0] * n
    for row in words:
        for word in row:
            x = word + HALF  # (epoch << 32) + count + 2**31, the low half never negative
            age = current - (x >> 32)
            if 0 <= age < n:
                out[age] += (x & LOW) - HALF
    return out


def used(window: Window, words: list[int], now: float) -> int:
    """Units in the window now, from bucket words of any number of writers (one flat list):
    the common case of `ages` (a decision that passes), without the per-age table."""
    oldest = window.epoch(now) - window.buckets
    total = 0
    for word in words:
        x = word + HALF
        if (x >> 32) >= oldest:
            total += (x & LOW) - HALF
    return total


def fits(window: Window, words: list[int], now: float, cost: float) -> float:
    """0.0 when `cost` more fits in the window now (`words`: bucket words of any number of
    writers); else the seconds until it does. A cost above the limit is taken as the limit."""
    if used(window, words, now) + min(cost, window.limit) <= window.limit:
        return 0.0
    return wait_s(window, ages(window, [words], now), now, cost)


def wait_s(window: Window, by_age: list[int], now: float, cost: float) -> float:
    """0.0 when `cost` more fits in the window now; else the seconds until it does (buckets
    leave the window oldest first). A cost above the limit is taken as the limit, so any single
    request passes once the window is empty."""
    cost = min(cost, window.limit)
    used = max(0, sum(by_age))
    if used + cost <= window.limit:
        return 0.0
    width = window.width_s
    until_next = (window.epoch(now) + 1) * width - now  # the current bucket's end
    for age in range(len(by_age) - 1, -1, -1):
        used -= by_age[age]
        if max(0, used) + cost <= window.limit:
            # the bucket of this age leaves the window when (buckets - 1 - age) more end
            return until_next + (len(by_age) - 1 - age) * width
    return window.window_s  # unreachable while cost <= limit
