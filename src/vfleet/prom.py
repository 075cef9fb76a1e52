"""Prometheus text exposition helpers shared by the simulator's and the router's /metrics."""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field


def fmt(v: float) -> str:
    """A sample value as Prometheus' Python client writes it (Go-style exponent for big values)."""
    if v == float("inf"):
        return "+Inf"
    if v == float("-inf"):
        return "-Inf"
    if math.isnan(v):
        return "NaN"
    s = repr(float(v))
    dot = s.find(".")
    if v > 0 and dot > 6 and "e" not in s:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.total += v

    @property
    def count(self) -> int:
        return sum(self.counts)


def labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def escape(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
