"""Markdown for one run's summary and the side-by-side table of several runs (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# (label, path into the summary, scale, unit, higher is better)
ROWS: tuple[tuple[str, tuple[str, ...], float, str, bool], ...] = (
    ("completed", ("completed",), 1.0, "", True),
    ("failed", ("failed",), 1.0, "", False),
    ("request throughput", ("request_throughput",), 1.0, "req/s", True),
    ("output tokens/s", ("output_token_throughput",), 1.0, "tok/s", True),
    ("goodput", ("goodput",), 1.0, "req/s", True),
    ("TTFT p50", ("ttft_s", "p50"), 1000.0, "ms", False),
    ("TTFT p90", ("ttft_s", "p90"), 1000.0, "ms", False),
    ("TTFT p99", ("ttft_s", "p99"), 1000.0, "ms", False),
    ("ITL p50", ("itl_s", "p50"), 1000.0, "ms", False),
    ("ITL p99", ("itl_s", "p99"), 1000.0, "ms", False),
    ("TPOT p50", ("tpot_s", "p50"), 1000.0, "ms", False),
    ("TPOT p99", ("tpot_s", "p99"), 1000.0, "ms", False),
    ("E2E p50", ("e2e_s", "p50"), 1000.0, "ms", False),
    ("E2E p99", ("e2e_s", "p99"), 1000.0, "ms", False),
    ("prefix cache hit rate", ("engine_metrics", "prefix_cache_hit_rate"), 1.0, "", True),
)


def value(summary: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = summary
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"


def run_markdown(summary: Mapping[str, Any]) -> str:
    """The report of one run."""
    info = summary.get("run", {})
    lines = ["# vfleet bench run", ""]
    for key in ("url", "model", "workload", "load", "seed", "started"):
        if key in info:
            lines.append(f"- {key}: `{info[key]}`")
    slo = summary.get("slo", {})
    lines += [
        f"- SLO: TTFT <= {_num(slo.get('ttft_s'))} s, TPOT <= {_num(slo.get('itl_s'))} s",
        f"- duration: {summary.get('duration_s', 0):.2f} s",
        "",
        "| metric | value | unit |",
        "|---|---:|---|",
    ]
    for label, path, scale, unit, _ in ROWS:
        v = value(summary, path)
        lines.append(f"| {label} | {_num(None if v is None else v * scale)} | {unit} |")
    errors = summary.get("errors") or {}
    if errors:
        lines += ["", "Errors: " + ", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))]
    client = summary.get("client", {})
    lag = value(client, ("send_lag_s", "p99"))
    lines += [
        "",
        f"Client: {client.get('cpu_s', 0):.2f} s CPU; open-loop send lag p99 "
        f"{_num(None if lag is None else lag * 1000)} ms.",
    ]
    missing = summary.get("metrics_unreachable") or []
    if missing:
        lines.append(f"Engine metrics unreachable: {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def compare_table(names: Sequence[str], summaries: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of `summaries` side by side; each value after the first carries its ratio
    to the first run's (x1.25 means 25% higher)."""
    head = "| metric | " + " | ".join(names) + " |"
    sep = "|---|" + "---:|" * len(names)
    lines = [head, sep]
    for label, path, scale, unit, _ in ROWS:
        vals = [value(s, path) for s in summaries]
        if all(v is None for v in vals):
            continue
        cells = []
        base = vals[0]
        for i, v in enumerate(vals):
            cell = _num(None if v is None else v * scale)
            if i and v is not None and base:
                cell += f" (x{v / base:.2f})"
            cells.append(cell)
        lines.append(f"| {label}{f' ({unit})' if unit else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plan_markdown(result: Mapping[str, Any]) -> str:
    """The report of `vfleet bench plan`: one row per (policy, engine count), then the answer."""
    target = result.get("ttft_p99_target_s")
    lines = [
        f"# vfleet bench plan: {result['model']} ({result['profile']} profile)",
        "",
        f"- workload: `{result['workload']}`, {result['requests']} requests, "
        f"{result['load']} (virtual time)",
        f"- engines per GPU: {result.get('engines_per_gpu', 1)}",
        f"- target: p99 TTFT < {_num(target)} s" if target is not None else "- target: none",
        "",
        "| policy | replicas | TTFT p50 (ms) | TTFT p90 (ms) | TTFT p99 (ms) | TPOT p50 (ms) "
        "| req/s | output tok/s | meets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        s = row["summary"]

        def ms(path: tuple[str, ...], s: Mapping[str, Any] = s) -> str:
            v = value(s, path)
            return _num(None if v is None else v * 1000)

        lines.append(
            f"| {row['policy']} | {row['replicas']} | {ms(('ttft_s', 'p50'))} | "
            f"{ms(('ttft_s', 'p90'))} | {ms(('ttft_s', 'p99'))} | {ms(('tpot_s', 'p50'))} | "
            f"{_num(value(s, ('request_throughput',)))} | "
            f"{_num(value(s, ('output_token_throughput',)))} | "
            f"{'yes' if row['meets'] else 'no'} |"
        )
    lines.append("")
    for policy, n in result["fewest"].items():
        tried = max(r["replicas"] for r in result["rows"] if r["policy"] == policy)
        answer = (
            f"{n} replicas" if n is not None else f"more than {tried} replicas (none tried met it)"
        )
        lines.append(f"- {policy}: {answer}")
    return "\n".join(lines) + "\n"
