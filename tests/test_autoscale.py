"""The autoscaler's decisions, with a fake clock: every sample's time is made up by the test.

Properties (hypothesis) for the rules that must always hold, examples for each reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vfleet.autoscale import Autoscaler, Decision, Metric, Sample, ScalePolicy, policy_for
from vfleet.autoscale.window import MAX_SAMPLES, Window
from vfleet.fleetspec.models import Autoscaling

FAST = settings(max_examples=150, deadline=None)
METRICS: tuple[Metric, ...] = ("concurrency", "rps", "waiting", "kv_cache")


@dataclass
class Fleet:
    """A model whose replicas are ready as soon as they are wanted (or `lag` periods later)."""

    scaler: Autoscaler
    current: int = 1
    ready: int = 1
    requests: int = 0
    t: float = 0.0

    def step(self, dt: float, concurrency: float, new: int = 0, **more: Any) -> Decision:
        self.t += dt
        self.requests += new
        sample = Sample(
            t=self.t,
            concurrency=concurrency,
            requests=self.requests,
            ready=self.ready,
            **more,  # running, waiting, kv_usage, ttft_p90_s
        )
        decision = self.scaler.observe(sample, self.current)
        self.current = self.ready = decision.desired
        return decision

    def run(self, dt: float, loads: Iterable[float]) -> list[Decision]:
        return [self.step(dt, c) for c in loads]


def fleet(current: int = 1, **policy: Any) -> Fleet:
    return Fleet(Autoscaler(ScalePolicy(**policy)), current=current, ready=current)


def changes(decisions: list[Decision]) -> int:
    return sum(a.desired != b.desired for a, b in pairwise(decisions))


# -- strategies --------------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> ScalePolicy:
    lo = draw(st.integers(0, 3))
    hi = draw(st.one_of(st.none(), st.integers(max(lo, 1), 12)))
    metric: Metric = draw(st.sampled_from(METRICS))
    stable = draw(st.floats(6, 120))
    return ScalePolicy(
        min_replicas=lo,
        max_replicas=hi,
        metric=metric,
        target=draw(st.floats(0.05, 1)) if metric == "kv_cache" else draw(st.floats(0.5, 64)),
        stable_window_s=stable,
        panic_window_s=draw(st.floats(1, stable)),
        panic_threshold=draw(st.floats(1.1, 5)),
        scale_down_delay_s=draw(st.sampled_from([0.0, 10.0, 90.0])),
        scale_to_zero_grace_s=draw(st.floats(0, 90)),
        max_scale_up_rate=draw(st.floats(1.1, 1000)),
        max_scale_down_rate=draw(st.floats(1.1, 10)),
        ttft_p90_s=draw(st.one_of(st.none(), st.floats(0.1, 5))),
        kv_usage=draw(st.one_of(st.none(), st.floats(0.1, 1))),
    )


Row = tuple[float, float, int, int, int, float, float | None, int]
samples_st = st.lists(
    st.tuples(
        st.floats(0.1, 20),  # seconds since the last sample
        st.sampled_from([0.0, 0.0, 1.0, 5.0, 31.0, 96.0, 400.0]),  # concurrency
        st.integers(0, 200),  # new requests
        st.integers(0, 12),  # ready
        st.integers(0, 50),  # waiting
        st.floats(0, 1),  # kv usage
        st.one_of(st.none(), st.floats(0, 10)),  # ttft p90
        st.integers(0, 14),  # current
    ),
    min_size=1,
    max_size=60,
)


# -- properties --------------------------------------------------------------------------------


@FAST
@given(policy=policies(), rows=samples_st)
def test_never_outside_min_and_max(policy: ScalePolicy, rows: list[Row]) -> None:
    scaler = Autoscaler(policy)
    t, requests = 0.0, 0
    for dt, conc, new, ready, waiting, kv, ttft, current in rows:
        t, requests = t + dt, requests + new
        sample = Sample(t, conc, requests, ready, 0, waiting, kv, ttft)
        d = scaler.observe(sample, current)
        assert d.desired >= policy.min_replicas, d
        assert policy.max_replicas is None or d.desired <= policy.max_replicas, d
        assert d.reason and "\n" not in d.reason


@FAST
@given(policy=policies(), rows=samples_st)
def test_steps_are_bounded_by_the_rates(policy: ScalePolicy, rows: list[Row]) -> None:
    scaler = Autoscaler(policy)
    t, requests = 0.0, 0
    for dt, conc, new, ready, waiting, kv, ttft, current in rows:
        t, requests = t + dt, requests + new
        d = scaler.observe(Sample(t, conc, requests, ready, 0, waiting, kv, ttft), current)
        up = math.ceil(current * policy.max_scale_up_rate - 1e-9)
        assert d.desired <= max(up, policy.min_replicas, 1), d
        down = math.floor(current / policy.max_scale_down_rate + 1e-9)
        if not d.reason.startswith("idle"):
            hi = policy.max_replicas
            assert d.desired >= (down if hi is None else min(down, hi)), d


@FAST
@given(
    concurrency=st.integers(1, 600),
    target=st.sampled_from([1.0, 8.0, 32.0, 50.0]),
    period=st.floats(0.5, 5),
    lo=st.integers(0, 2),
    delay=st.sampled_from([0.0, 30.0]),
)
def test_steady_load_does_not_flap(
    concurrency: int, target: float, period: float, lo: int, delay: float
) -> None:
    f = fleet(current=max(lo, 1), min_replicas=lo, target=target, scale_down_delay_s=delay)
    decisions = f.run(period, [concurrency] * int(600 / period))
    assert changes(decisions) <= 1, [d.reason for d in decisions[:5]]
    want = math.ceil(concurrency / target)
    assert decisions[-1].desired == max(want, lo)
    if want >= lo:
        stable = f"stable: {concurrency} in flight / target {target:g} -> {want}"
        assert decisions[-1].reason == stable


@FAST
@given(
    bursts=st.lists(st.integers(0, 6), min_size=1, max_size=8),
    grace=st.floats(0, 60),
    period=st.floats(0.5, 5),
    stable=st.floats(6, 60),
)
def test_scale_to_zero_only_after_the_grace_period_without_demand(
    bursts: list[int], grace: float, period: float, stable: float
) -> None:
    f = fleet(
        current=1,
        min_replicas=0,
        scale_to_zero_grace_s=grace,
        stable_window_s=stable,
        panic_window_s=min(6.0, stable),
    )
    loads = [c * 40.0 if i % 5 == 0 else 0.0 for i, c in enumerate(bursts * 6)]
    idle_since = 0.0
    for load in [*loads, *[0.0] * int((grace + stable) / period + 2)]:
        before = f.current
        d = f.step(period, load)
        if load > 0:
            idle_since = f.t
        if before > 0 and d.desired == 0:
            assert f.t - idle_since >= grace, (d, f.t, idle_since)
            assert d.reason.startswith("idle ")
    assert f.current == 0, "a long idle spell ends at zero"


@FAST
@given(
    low=st.integers(0, 32),
    times=st.integers(3, 12),
    period=st.floats(0.5, 5),
    warm=st.integers(1, 60),
)
def test_panic_reacts_within_one_period(low: int, times: int, period: float, warm: int) -> None:
    f = fleet(current=1, target=32.0)
    f.run(period, [low] * warm)
    assert f.current == 1
    d = f.step(period, 32.0 * times)
    assert d.desired >= times
    assert d.panic
    assert d.reason.startswith("panic: ")


@FAST
@given(held=st.integers(1, 500), history=st.integers(0, 40), period=st.floats(0.5, 5))
def test_wake_one_replica_at_once_for_held_requests(held: int, history: int, period: float) -> None:
    f = fleet(current=0, min_replicas=0)
    for d in f.run(period, [0] * history):
        assert d.desired == 0
    d = f.step(period, held)
    assert d.desired >= 1
    noun = "request" if held == 1 else "requests"
    assert d.reason == f"wake: {held} held {noun}"


@FAST
@given(ready=st.integers(1, 8), ttft=st.floats(1.01, 30), period=st.floats(0.5, 5))
def test_latency_above_target_adds_one_replica_per_period(
    ready: int, ttft: float, period: float
) -> None:
    f = fleet(current=ready, min_replicas=ready, ttft_p90_s=1.0)
    d = f.step(period, 1, ttft_p90_s=ttft)
    assert d.desired == ready + 1
    assert d.reason.startswith("latency: ttft p90")
    d = f.step(period, 1, ttft_p90_s=ttft)
    assert d.desired == ready + 2


def test_latency_waits_for_the_replica_it_added() -> None:
    scaler = Autoscaler(ScalePolicy(ttft_p90_s=1.0))
    d = scaler.observe(Sample(0, 1, 0, ready=2, ttft_p90_s=3.0), current=3)
    assert d.desired == 3  # one is still starting: no third one yet


@FAST
@given(kv=st.floats(0.05, 1), ready=st.integers(1, 8), limit=st.floats(0.1, 1))
def test_kv_usage_target_keeps_enough_replicas(kv: float, ready: int, limit: float) -> None:
    f = fleet(current=ready, kv_usage=limit)
    d = f.step(2.0, 0.0, kv_usage=kv)
    want = math.ceil(kv * ready / limit - 1e-9)
    assert d.desired >= want
    if want > ready:
        assert d.reason.startswith("kv: ")


@FAST
@given(rate=st.integers(1, 400), target=st.floats(1, 100), period=st.floats(0.5, 5))
def test_rps_metric_scales_on_the_request_rate(rate: int, target: float, period: float) -> None:
    f = fleet(metric="rps", target=target)
    per_step = rate * period
    # The counter only holds whole requests: carry the fraction over.
    owed = 0.0
    decisions = []
    for _ in range(int(120 / period)):
        owed += per_step
        decisions.append(f.step(period, 1.0, new=int(owed)))
        owed -= int(owed)
    assume(per_step >= 1)
    measured = f.scaler.observe(Sample(f.t, 1.0, f.requests, f.ready), f.current)
    assert "req/s" in measured.reason
    assert abs(measured.desired - math.ceil(rate / target)) <= 1


def test_the_sample_window_stays_bounded_in_count() -> None:
    window = Window(3600.0)
    for i in range(MAX_SAMPLES * 3):
        window.add(Sample(i * 0.001, 1, i, 1))
    assert len(window) == MAX_SAMPLES


@FAST
@given(period=st.floats(0.5, 10), stable=st.floats(6, 120))
def test_the_sample_window_keeps_only_the_stable_window(period: float, stable: float) -> None:
    scaler = Autoscaler(
        ScalePolicy(stable_window_s=stable, panic_window_s=6.0 if stable > 6 else stable)
    )
    for i in range(int(600 / period)):
        scaler.observe(Sample(i * period, 1, i, 1), 1)
        assert scaler.kept <= stable / period + 2


# -- examples: each rule and its reason ---------------------------------------------------------


def test_stable_reason() -> None:
    f = fleet(current=3, target=32.0)
    d = f.step(2, 96)
    assert (d.desired, d.reason, d.panic) == (3, "stable: 96 in flight / target 32 -> 3", False)


def test_panic_then_holds_without_scaling_down_until_a_calm_stable_window() -> None:
    f = fleet(current=1, target=32.0)
    d = f.step(2, 96)
    assert (d.desired, d.panic) == (3, True)
    assert d.reason == "panic: 96 in flight >= 2x 1 ready -> 3"
    calm = f.run(2, [0] * 29)  # 58 s after the last panic condition
    assert all(x.desired == 3 and x.panic for x in calm)
    assert calm[-1].reason.startswith("panic: holding 3")
    d = f.step(2, 0)
    assert not d.panic
    assert d.desired == 1


def test_at_max_and_at_min() -> None:
    f = fleet(current=3, max_replicas=3)
    d = f.step(2, 500)
    assert d.desired == 3
    assert d.reason.startswith("at max 3")
    f = fleet(current=2, min_replicas=2)
    d = f.step(2, 0)
    assert d.desired == 2
    assert d.reason.startswith("at min 2")


def test_idle_to_zero_after_the_grace_period() -> None:
    f = fleet(current=1, min_replicas=0, scale_to_zero_grace_s=30.0)
    first = f.step(2, 0)
    assert first.desired == 1
    assert first.reason == "idle 0s of 30s: keeping 1"
    decisions = f.run(2, [0] * 15)
    assert [d.desired for d in decisions] == [1] * 14 + [0]
    assert decisions[-1].reason == "idle 30s -> 0"


def test_min_one_never_goes_to_zero() -> None:
    f = fleet(current=1, min_replicas=1, scale_to_zero_grace_s=0.0)
    assert all(d.desired == 1 for d in f.run(2, [0] * 100))


def test_scale_down_waits_for_the_delay() -> None:
    f = fleet(
        current=4,
        scale_down_delay_s=60.0,
        stable_window_s=2.0,  # the newest sample only: the want drops at once
        panic_window_s=2.0,
        max_scale_down_rate=100.0,
    )
    f.run(2, [128] * 5)
    decisions = f.run(2, [32] * 60)
    delayed = [d for d in decisions if d.reason.startswith("delay: ")]
    assert delayed[-1].reason == "delay: 1 wanted, keeping 4 for 60s"
    assert all(d.desired == 4 for d in delayed)
    assert len(delayed) * 2 >= 60 - 2  # the last sample wanting 4 leaves the window 60 s later
    assert decisions[-1].desired == 1
    assert changes(decisions) == 1


def test_step_bounds_up_and_down() -> None:
    f = fleet(current=2, max_scale_up_rate=2.0, panic_threshold=100.0)
    d = f.step(2, 1000)
    assert d.desired == 4
    assert d.reason == "step: 32 wanted, up to 4 now"
    f = fleet(current=8, max_scale_down_rate=2.0)
    d = f.step(2, 0)
    assert d.desired == 4
    assert d.reason == "step: 0 wanted, down to 4 now"


def test_wake_reason_singular() -> None:
    f = fleet(current=0, min_replicas=0)
    assert f.step(2, 1).reason == "wake: 1 held request"


def test_kv_cache_metric_is_a_fraction_per_replica() -> None:
    f = fleet(current=3, metric="kv_cache", target=0.8)
    d = f.step(2, 10, kv_usage=0.8)
    assert d.desired == 3
    assert d.reason == "stable: kv 2.40 / target 0.8 -> 3"


def test_waiting_metric() -> None:
    f = fleet(current=2, metric="waiting", target=5.0)
    d = f.step(2, 40, waiting=20)
    assert d.desired == 4
    assert d.reason.startswith("panic: 20 waiting") or d.reason.startswith("stable: 20 waiting")


def test_a_restarted_request_counter_is_not_a_negative_rate() -> None:
    scaler = Autoscaler(ScalePolicy(metric="rps", target=1.0))
    scaler.observe(Sample(0, 1, 10_000, 2), 2)
    d = scaler.observe(Sample(2, 1, 4, 2), 2)
    assert d.desired >= 1
    assert "req/s" in d.reason


def test_a_clock_that_goes_back_starts_afresh() -> None:
    scaler = Autoscaler(ScalePolicy())
    scaler.observe(Sample(100, 64, 0, 2), 2)
    d = scaler.observe(Sample(5, 64, 0, 2), 2)
    assert d.desired == 2
    assert scaler.kept == 1


# -- the policy of a spec -----------------------------------------------------------------------


def test_policy_for_caps_an_unbounded_max_and_carries_every_field() -> None:
    auto = Autoscaling.model_validate(
        {
            "minReplicas": 0,
            "metric": "rps",
            "target": 5,
            "stableWindowS": 30,
            "panicWindowS": 3,
            "panicThreshold": 3,
            "scaleDownDelayS": 10,
            "scaleToZeroGraceS": 20,
            "maxScaleUpRate": 4,
            "maxScaleDownRate": 3,
            "ttftP90S": 2.5,
            "kvUsageTarget": 0.9,
        }
    )
    p = policy_for(auto, cap=8)
    assert p == ScalePolicy(
        min_replicas=0,
        max_replicas=8,
        metric="rps",
        target=5,
        stable_window_s=30,
        panic_window_s=3,
        panic_threshold=3,
        scale_down_delay_s=10,
        scale_to_zero_grace_s=20,
        max_scale_up_rate=4,
        max_scale_down_rate=3,
        ttft_p90_s=2.5,
        kv_usage=0.9,
    )


@pytest.mark.parametrize(
    ("lo", "hi", "cap", "want"),
    [(1, None, 8, (1, 8)), (1, 3, 8, (1, 3)), (1, 20, 8, (1, 8)), (10, None, 4, (4, 4))],
)
def test_policy_for_bounds(lo: int, hi: int | None, cap: int, want: tuple[int, int]) -> None:
    p = policy_for(Autoscaling(min_replicas=lo, max_replicas=hi), cap)
    assert (p.min_replicas, p.max_replicas) == want


def test_policy_for_reads_a_kv_cache_percent_as_a_fraction() -> None:
    assert policy_for(Autoscaling(metric="kv_cache", target=80), 4).target == 0.8
    assert policy_for(Autoscaling(metric="kv_cache", target=0.7), 4).target == 0.7
    with pytest.raises(ValueError, match="cap must be at least 1"):
        policy_for(Autoscaling(), 0)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"min_replicas": -1}, "min_replicas -1 < 0"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas 2 below"),
        ({"panic_window_s": 90.0}, "panic_window_s <= stable_window_s"),
        ({"metric": "kv_cache", "target": 80.0}, "kv_cache target must be a fraction"),
        ({"max_scale_down_rate": 1.0}, "scale rates must be > 1"),
    ],
)
def test_bad_policies_are_refused(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ScalePolicy(**fields)
