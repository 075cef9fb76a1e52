"""The Grafana dashboards (charts/vfleet/dashboards/, the same files as docs/grafana/): every
panel's PromQL parses (promql-parser, the Rust Prometheus parser's Python binding) and names only
metric families that something of ours exports: the router (a live scrape of `vfleet router` over
simulator engines), the simulator's /metrics, or the real vLLM 0.26 capture. The chart ships them
all in its sidecar-labelled ConfigMap.

Grafana variables are replaced by plain values before parsing: `$__rate_interval` by a duration,
any other `$name` / `${name}` (only used inside label matchers) by a word.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from conftest import DATA, SimProcess
from httpclient import Client
from vfleet.kube import render as helm

Factory = Callable[..., SimProcess]
ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "vfleet"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
DOCS = ROOT / "docs" / "grafana"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")
TYPE = re.compile(r"^# TYPE (\S+) (\w+)")
GRAFANA_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def exported_names(text: str) -> set[str]:
    """The metric names an exposition offers a query: every sample name, and for each declared
    family (even one with no series yet) the names its samples take."""
    names: set[str] = set()
    for line in text.splitlines():
        if m := TYPE.match(line):
            family, kind = m.groups()
            names.add(family)
            names.update(family + s for s in SUFFIXES.get(kind, ()))
        elif m := SAMPLE.match(line):
            names.add(m.group(1))
    return names


def grafana_to_promql(expr: str) -> str:
    def plain(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return "5m" if name in ("__rate_interval", "__interval", "__range") else "x"

    return GRAFANA_VAR.sub(plain, expr)


def selectors(expr: str) -> list[str]:
    """The metric names an expression selects (ParseError/ValueError if it does not parse)."""
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.append(node.name or "")

    promql_parser.walk(promql_parser.parse(grafana_to_promql(expr)), visit)
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside a collapsed row


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"{panel['title']} / {target['refId']}", target["expr"]


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.fixture(scope="module")
def exported() -> Iterator[set[str]]:
    """Every metric name the router, the simulator and real vLLM 0.26 export."""
    from conftest import start_router, start_sim

    engines = [start_sim("--model", "demo", "--profile", "instant") for _ in range(2)]
    router = start_router(
        *(a for e in engines for a in ("--backend", e.url)), "--health-interval", "0.2"
    )
    try:
        c = Client(router.url)
        body = {"model": "demo", "prompt": "hello", "max_tokens": 3, "stream": True}
        for _ in range(3):  # traffic, so labelled series exist too, not only declared families
            c.sse("/v1/completions", body)
        names = exported_names(c.get("/metrics").body.decode())
        names |= exported_names(Client(engines[0].url).get("/metrics").body.decode())
    finally:
        router.stop()
        for e in engines:
            e.stop()
    names |= exported_names((DATA / "metrics_qwen3_after_load.txt").read_text())
    yield names


def test_docs_copies_are_the_chart_dashboards() -> None:
    assert [p.name for p in DASHBOARDS] == sorted(p.name for p in DOCS.glob("*.json"))
    for path in DASHBOARDS:
        assert (DOCS / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_expression_parses_and_names_exported_families(
    path: Path, exported: set[str]
) -> None:
    dash = load(path)
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    found = list(expressions(dash))
    assert found, "no queries"
    unknown: dict[str, set[str]] = {}
    for where, expr in found:
        try:
            names = selectors(expr)
        except ValueError as exc:
            pytest.fail(f"{path.name}: {where}: does not parse ({exc}): {expr}")
        assert names and all(names), f"{where}: every selector names a metric: {expr}"
        for name in set(names) - exported:
            unknown.setdefault(name, set()).add(where)
    for variable in dash["templating"]["list"]:
        for name in LABEL_VALUES.findall(str(variable.get("query", ""))):
            if name not in exported:
                unknown.setdefault(name, set()).add(f"variable {variable['name']}")
    assert not unknown, f"{path.name} queries metrics nobody exports: {unknown}"


def test_the_checks_catch_mistakes(exported: set[str]) -> None:
    # the test above would fail on a typo in a name or on broken syntax
    assert "vfleet_router_request_total" not in exported
    assert "vfleet_router_requests_total" in exported
    assert "vllm:time_to_first_token_seconds_bucket" in exported
    with pytest.raises(ValueError):
        selectors("sum by (model) (rate(vfleet_router_requests_total[$__rate_interval])")
    assert selectors('rate(x{a="$namespace"}[$__rate_interval])') == ["x"]


def test_the_chart_ships_every_dashboard() -> None:
    rendered = helm.render(
        {"grafanaDashboards": {"enabled": True}}, release="obs", namespace="llm", chart=CHART
    )
    maps = [
        o
        for o in rendered.objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "obs-grafana-vfleet"
    ]
    assert len(maps) == 1
    cm = maps[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's label
    assert set(cm["data"]) == {p.name for p in DASHBOARDS}
    for path in DASHBOARDS:
        assert json.loads(cm["data"][path.name]) == load(path)
