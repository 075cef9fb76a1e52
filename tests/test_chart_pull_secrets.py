"""`global.imagePullSecrets` reaches every pod the chart runs (router, engines of every kind,
the download Job, init containers' pods, `helm test`), ahead of the component's own secrets
(`routerSpec.imagePullSecrets`, a model's `imagePullSecret`), each name once; the result is
valid Kubernetes (kubernetes-validate strict, helm lint --strict). Checked by rendering."""

from __future__ import annotations

import copy
from typing import Any

import helm_python
import pytest

from test_chart_render import CHART, chart_made, pod_specs
from test_chart_validate import VERSIONS, _errors, _pod_templates, _validator
from vfleet.kube import render as helm

BASE: dict[str, Any] = {
    "servingEngineSpec": {
        "modelSpec": [
            # a download Job (s3 into a claim) and a model with its own pull secret
            {
                "name": "job",
                "modelURL": "s3://bucket/m",
                "pvcStorage": "10Gi",
                "requestGPU": 1,
                "imagePullSecret": "engine-reg",
            },
            # a download init container
            {
                "name": "init",
                "modelURL": "Qwen/Qwen3-0.6B",
                "requestGPU": 1,
                "source": {"kind": "s3", "id": "bucket/x"},
                "download": {"mode": "init"},
            },
            # a replica over two nodes: a LeaderWorkerSet (leader and worker templates)
            {
                "name": "wide",
                "modelURL": "Qwen/Qwen3-0.6B",
                "requestGPU": 16,
            },
            {"name": "sim", "modelURL": "sim-model", "engine": "sim"},
        ]
    },
    "routerSpec": {"imagePullSecrets": [{"name": "router-reg"}, {"name": "regcred"}]},
}
GLOBAL = ["regcred", {"name": "mirror"}]


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        o
        for o in helm.render(values, release="r", namespace="default").objects
        if chart_made(o) and pod_specs(o)
    ]


def _secrets(objects: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    """{kind/name: [pull secret names of each pod template]}."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": [
            [s["name"] for s in spec.get("imagePullSecrets", [])] for spec in pod_specs(o)
        ]
        for o in objects
    }


def _with_global(secrets: list[Any]) -> dict[str, Any]:
    values = copy.deepcopy(BASE)
    values["global"] = {"imagePullSecrets": secrets}
    return values


def test_every_pod_gets_the_global_secrets_first_each_name_once() -> None:
    found = _secrets(_render(_with_global(GLOBAL)))
    kinds = {key.split("/")[0] for key in found}
    assert kinds == {"Deployment", "Job", "LeaderWorkerSet", "Pod"}, found
    assert len(found) >= 7, found  # router, 4 engines, the download Job, helm test
    for key, templates in found.items():
        for names in templates:
            assert names[:2] == ["regcred", "mirror"], key
            assert len(names) == len(set(names)), key
    assert found["Deployment/r-deployment-router"] == [["regcred", "mirror", "router-reg"]]
    assert found["Deployment/r-job-deployment-vllm"] == [["regcred", "mirror", "engine-reg"]]
    leader, worker = next(v for k, v in found.items() if k.startswith("LeaderWorkerSet/"))
    assert leader == worker == ["regcred", "mirror"]


def test_without_global_secrets_pods_keep_only_their_own() -> None:
    found = _secrets(_render(copy.deepcopy(BASE)))
    assert found["Deployment/r-deployment-router"] == [["router-reg", "regcred"]]
    assert found["Deployment/r-job-deployment-vllm"] == [["engine-reg"]]
    others = {k: v for k, v in found.items() if "router" not in k and "job-deployment" not in k}
    assert others and all(v == [[]] * len(v) for v in others.values()), others


def test_pods_with_pull_secrets_are_valid_kubernetes() -> None:
    values = _with_global(GLOBAL)
    objects = _render(values)
    # a LeaderWorkerSet's templates as core PodTemplates (test_chart_validate checks the rest)
    objects = [
        t for o in objects for t in (_pod_templates(o) if o["kind"] == "LeaderWorkerSet" else [o])
    ]
    assert any(o["kind"] == "PodTemplate" for o in objects)
    for version in (VERSIONS[0], VERSIONS[-1]):
        for obj in objects:
            validator = _validator(version, obj["kind"], obj["apiVersion"])
            assert validator is not None, obj["kind"]
            assert not _errors(validator, obj), (version, obj["metadata"]["name"])
    report = helm_python.lint(CHART, values, strict=True, namespace="default")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("secrets", [[""], [{"nam": "x"}], [{"name": "x", "key": "y"}], "regcred"])
def test_schema_refuses_malformed_pull_secrets(secrets: Any) -> None:
    with pytest.raises(helm.KubeError):
        helm.render({"global": {"imagePullSecrets": secrets}}, release="r", namespace="default")
