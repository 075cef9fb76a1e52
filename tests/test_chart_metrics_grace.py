"""`routerSpec.metricsGraceS`: how long the router keeps the metric series of an engine pod that
left, rendered as the router's `--metrics-grace` (nothing when empty: the router's 60 s), checked
by the chart's schema, valid for Kubernetes, and run by a real router: with the rendered value a
departed engine's request counters leave `/metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_vfleet
from httpclient import Client, wait_for
from test_chart_validate import VERSIONS, _errors, _validator
from test_router_scale_metrics import COMPLETION, Factory, series, write_json
from vfleet.kube import render as helm

pytestmark = pytest.mark.timeout(120)


def _deployment(router: dict[str, Any]) -> dict[str, Any]:
    values = {
        "servingEngineSpec": {"modelSpec": [{"name": "a", "modelURL": "chat", "engine": "sim"}]},
        "routerSpec": router,
    }
    rendered = helm.render(values, release="r", namespace="default").objects
    by_name = {f"{o['kind']}/{o['metadata']['name']}": o for o in rendered}
    return by_name["Deployment/r-deployment-router"]


def _args(router: dict[str, Any]) -> list[str]:
    args: list[str] = _deployment(router)["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def _grace(args: list[str]) -> str:
    assert args.count("--metrics-grace") == 1, args
    return args[args.index("--metrics-grace") + 1]


def test_empty_leaves_the_routers_default() -> None:
    assert "--metrics-grace" not in _args({})
    assert "--metrics-grace" not in _args({"metricsGraceS": None})


@pytest.mark.parametrize(("value", "flag"), [(300, "300"), (2.5, "2.5"), (0, "0")])
def test_a_value_becomes_the_flag(value: float, flag: str) -> None:
    assert _grace(_args({"metricsGraceS": value})) == flag


def test_the_deployment_is_valid_for_kubernetes() -> None:
    deployment = _deployment({"metricsGraceS": 30})
    for version in (VERSIONS[0], VERSIONS[-1]):
        validator = _validator(version, "Deployment", deployment["apiVersion"])
        assert validator is not None
        assert not _errors(validator, deployment), (version, _errors(validator, deployment))


@pytest.mark.parametrize("value", [-1, "60s", [60]])
def test_a_wrong_value_is_refused_by_the_schema(value: Any) -> None:
    with pytest.raises(helm.KubeError, match="metricsGraceS"):
        _deployment({"metricsGraceS": value})


def test_a_fleet_sets_it_through_router_kubernetes(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "name: demo\nmodels:\n  - {name: chat, source: Qwen/Qwen3-0.6B}\n"
        "router:\n  kubernetes: {metricsGraceS: 45}\n"
    )
    done = run_vfleet("k8s", "render", "-f", str(spec), timeout_s=60)
    assert done.returncode == 0, done.stderr
    (router,) = [
        o
        for o in yaml.safe_load_all(done.stdout)
        if o and o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-router")
    ]
    assert _grace(router["spec"]["template"]["spec"]["containers"][0]["args"]) == "45"


def test_the_rendered_flag_retires_a_departed_pods_series(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    # The chart's args as the pod runs them, but for discovery: an endpoints file stands in for
    # the pod list, so a pod "leaves" when the file stops naming it.
    args = _args({"metricsGraceS": 0})
    grace = args[args.index("--metrics-grace") : args.index("--metrics-grace") + 2]
    old, new = (sim_factory("--model", "chat", "--profile", "instant") for _ in range(2))
    pods = tmp_path / "pods.json"
    write_json(pods, [{"url": old.url, "models": ["chat"]}])
    router = router_factory("--endpoints-file", str(pods), *grace)
    assert Client(router.url).post("/v1/completions", COMPLETION).status == 200
    counted = series(router, "vfleet_router_requests_total")
    assert [dict(k)["upstream"] for k in counted] == [old.url]

    write_json(pods, [{"url": new.url, "models": ["chat"]}])  # rescheduled: a new pod IP

    def only_new() -> bool:
        Client(router.url).post("/v1/completions", COMPLETION)  # counted under the new pod
        counted = series(router, "vfleet_router_requests_total")
        return {dict(k)["upstream"] for k in counted} == {new.url}

    assert wait_for(only_new, timeout_s=20)
