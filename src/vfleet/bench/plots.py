"""PNG plots of runs, sweeps and plans, drawn with matplotlib when it is installed.

matplotlib is an optional extra (`pip install vfleet[bench]`): it is large, and a benchmark's
numbers are complete without pictures, so `available()` says whether plots can be drawn and the
commands say so when they cannot.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vfleet.bench.report import value
from vfleet.bench.stats import Record

CDF_POINTS = 2000


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never look for a display
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, values: Sequence[float], label: str) -> None:
    if not values:
        return
    xs = sorted(v * 1000 for v in values)
    n = len(xs)
    # at most CDF_POINTS points: a million-request run draws as fast as a small one
    idx = sorted({min(n - 1, round(k * (n - 1) / CDF_POINTS)) for k in range(CDF_POINTS + 1)})
    ax.plot([xs[i] for i in idx], [(i + 1) / n for i in idx], label=label)


def run_cdfs(records: Sequence[Record], path: Path) -> None:
    """Latency CDFs of one run: TTFT, TPOT and E2E, in ms."""
    plt = _pyplot()
    ok = [r for r in records if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    series = (
        ("TTFT", [r.ttft for r in ok if r.ttft is not None]),
        ("TPOT", [t for r in ok if (t := r.tpot) is not None]),
        ("E2E", [r.e2e for r in ok if r.e2e is not None]),
    )
    for ax, (name, vals) in zip(axes, series, strict=True):
        _cdf(ax, vals, name)
        ax.set_title(f"{name} ({len(vals)} requests)")
        ax.set_xlabel("ms")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(rates: Sequence[float], summaries: Sequence[Mapping[str, Any]], path: Path) -> None:
    """TTFT percentiles and throughput against the offered rate."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for p in ("p50", "p90", "p99"):
        ys = [value(s, ("ttft_s", p)) for s in summaries]
        left.plot(rates, [y * 1000 if y is not None else float("nan") for y in ys], "o-", label=p)
    left.set_xlabel("offered rate (req/s)")
    left.set_ylabel("TTFT (ms)")
    left.legend()
    left.grid(alpha=0.3)
    got = [value(s, ("request_throughput",)) or 0.0 for s in summaries]
    good = [value(s, ("goodput",)) or 0.0 for s in summaries]
    right.plot(rates, got, "o-", label="throughput")
    right.plot(rates, good, "s--", label="goodput")
    right.plot(rates, rates, ":", color="grey", label="offered")
    right.set_xlabel("offered rate (req/s)")
    right.set_ylabel("req/s")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plan(result: Mapping[str, Any], path: Path) -> None:
    """p99 TTFT against replicas, one line per policy, with the target."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    policies: dict[str, list[tuple[int, float]]] = {}
    for row in result["rows"]:
        p99 = value(row["summary"], ("ttft_s", "p99"))
        if p99 is not None:
            policies.setdefault(row["policy"], []).append((row["replicas"], p99 * 1000))
    for policy, points in policies.items():
        ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=policy)
    target = result.get("ttft_p99_target_s")
    if target is not None:
        ax.axhline(target * 1000, color="red", linestyle="--", label="target")
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("replicas")
    ax.set_ylabel("p99 TTFT (ms)")
    ax.set_title(f"{result['model']}: {result['workload']}, {result['load']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    names: Sequence[str],
    summaries: Sequence[Mapping[str, Any]],
    ttfts: Sequence[Sequence[float]],
    itls: Sequence[Sequence[float]],
    path: Path,
) -> dict[str, list[str]]:
    """Runs side by side: TTFT and ITL CDFs (one line per run, in matplotlib's colour cycle
    order) and request throughput bars. Returns the series drawn per panel, which are also
    written into the PNG's text metadata (key `vfleet:series`) so a reader can check them."""
    import json

    plt = _pyplot()
    fig, (a_ttft, a_itl, a_thr) = plt.subplots(1, 3, figsize=(15, 4))
    drawn: dict[str, list[str]] = {"ttft": [], "itl": [], "throughput": []}
    for name, t_vals, i_vals in zip(names, ttfts, itls, strict=True):
        if t_vals:
            _cdf(a_ttft, t_vals, name)
            drawn["ttft"].append(name)
        else:
            a_ttft.plot([], [])  # keep each run's colour the same in every panel
        if i_vals:
            _cdf(a_itl, i_vals, name)
            drawn["itl"].append(name)
        else:
            a_itl.plot([], [])
    for ax, what in ((a_ttft, "TTFT"), (a_itl, "inter-token latency")):
        ax.set_title(f"{what} CDF")
        ax.set_xscale("log")
        ax.set_xlabel("ms")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a_ttft.set_ylabel("fraction")
    thr = [value(s, ("request_throughput",)) or 0.0 for s in summaries]
    colours = [f"C{i % 10}" for i in range(len(names))]
    a_thr.bar(range(len(names)), thr, color=colours)
    a_thr.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    a_thr.set_ylabel("req/s")
    a_thr.set_title("request throughput")
    a_thr.grid(alpha=0.3, axis="y")
    drawn["throughput"] = list(names)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"vfleet:series": json.dumps(drawn)})
    plt.close(fig)
    return drawn
