"""docs/metrics.md lists exactly the metric families a live router (two workers) exports, with
their types, and every name follows the Prometheus naming conventions."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SimProcess
from httpclient import Client, wait_for

Factory = Callable[..., SimProcess]
DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(vfleet_router_[a-z_]+)` \| (counter|gauge|histogram) \|([^|]*)\|")


def documented() -> dict[str, tuple[str, set[str]]]:
    """family -> (type, label names) from the doc's table."""
    out = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in out, f"{m.group(1)} listed twice"
            out[m.group(1)] = (m.group(2), set(re.findall(r"`([a-z_]+)`", m.group(3))))
    return out


@pytest.mark.timeout(60)
def test_doc_lists_exactly_what_a_live_router_exports(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "demo", "--profile", "instant")
    router = router_factory("--backend", sim.url, "--workers", "2")
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 2, timeout_s=20)
    client = Client(router.url)
    body = {"model": "demo", "prompt": "hi", "max_tokens": 2}
    assert client.post("/v1/completions", body).status == 200
    text = client.get("/metrics").body.decode()
    exported: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            exported[name] = kind
            labels[name] = set()
        elif line and not line.startswith("#"):
            series = line.rpartition(" ")[0]
            name, _, rest = series.partition("{")
            family = next(f for f in sorted(exported, key=len, reverse=True) if name.startswith(f))
            labels[family] |= set(re.findall(r'([a-z_]+)="', rest)) - {"le"}
    doc = documented()
    assert {n: t for n, (t, _) in doc.items()} == exported
    for name, seen in labels.items():
        assert seen <= doc[name][1], f"{name}: labels {seen} not all documented"


def test_names_follow_prometheus_conventions() -> None:
    for name, (kind, _) in documented().items():
        assert re.fullmatch(r"vfleet_router_[a-z][a-z0-9_]*", name)
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name  # every histogram here measures time
