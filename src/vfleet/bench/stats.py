"""Per-request records and their summary: percentiles, throughput, goodput under an SLO (pure).

Definitions (the ones `vllm bench serve` uses, so numbers compare):
- TTFT: send to the first streamed content token; E2E: send to the end of the response.
- ITL: the gaps between consecutive content chunks of one response.
- TPOT: (E2E - TTFT) / (output tokens - 1), per request with more than one output token.
- Request throughput: successful requests / wall time of the run; token throughput likewise with
  the servers' `usage` counts.
- Goodput: successful requests per second whose TTFT is within the TTFT SLO and whose TPOT is
  within the ITL SLO (either SLO may be absent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Record:
    """What one request measured. Times are seconds; `sent` is from the start of the run."""

    id: str
    kind: str
    sent: float
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    input_tokens: int = 0  # from usage (0 when the server sent none)
    output_tokens: int = 0
    chunks: int = 0  # streamed content chunks seen

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tpot"] = self.tpot
        return d


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float | None = None
    itl_s: float | None = None

    def met(self, r: Record) -> bool:
        if not r.ok:
            return False
        if self.ttft_s is not None and (r.ttft is None or r.ttft > self.ttft_s):
            return False
        tpot = r.tpot
        return self.itl_s is None or tpot is None or tpot <= self.itl_s


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile with linear interpolation between closest ranks (numpy's default);
    None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {
        "mean": sum(values) / len(values) if values else None,
        "max": max(values) if values else None,
    }
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(values, p)
    return out


def summarize(records: Sequence[Record], duration_s: float, slo: Slo) -> dict[str, Any]:
    """The summary of a run's records over `duration_s` seconds of wall time."""
    ok = [r for r in records if r.ok]
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            key = str(r.status) if r.status else (r.error.split(":", 1)[0] or "error")
            errors[key] = errors.get(key, 0) + 1
    tokens_in = sum(r.input_tokens for r in ok)
    tokens_out = sum(r.output_tokens for r in ok)
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: 0.0)
    good = sum(1 for r in ok if slo.met(r))
    return {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": errors,
        "duration_s": duration_s,
        "request_throughput": per_s(len(ok)),
        "input_token_throughput": per_s(tokens_in),
        "output_token_throughput": per_s(tokens_out),
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "slo": {"ttft_s": slo.ttft_s, "itl_s": slo.itl_s},
        "goodput": per_s(good),
        "good_requests": good,
        "ttft_s": distribution([r.ttft for r in ok if r.ttft is not None]),
        "tpot_s": distribution([t for r in ok if (t := r.tpot) is not None]),
        "itl_s": distribution([x for r in ok for x in r.itl]),
        "e2e_s": distribution([r.e2e for r in ok if r.e2e is not None]),
    }
