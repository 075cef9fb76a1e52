"""Engine metrics read around a run: sums of vLLM's Prometheus samples and their deltas (pure).

Only a handful of families matter to a benchmark (prefix-cache hits and queries, successes,
queue and running gauges); samples are summed over their labels (engines, models, finish
reasons), so a delta over a run is the fleet's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

WANTED = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:request_success_total",
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)
MAX_LINE = 64 * 1024


def parse(text: str, wanted: Iterable[str] = WANTED) -> dict[str, float]:
    """Sum of each wanted family's samples in Prometheus text; absent families are left out."""
    names = set(wanted)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#" or len(line) > MAX_LINE:
            continue
        brace = line.find("{")
        space = line.find(" ")
        end = brace if 0 <= brace < space or (brace >= 0 and space < 0) else space
        name = line[:end] if end >= 0 else line
        if name not in names:
            continue
        value = line.rsplit("}", 1)[-1].split()
        try:
            out[name] = out.get(name, 0.0) + float(value[0])
        except (ValueError, IndexError):
            continue
    return out


def by_label(text: str, family: str, label: str) -> dict[str, float]:
    """{value of `label`: sum of `family`'s samples with that value} in Prometheus text, summed
    over the other labels; samples without `label` are left out (e.g. a router's
    `vfleet_router_kv_decisions_total` by `reason`)."""
    head = family + "{"
    keys = ("{" + label + '="', "," + label + '="')
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(head) or len(line) > MAX_LINE:
            continue
        labels, _, value = line.rpartition("}")
        found = next((labels.find(k) + len(k) for k in keys if k in labels), -1)
        if found < 0:
            continue
        try:
            v = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        name = labels[found:].split('"', 1)[0]
        out[name] = out.get(name, 0.0) + v
    return out


def add(total: dict[str, float], more: Mapping[str, float]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0.0) + v


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float | None]:
    """Counter deltas and end-of-run gauges, plus the run's prefix-cache hit rate."""
    out: dict[str, float | None] = {}
    for name in WANTED:
        if name not in after:
            continue
        if name.endswith("_total"):
            out[name] = after[name] - before.get(name, 0.0)
        else:
            out[name] = after[name]
    queries = out.get("vllm:prefix_cache_queries_total")
    hits = out.get("vllm:prefix_cache_hits_total")
    if queries is not None and hits is not None:
        out["prefix_cache_hit_rate"] = hits / queries if queries > 0 else None
    return out
