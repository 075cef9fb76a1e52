"""Time to first token as the engines measure it, for the autoscaler's latency target.

Every vLLM engine (and the simulator) exports `vllm:time_to_first_token_seconds` as a cumulative
histogram. The p90 of the requests finished since the last look is the quantile of the bucket
counts' increase, summed over the model's engines, so it is the engines' own truth rather than
one router process's view. Pure: text and numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

FAMILY = "vllm:time_to_first_token_seconds_bucket"

Buckets = dict[float, float]  # upper bound (le) -> cumulative count


def parse_buckets(metrics_text: str) -> Buckets:
    """The TTFT histogram's cumulative bucket counts, summed over label sets (engines)."""
    out: Buckets = {}
    for line in metrics_text.splitlines():
        if not line.startswith(FAMILY):
            continue
        labels, _, value = line.rpartition(" ")
        le = _label(labels, "le")
        if le is None:
            continue
        try:
            bound, count = float(le), float(value)
        except ValueError:
            continue
        out[bound] = out.get(bound, 0.0) + count
    return out


def _label(labels: str, name: str) -> str | None:
    start = labels.find(f'{name}="')
    if start < 0:
        return None
    start += len(name) + 2
    end = labels.find('"', start)
    return labels[start:end] if end > start else None


def increase(before: Mapping[float, float] | None, now: Mapping[float, float]) -> Buckets:
    """Counts added since `before`; a counter that went down means the engine restarted, and
    then everything it counted is new."""
    if before is None:
        return dict(now)
    if any(now.get(le, 0.0) < n for le, n in before.items()):
        return dict(now)
    return {le: n - before.get(le, 0.0) for le, n in now.items()}


def combined(parts: Iterable[Mapping[float, float]]) -> Buckets:
    out: Buckets = {}
    for part in parts:
        for le, n in part.items():
            out[le] = out.get(le, 0.0) + n
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket as Prometheus'
    histogram_quantile does; None when it holds no observation. Past the last finite bound the
    answer is that bound (the histogram cannot say more)."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            width = count - below
            return le if width <= 0 else lower + (le - lower) * (rank - below) / width
        lower, below = le, count
    return lower
