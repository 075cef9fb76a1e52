"""The history the autoscaler keeps: bounded in time and in count, so it never grows."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import pairwise

from vfleet.autoscale.policy import Sample

MAX_SAMPLES = 4096  # a caller sampling far faster than period_s still stays bounded


class Window:
    """The samples of the last `span_s` seconds, plus one older sample as the base that the
    request rate counts from."""

    def __init__(self, span_s: float) -> None:
        self._span = span_s
        self._samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def last(self) -> Sample | None:
        return self._samples[-1] if self._samples else None

    def add(self, sample: Sample) -> None:
        if self._samples and sample.t < self._samples[-1].t:
            self._samples.clear()  # the caller's clock went back: nothing before is comparable
        self._samples.append(sample)
        edge = sample.t - self._span
        while len(self._samples) > 1 and self._samples[1].t <= edge:
            self._samples.popleft()

    def recent(self, span_s: float) -> list[Sample]:
        """The samples of the last `span_s` seconds; never empty once one was added."""
        if not self._samples:
            return []
        edge = self._samples[-1].t - span_s
        return [s for s in self._samples if s.t > edge]

    def mean(self, span_s: float, value: Callable[[Sample], float]) -> float:
        samples = self.recent(span_s)
        return sum(value(s) for s in samples) / len(samples) if samples else 0.0

    def rate(self, span_s: float) -> float:
        """Requests per second over about the last `span_s` seconds (0 with one sample)."""
        if not self._samples:
            return 0.0
        edge = self._samples[-1].t - span_s
        pairs = [(a, b) for a, b in pairwise(self._samples) if b.t > edge]
        if not pairs:
            return 0.0
        elapsed = pairs[-1][1].t - pairs[0][0].t
        return sum(new_requests(a, b) for a, b in pairs) / elapsed if elapsed > 0 else 0.0


def new_requests(before: Sample, after: Sample) -> int:
    """Requests received between two samples; a counter that went back was restarted."""
    if after.requests >= before.requests:
        return after.requests - before.requests
    return after.requests


class PeakWindow:
    """The largest value recorded in the last `span_s` seconds (span 0: the latest value)."""

    def __init__(self, span_s: float) -> None:
        self._span = span_s
        self._values: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)

    def record(self, t: float, value: int) -> int:
        """Add `value` at `t`; return the peak of the window."""
        if self._values and t < self._values[-1][0]:
            self._values.clear()
        self._values.append((t, value))
        while self._values[0][0] <= t - self._span and len(self._values) > 1:
            self._values.popleft()
        return max(v for _, v in self._values)
