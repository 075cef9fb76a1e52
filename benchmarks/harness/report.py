"""Markdown tables from a run's records (pure: records in, text out).

Medians over repetitions. "Added" latency is, per repetition, the system's percentile minus
direct's percentile of the same repetition, then the median of those differences: a difference
of percentiles, not a percentile of differences, so at p99 small values are noisy.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

Records = list[dict[str, Any]]


def _get(rec: dict[str, Any] | None, *keys: str) -> Any:
    cur: Any = rec
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _index(records: Records) -> dict[tuple[str, int, str], dict[str, Any]]:
    return {(r["system"], r["rep"], r["phase"]): r for r in records}


def _systems(records: Records) -> list[str]:
    seen: list[str] = []
    for r in records:
        if r["system"] not in seen:
            seen.append(r["system"])
    return seen


class _Run:
    """Look-ups over one run's records: per repetition, medians, differences from direct."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.by = _index(records)
        self.reps = sorted({r["rep"] for r in records})

    def per_rep(self, system: str, phase: str, *keys: str) -> list[Any]:
        return [_get(self.by.get((system, rep, phase)), *keys) for rep in self.reps]

    def median(self, system: str, phase: str, *keys: str) -> float | None:
        return _median(self.per_rep(system, phase, *keys))

    def added(self, system: str, phase: str, *keys: str) -> float | None:
        mine, direct = self.per_rep(system, phase, *keys), self.per_rep("direct", phase, *keys)
        return _median(a - b for a, b in zip(mine, direct, strict=True) if None not in (a, b))

    def latency(self, system: str, phase: str, *keys: str) -> str:
        """'p50 / p99' added over direct, or direct's own figures as '(abs p50 / p99)'."""
        if system == "direct":
            p50, p99 = (self.median(system, phase, *keys, p) for p in ("p50", "p99"))
            return f"(abs {_fmt(p50, 2)} / {_fmt(p99, 2)})"
        if all(_get(self.by.get((system, rep, phase)), "skipped") for rep in self.reps):
            return "skipped"
        p50, p99 = (self.added(system, phase, *keys, p) for p in ("p50", "p99"))
        return f"{_fmt(p50, 2)} / {_fmt(p99, 2)}"

    def throughput(self, system: str) -> str:
        """Median max req/s, its range over repetitions, and its ratios to direct and nginx."""
        rps = self.median(system, "wrk", "wrk", "req_per_s")
        cell = _fmt(rps)
        seen = [v for v in self.per_rep(system, "wrk", "wrk", "req_per_s") if v is not None]
        if len(seen) > 1:
            cell += f" ({_fmt(min(seen))}-{_fmt(max(seen))})"
        ratios = []
        for ref in ("direct", "nginx"):
            ref_rps = self.median(ref, "wrk", "wrk", "req_per_s")
            if system not in ("direct", ref) and ref_rps and rps:
                ratios.append(f"{rps / ref_rps:.2f}x")
        return cell + (f" ({', '.join(ratios)})" if ratios else "")

    def events(self, system: str) -> str:
        ev = self.median(system, "stream0", "result", "events_per_s")
        direct = self.median("direct", "stream0", "result", "events_per_s")
        ratio = f" ({ev / direct:.2f}x)" if system != "direct" and ev and direct else ""
        return _fmt(ev) + ratio

    def router(self, system: str, rates: list[str]) -> list[str]:
        """Router CPU % at max load (and at the highest fixed rate), peak RSS."""
        if system == "direct":
            return ["-", "-"]
        cpu = _fmt(self.median(system, "wrk", "router_cpu_pct"))
        cpu += "".join(f" / {_fmt(self.median(system, p, 'router_cpu_pct'))}" for p in rates[-1:])
        rss = [r.get("router_rss_mb") for r in self.records if r["system"] == system]
        return [cpu, _fmt(max((x for x in rss if x is not None), default=None))]


def summary(records: Records, slow_phase: str = "stream10") -> str:
    """The one table a run is judged by (the shape docs/benchmarks.md records)."""
    run = _Run(records)
    rates = sorted(
        {r["phase"] for r in records if r["phase"].startswith("rate")}, key=lambda p: float(p[4:])
    )
    head = ["system", "version", "max req/s non-stream (x direct, x nginx)"]
    head += ["router CPU us/req at max"]
    head += [f"added p50 / p99 ms @{p[4:]} req/s" for p in rates]
    head += ["stream events/s (x direct)", f"added TTFT p50 / p99 ms ({slow_phase[6:]} ms/event)"]
    head += ["router CPU % at max" + "".join(f" / @{p[4:]}" for p in rates[-1:])]
    head += ["router RSS MB max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in _systems(records):
        version = next((v for v in run.per_rep(s, "start", "version") if v), "-")
        row = [s, str(version), run.throughput(s)]
        row.append(_fmt(run.median(s, "wrk", "router_cpu_us_per_req")))
        row += [run.latency(s, p, "result", "latency_ms") for p in rates]
        row += [run.events(s), run.latency(s, slow_phase, "result", "ttft_ms")]
        row += run.router(s, rates)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_rep(records: Records) -> str:
    """One row per system and repetition: the raw figures and how busy the machine was."""
    by = _index(records)
    head = [
        "rep",
        "system",
        "req/s",
        "router CPU us/req",
        "core0 / core1 busy % (wrk)",
        "other processes' CPU % (max over phases)",
        "stream0 events/s",
        "errors",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rep in sorted({r["rep"] for r in records}):
        for s in _systems(records):
            mine = [r for r in records if r["system"] == s and r["rep"] == rep]
            if not mine:
                continue
            wrk = by.get((s, rep, "wrk"))
            cores = _get(wrk, "cores") or {}
            busy = " / ".join(_fmt(_get(cores, c, "busy_pct")) for c in ("cpu0", "cpu1"))
            other = max((r.get("foreign_cpu_pct") or 0.0 for r in mine), default=0.0)
            row = [
                str(rep),
                s,
                _fmt(_get(wrk, "wrk", "req_per_s")),
                _fmt(_get(wrk, "router_cpu_us_per_req"), 1),
                busy,
                _fmt(other, 1),
                _fmt(_get(by.get((s, rep, "stream0")), "result", "events_per_s")),
                errors(mine),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def errors(recs: Records) -> str:
    """What went wrong in these phases, in a few words ("0" when nothing did)."""
    out = []
    for r in recs:
        if r["phase"] == "start" and not r.get("ready"):
            out.append("did not start")
        wrk = r.get("wrk") or {}
        bad = (wrk.get("non_2xx") or 0) + sum((wrk.get("socket_errors") or {}).values())
        res = r.get("result") or {}
        if r["phase"].startswith("rate"):
            bad += sum(v for k, v in (res.get("statuses") or {}).items() if k != "200")
        bad += sum((res.get("errors") or {}).values())
        bad += (res.get("streams_bad") or 0) + (res.get("streams_short") or 0)
        if r["phase"] not in ("start", "probe") and r.get("rc") not in (0, None):
            out.append(f"{r['phase']}: exit {r['rc']}")
        elif bad:
            out.append(f"{r['phase']}: {bad}")
        if r["phase"] == "probe":
            failed = [k for k, v in (res.get("routes") or {}).items() if v.get("status") != 200]
            if failed:
                out.append("probe: " + ", ".join(failed))
    return "; ".join(out) or "0"


def render(records: Records) -> str:
    slow = next(
        (
            r["phase"]
            for r in records
            if r["phase"].startswith("stream") and r["phase"] != "stream0"
        ),
        "stream10",
    )
    parts = [
        "### Summary (medians over repetitions; added = system - direct, same repetition)",
        "",
        summary(records, slow),
        "",
        "### Per repetition",
        "",
        per_rep(records),
        "",
    ]
    return "\n".join(parts)
