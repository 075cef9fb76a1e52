"""Per-key token buckets, with a clock the test controls."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.router.ratelimit import RateLimiter


def test_burst_then_refusal_with_the_wait_until_the_next_token() -> None:
    rl = RateLimiter(per_minute=60, burst=3)  # one token a second
    assert [rl.take(b"k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take(b"k", 0.0) == pytest.approx(1.0)
    assert rl.take(b"k", 0.5) == pytest.approx(0.5)
    assert rl.take(b"k", 1.0) == 0.0


def test_keys_have_their_own_buckets() -> None:
    rl = RateLimiter(per_minute=60, burst=1)
    assert rl.take(b"a", 0.0) == 0.0
    assert rl.take(b"a", 0.0) > 0
    assert rl.take(b"b", 0.0) == 0.0


def test_default_burst_is_a_tenth_of_a_minute() -> None:
    assert RateLimiter(per_minute=600).burst == 60
    assert RateLimiter(per_minute=5).burst == 1
    with pytest.raises(ValueError):
        RateLimiter(per_minute=0)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(1, 6000),
    st.lists(st.floats(0, 5), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    per_minute: float, gaps: list[float]
) -> None:
    rl = RateLimiter(per_minute=per_minute)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        if rl.take(b"k", now) == 0.0:
            allowed += 1
    assert allowed <= rl.burst + per_minute / 60.0 * now + 1e-9


def test_costly_requests_take_more_and_a_cost_over_the_burst_still_passes_once_full() -> None:
    rl = RateLimiter(per_minute=600, burst=100)  # ten tokens a second
    assert rl.take(b"k", 0.0, cost=60) == 0.0
    assert rl.take(b"k", 0.0, cost=60) == pytest.approx(2.0)  # 40 left, 20 short
    assert rl.take(b"k", 2.0, cost=60) == 0.0
    assert rl.take(b"k", 100.0, cost=10_000) == 0.0  # charged as the whole burst
    assert rl.take(b"k", 100.0, cost=1) > 0
