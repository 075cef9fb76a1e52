"""What a KEDA ScaledObject asks the router's external scaler, and the answers: pure functions.

A ScaledObject's trigger metadata names the served models it scales (`models`, a comma list;
`model` for one), the per-replica `target` and the `metric`: `concurrency` (requests in flight
plus requests held while the model has no ready replica, the Knative concurrency), `rps`
(requests per second over `window` seconds) or `activation` (only wakes the model from zero;
another trigger sizes it). Demand is summed over every source that reports it: this router's
worker processes (one shared table) and each peer router replica's `GET /vfleet/demand`.

No I/O, no clock: `server` owns the gRPC service and `peers` the HTTP calls.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

DEFAULT_TARGET = 32.0  # requests per replica, Knative's and vfleet's default
DEFAULT_WINDOW_S = 60.0  # rps averaging window, Knative's stable window
MAX_WINDOW_SAMPLES = 256  # a rate window keeps at most this many samples

Metric = Literal["concurrency", "rps", "activation"]
METRICS: dict[str, Metric] = {
    "concurrency": "concurrency",
    "rps": "rps",
    "activation": "activation",
}


class MetadataError(ValueError):
    """The trigger metadata cannot be used (KEDA shows the message on the ScaledObject)."""


class DemandLike(Protocol):
    """One model's demand as a source reports it (vfleet.router.demand.Demand has this shape)."""

    @property
    def inflight(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def requests(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Counts:
    """One model's demand as a peer router reported it."""

    inflight: int = 0
    held: int = 0
    requests: int = 0  # cumulative since that router started


Reading = Mapping[str, DemandLike]  # served name -> demand, from one source


@dataclass(frozen=True, slots=True)
class ScalerQuery:
    """A ScaledObject's trigger metadata, checked."""

    models: tuple[str, ...]
    target: float = DEFAULT_TARGET
    metric: Metric = "concurrency"
    window_s: float = DEFAULT_WINDOW_S

    @property
    def metric_name(self) -> str:
        """`vfleet-<first model>` in the characters the external metrics API takes in a name."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.models[0].lower()).strip("-") or "model"
        return f"vfleet-{slug}"[:200]


def parse_metadata(meta: Mapping[str, str]) -> ScalerQuery:
    """The query in a ScaledObjectRef's scalerMetadata; MetadataError if unusable."""
    names = meta.get("models") or meta.get("model") or ""
    models = tuple(dict.fromkeys(m.strip() for m in names.split(",") if m.strip()))
    if not models:
        raise MetadataError("trigger metadata needs `models` (served model names, comma-separated)")
    text = (meta.get("metric") or "concurrency").strip()
    metric = METRICS.get(text)
    if metric is None:
        raise MetadataError(f"metric {text!r}: use {', '.join(METRICS)}")
    target = _positive(meta, "target", DEFAULT_TARGET)
    window = _positive(meta, "window", DEFAULT_WINDOW_S)
    return ScalerQuery(models, target, metric, window)


def _positive(meta: Mapping[str, str], key: str, default: float) -> float:
    text = (meta.get(key) or "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise MetadataError(f"{key} {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise MetadataError(f"{key} must be above 0, not {text}")
    return value


def demand(models: Iterable[str], readings: Iterable[Reading]) -> int:
    """Requests in flight plus held for `models`, summed over every source's reading."""
    wanted = tuple(models)
    total = 0
    for reading in readings:
        for name in wanted:
            d = reading.get(name)
            if d is not None:
                total += d.inflight + d.held
    return total


def requests_by_source(models: Iterable[str], readings: Mapping[str, Reading]) -> dict[str, int]:
    """Cumulative requests for `models` per source (each source's counter is its own)."""
    wanted = tuple(models)
    out = {}
    for source, reading in readings.items():
        out[source] = sum(d.requests for name in wanted if (d := reading.get(name)) is not None)
    return out


def target_sizes(target: float) -> tuple[int, float]:
    """(targetSize, targetSizeFloat): KEDA takes the float when above 0; old KEDA the int."""
    return max(1, round(target)), float(target)


def parse_demand_body(body: bytes) -> dict[str, Counts]:
    """A peer's `GET /vfleet/demand` answer: {"models": {name: {inflight, held, requests}}}."""
    raw: Any = orjson.loads(body)
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise ValueError("no `models` mapping in the demand answer")
    out = {}
    for name, row in models.items():
        if isinstance(name, str) and isinstance(row, dict):
            out[name] = Counts(*(_count(row, key) for key in ("inflight", "held", "requests")))
    return out


def _count(row: Mapping[str, Any], key: str) -> int:
    value = row.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class RateWindow:
    """Requests per second over a sliding window, from cumulative per-source counters.

    Each source (this router, each peer) counts on its own since it started. As Prometheus'
    rate() does, a counter that went down was reset (its router restarted) and counts from
    zero; a source appears with its first sample as its baseline. Samples come from the caller
    (every GetMetrics).
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=MAX_WINDOW_SAMPLES)

    def add(self, t: float, counters: Mapping[str, int]) -> float:
        """Record the counters seen at `t` (seconds, monotonic); the rate over the window."""
        self._samples.append((t, dict(counters)))
        # keep one sample at or before the window's start, so the span covers the window
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.window_s:
            self._samples.popleft()
        return self.rate()

    def rate(self) -> float:
        if len(self._samples) < 2 or self._samples[-1][0] <= self._samples[0][0]:
            return 0.0
        grown = 0
        prev = self._samples[0][1]
        for _, now in list(self._samples)[1:]:
            for src, n in now.items():
                before = prev.get(src)
                if before is not None:
                    grown += n - before if n >= before else n
            prev = now
        return grown / (self._samples[-1][0] - self._samples[0][0])
