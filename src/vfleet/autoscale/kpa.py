"""The scaling decision, with Knative KPA's semantics, over a bounded history of samples.

No clock and no I/O: time is `Sample.t`. Each `observe` runs the same steps, and the step that
decided last names the reason:

1. metric: ceil(stable-window average / target); in panic, the panic-window desire, never less
   than what panic already wanted or what runs now;
2. extra targets: TTFT above its target adds one replica; KV usage above its target adds enough;
3. step bounds: up to ceil(current x max_scale_up_rate), down to floor(current / down rate);
4. scale-down delay: the largest desire of the last scale_down_delay_s;
5. zero: only with min 0, outside panic, after the grace period without any demand;
6. bounds [min, max]; then the wake rule: a model at zero with demand gets one replica at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vfleet.autoscale.policy import Decision, Sample, ScalePolicy, replicas_for
from vfleet.autoscale.window import PeakWindow, Window, new_requests


@dataclass(frozen=True, slots=True)
class _Step:
    desired: int
    reason: str


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def _held(n: float) -> str:
    return f"{_num(n)} held request{'' if round(n) == 1 else 's'}"


class Autoscaler:
    """One model's autoscaler: call `observe` every `policy.period_s` with a fresh sample."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._window = Window(policy.stable_window_s)
        self._delay = PeakWindow(policy.scale_down_delay_s)
        self._panic_at: float | None = None  # the last time the panic condition held
        self._panic_floor = 0  # the most replicas wanted since panic began
        self._idle_since: float | None = None  # since when there has been no demand at all

    @property
    def panicking(self) -> bool:
        return self._panic_at is not None

    @property
    def kept(self) -> int:
        """Samples held now: those of the stable window, never more than MAX_SAMPLES."""
        return len(self._window)

    def observe(self, sample: Sample, current: int) -> Decision:
        """current = replicas the caller has now (starting + ready); returns the desired count."""
        demand = self._track_idle(sample)
        self._window.add(sample)
        step = self._by_metric(sample, current)
        step = self._by_latency(step, sample, current)
        step = self._by_kv(step)
        step = self._bounded_step(step, current)
        step = self._delayed(step, sample.t, current)
        step = self._to_zero(step, sample, current)
        step = self._clamped(step)
        step = self._woken(step, sample, current, demand)
        return Decision(step.desired, step.reason, self.panicking)

    # -- 1. the metric ---------------------------------------------------------------------

    def _value(self, span_s: float) -> float:
        """The metric's total over the window (per-replica targets divide it)."""
        w, metric = self._window, self.policy.metric
        if metric == "rps":
            return w.rate(span_s)
        if metric == "waiting":
            return w.mean(span_s, lambda s: s.waiting)
        if metric == "kv_cache":
            return w.mean(span_s, lambda s: s.kv_usage * s.ready)
        return w.mean(span_s, lambda s: s.concurrency)

    def _panic_value(self, sample: Sample) -> float:
        # A burst must show within one period, before it fills the panic window: the newest
        # sample counts when it is above the average (panic only ever scales up).
        value = self._value(self.policy.panic_window_s)
        if self.policy.metric == "concurrency":
            return max(value, sample.concurrency)
        if self.policy.metric == "waiting":
            return max(value, sample.waiting)
        return value

    def _describe(self, value: float) -> str:
        metric = self.policy.metric
        if metric == "rps":
            return f"{_num(value)} req/s"
        if metric == "waiting":
            return f"{_num(value)} waiting"
        if metric == "kv_cache":
            return f"kv {value:.2f}"
        return f"{_num(value)} in flight"

    def _by_metric(self, sample: Sample, current: int) -> _Step:
        p = self.policy
        panic_value = self._panic_value(sample)
        panic_want = replicas_for(panic_value, p.target)
        ready = max(sample.ready, 1)
        bursting = panic_want >= p.panic_threshold * ready
        self._update_panic(bursting, sample.t, current)
        stable = self._value(p.stable_window_s)
        if self._panic_at is None:
            want = replicas_for(stable, p.target)
            return _Step(want, f"stable: {self._describe(stable)} / target {p.target:g} -> {want}")
        want = self._panic_floor = max(self._panic_floor, panic_want, current)
        if bursting:
            what = self._describe(panic_value)
            return _Step(want, f"panic: {what} >= {p.panic_threshold:g}x {ready} ready -> {want}")
        calm = f"calm {sample.t - self._panic_at:.0f}s of {p.stable_window_s:g}s"
        return _Step(want, f"panic: holding {want}, {self._describe(stable)}, {calm}")

    def _update_panic(self, bursting: bool, t: float, current: int) -> None:
        """Panic starts with a burst and ends a stable window after the last one."""
        if bursting:
            if self._panic_at is None:
                self._panic_floor = current
            self._panic_at = t
        elif self._panic_at is not None and t - self._panic_at >= self.policy.stable_window_s:
            self._panic_at, self._panic_floor = None, 0

    # -- 2. extra targets ------------------------------------------------------------------

    def _by_latency(self, step: _Step, sample: Sample, current: int) -> _Step:
        limit, ttft = self.policy.ttft_p90_s, sample.ttft_p90_s
        if limit is None or ttft is None or ttft <= limit:
            return step
        # One more than is ready: while the last one added is still starting, wait for it.
        want = min(current, sample.ready) + 1
        if want <= step.desired:
            return step
        return _Step(want, f"latency: ttft p90 {ttft:.2f}s > {limit:g}s -> {want}")

    def _by_kv(self, step: _Step) -> _Step:
        limit = self.policy.kv_usage
        if limit is None:
            return step
        used = self._window.mean(self.policy.stable_window_s, lambda s: s.kv_usage * s.ready)
        want = replicas_for(used, limit)
        if want <= step.desired:
            return step
        return _Step(want, f"kv: {used:.2f} replicas' cache in use / target {limit:g} -> {want}")

    # -- 3-5. how fast, how soon -------------------------------------------------------------

    def _bounded_step(self, step: _Step, current: int) -> _Step:
        p = self.policy
        up = math.ceil(current * p.max_scale_up_rate - 1e-9)
        down = math.floor(current / p.max_scale_down_rate + 1e-9)
        if current == 0 and step.desired > 0:
            return _Step(0, f"at zero: {step.desired} wanted, waking on demand")
        if step.desired > up:
            return _Step(up, f"step: {step.desired} wanted, up to {up} now")
        if step.desired < down:
            return _Step(down, f"step: {step.desired} wanted, down to {down} now")
        return step

    def _delayed(self, step: _Step, t: float, current: int) -> _Step:
        # The delay holds what runs; it never scales up on its own.
        peak = min(self._delay.record(t, step.desired), current)
        if peak <= step.desired:
            return step
        delay = self.policy.scale_down_delay_s
        return _Step(peak, f"delay: {step.desired} wanted, keeping {peak} for {delay:g}s")

    def _track_idle(self, sample: Sample) -> bool:
        """Whether there is demand now (in flight, held, queued or new requests)."""
        before = self._window.last
        busy = sample.concurrency > 0 or sample.running > 0 or sample.waiting > 0
        if busy or (before is not None and new_requests(before, sample) > 0):
            self._idle_since = None
            return True
        if self._idle_since is None:
            self._idle_since = sample.t
        return False

    def _to_zero(self, step: _Step, sample: Sample, current: int) -> _Step:
        p = self.policy
        idle = None if self._idle_since is None else sample.t - self._idle_since
        wait = max(p.scale_to_zero_grace_s, p.scale_down_delay_s)
        if p.min_replicas > 0 or self.panicking:
            return step
        if idle is not None and idle >= wait:
            return _Step(0, f"idle {idle:.0f}s -> 0")
        if step.desired == 0 and current > 0:
            waited = f"idle {idle:.0f}s of {wait:g}s" if idle is not None else "demand"
            return _Step(1, f"{waited}: keeping 1")
        return step

    # -- 6. bounds and waking --------------------------------------------------------------

    def _clamped(self, step: _Step) -> _Step:
        lo, hi = self.policy.min_replicas, self.policy.max_replicas
        if hi is not None and step.desired > hi:
            return _Step(hi, f"at max {hi} ({step.reason})")
        if step.desired < lo:
            return _Step(lo, f"at min {lo} ({step.reason})")
        return step

    def _woken(self, step: _Step, sample: Sample, current: int, demand: bool) -> _Step:
        if current > 0 or step.desired > 0 or not demand:
            return step
        what = _held(sample.concurrency) if sample.concurrency > 0 else "new requests"
        return _Step(1, f"wake: {what}")
