"""The chart's autoscaling through the router's KEDA external scaler (external-push), the HPA
path, Knative-style settings as KEDA/HPA behavior, and the router's hold limits. Variants of the
seed files are rendered here and checked like every other render: ScaledObjects against the
KEDA CRD schema, built-in objects with kubernetes-validate's strict schemas, HPA behavior also
inside a ScaledObject (where the CRD leaves it unchecked) as the autoscaling/v2 schema says.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest

from test_chart_render import NAMESPACE, RELEASE, fleet_case, raw_case
from test_chart_validate import VERSIONS, _builtin, _crd, _errors, _validator
from vfleet.kube import render as helm

T9K = "003-t9k-qwen2.5-7b-instruct-hf"
SCALER = f"{RELEASE}-router-scaler"
PEERS = f"app.kubernetes.io/name=vfleet,app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=router"  # noqa: E501


@functools.cache
def _variant(name: str, **auto: Any) -> helm.Rendered:
    """Seed 003 (T9k, min 1 max 3) with its first model's autoscaling changed."""
    values = copy.deepcopy(fleet_case(T9K).values)
    spec = values["servingEngineSpec"]["modelSpec"][0]
    spec["autoscaling"] = {**spec["autoscaling"], **auto}
    if name == "no-scaler":
        values.setdefault("routerSpec", {})["kedaPort"] = 0
    return helm.render(values, release=RELEASE, namespace=NAMESPACE)


VARIANTS = {
    "seed": {},
    "to-zero": {"minReplicas": 0, "scaleToZeroGraceS": 45.5, "stableWindowS": 30},
    "rps": {"minReplicas": 0, "metric": "rps", "target": 2.5, "stableWindowS": 20},
    "waiting-to-zero": {"minReplicas": 0, "metric": "waiting", "target": 4},
    "kv-cache": {"metric": "kv_cache", "target": 0.8, "maxScaleUpRate": 2},
    "no-scaler": {"minReplicas": 0},
}


def _rendered(name: str) -> helm.Rendered:
    return _variant(name, **VARIANTS[name])


def _kind(r: helm.Rendered, kind: str) -> list[dict[str, Any]]:
    return [o for o in r.objects if o["kind"] == kind]


def _router_container(r: helm.Rendered) -> dict[str, Any]:
    deploy = next(o for o in _kind(r, "Deployment") if o["metadata"]["name"].endswith("router"))
    return deploy["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _triggers(r: helm.Rendered) -> list[dict[str, Any]]:
    (scaled,) = _kind(r, "ScaledObject")
    return scaled["spec"]["triggers"]  # type: ignore[no-any-return]


def test_t9k_seed_scales_through_the_router_scaler() -> None:
    r = _rendered("seed")
    (scaled,) = _kind(r, "ScaledObject")
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 3)
    assert _triggers(r) == [
        {
            "type": "external-push",
            "name": "demand",
            "metadata": {
                "scalerAddress": f"{SCALER}.{NAMESPACE}.svc:9090",
                "models": "Qwen2.5-7B-Instruct",
                "metric": "concurrency",
                "target": "32",
            },
        }
    ]
    router = _router_container(r)
    args = router["args"]
    assert args[args.index("--keda-port") + 1] == "9090"
    assert args[args.index("--k8s-peer-selector") + 1] == PEERS
    assert {"name": "keda", "containerPort": 9090, "protocol": "TCP"} in router["ports"]
    (svc,) = [o for o in _kind(r, "Service") if o["metadata"]["name"] == SCALER]
    assert svc["spec"]["type"] == "ClusterIP"  # never exposed with the router's LoadBalancer
    assert svc["spec"]["ports"] == [
        {
            "name": "keda",
            "port": 9090,
            "targetPort": "keda",
            "protocol": "TCP",
            "appProtocol": "grpc",
        }
    ]


def test_scale_to_zero_with_knative_windows() -> None:
    r = _rendered("to-zero")
    (scaled,) = _kind(r, "ScaledObject")
    spec = scaled["spec"]
    assert spec["minReplicaCount"] == 0 and spec["cooldownPeriod"] == 46
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {"scaleDown": {"stabilizationWindowSeconds": 30}}
    assert [t["type"] for t in spec["triggers"]] == ["external-push"]


def test_rps_is_the_routers_rate_over_the_stable_window() -> None:
    meta = _triggers(_rendered("rps"))[0]["metadata"]
    assert (meta["metric"], meta["target"], meta["window"]) == ("rps", "2.5", "20")


def test_engine_metrics_keep_prometheus_and_the_router_wakes() -> None:
    to_zero = _triggers(_rendered("waiting-to-zero"))
    assert [(t["type"], t["name"]) for t in to_zero] == [
        ("prometheus", "load"),
        ("external-push", "demand"),
    ]
    assert to_zero[1]["metadata"]["metric"] == "activation"
    assert [t["type"] for t in _triggers(_rendered("kv-cache"))] == ["prometheus"]  # min 1


def test_without_the_scaler_every_trigger_is_prometheus() -> None:
    r = _rendered("no-scaler")
    assert [t["name"] for t in _triggers(r)] == ["load", "requests"]
    assert "--keda-port" not in _router_container(r)["args"]
    assert SCALER not in {o["metadata"]["name"] for o in _kind(r, "Service")}


def test_no_autoscaling_no_scaler() -> None:
    for case in (fleet_case("000-embedding+objects"), raw_case("004-values-01-minimal-example")):
        args = case.one("Deployment", f"{RELEASE}-deployment-router")["spec"]["template"]
        assert "--keda-port" not in args["spec"]["containers"][0]["args"]
        assert not [o for o in case.kind("Service") if o["metadata"]["name"] == SCALER]


def test_hpa_behavior_from_knative_settings() -> None:
    hpa = raw_case("features-values").one("HorizontalPodAutoscaler", f"{RELEASE}-chat-hpa")
    assert hpa["spec"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 300},
        "scaleUp": {"policies": [{"type": "Percent", "value": 200, "periodSeconds": 15}]},
    }


def test_hold_limits_reach_the_router() -> None:
    case = fleet_case("features-fleet")
    assert case.values["servingEngineSpec"]["modelSpec"][0]["hold"] == {
        "timeoutS": 600,
        "maxQueued": 50,
    }
    args = case.one("Deployment", f"{RELEASE}-deployment-router")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    holds = [args[i + 1] for i, a in enumerate(args) if a == "--model-hold"]
    assert holds == ["Qwen/Qwen3-8B=600,50", "qwen=600,50", "sql=600,50"]
    values = copy.deepcopy(case.values)
    values["routerSpec"].update(holdTimeoutS=120, holdMaxQueued=10)
    del values["servingEngineSpec"]["modelSpec"][0]["hold"]["timeoutS"]
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    args = _router_container(rendered)["args"]
    assert args[args.index("--hold-timeout") + 1] == "120"
    assert args[args.index("--hold-max-queued") + 1] == "10"
    assert "Qwen/Qwen3-8B=120,50" in args


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_are_valid(name: str) -> None:
    objects = _rendered(name).objects
    for obj in objects:
        if _builtin(obj):
            for version in (VERSIONS[0], VERSIONS[-1]):
                validator = _validator(version, obj["kind"], obj["apiVersion"])
                assert validator is not None
                assert not _errors(validator, obj), (version, obj["kind"], _errors(validator, obj))
        elif obj["kind"] == "ScaledObject":
            assert not _errors(_crd(obj["apiVersion"], obj["kind"]), obj)
            _behavior_is_valid(obj)


def test_scaled_object_behavior_in_the_fleet_cases_is_valid() -> None:
    for case in (fleet_case("features-fleet"), raw_case("features-values")):
        for obj in case.kind("ScaledObject"):
            _behavior_is_valid(obj)


def _behavior_is_valid(scaled: dict[str, Any]) -> None:
    """KEDA hands advanced.horizontalPodAutoscalerConfig.behavior to the HPA it makes: check it
    as an autoscaling/v2 HorizontalPodAutoscaler's (the CRD schema types it as any object)."""
    behavior = scaled["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
    if "behavior" not in behavior:
        return
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "x"},
            "maxReplicas": 2,
            "behavior": behavior["behavior"],
        },
    }
    for version in (VERSIONS[0], VERSIONS[-1]):
        validator = _validator(version, "HorizontalPodAutoscaler", "autoscaling/v2")
        assert validator is not None
        assert not _errors(validator, hpa), _errors(validator, hpa)
