"""The chart's images are set in one place: `routerSpec.image` is the vfleet image (router,
download Job and init containers, `helm test`, sim engines), `servingEngineSpec.download.image`
and `tests.image` override it per component, and `global.imageRegistry` points every image,
vfleet's and the engines', at one registry (an air-gapped mirror). Checked by rendering."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

import vfleet
from test_chart_render import CHART
from vfleet.kube import render as helm

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
BASE: dict[str, Any] = {
    "servingEngineSpec": {
        "modelSpec": [
            # a download Job (s3 with a volume)
            {"name": "job", "modelURL": "s3://bucket/m", "pvcStorage": "10Gi", "requestGPU": 1},
            # an init container, an engine image with a registry in its name
            {
                "name": "init",
                "modelURL": "Qwen/Qwen3-0.6B",
                "repository": "docker.io/vllm/vllm-openai",
                "tag": "v0.10.0",
                "requestGPU": 1,
                "source": {"kind": "s3", "id": "bucket/x"},
                "download": {"mode": "init"},
            },
            {"name": "sim", "modelURL": "sim-model", "engine": "sim"},
        ]
    }
}


def _images(values: dict[str, Any]) -> dict[str, str]:
    """{object/container: image} of every container the chart renders."""
    out: dict[str, str] = {}
    for obj in helm.render(values, release="r", namespace="default").objects:
        spec = obj.get("spec") or {}
        pod = spec if obj["kind"] == "Pod" else ((spec.get("template") or {}).get("spec") or {})
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            out[f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"] = c["image"]
    return out


def _with(**sets: Any) -> dict[str, Any]:
    values = copy.deepcopy(BASE)
    for dotted, value in sets.items():
        node = values
        *head, last = dotted.split("__")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return values


def _pick(images: dict[str, str], part: str) -> list[str]:
    found = [image for key, image in images.items() if part in key]
    assert found, (part, images)
    return found


def test_defaults() -> None:
    images = _images(_with())
    vfleet_image = f"ghcr.io/vfleet/vfleet:{APP_VERSION}"
    assert vfleet.__version__ == APP_VERSION
    for part in ("router", "download-", "/download", "test-router", "sim-deployment"):
        assert set(_pick(images, part)) == {vfleet_image}, part
    assert _pick(images, "job-deployment-vllm/vllm") == ["vllm/vllm-openai:v0.26.0"]
    assert _pick(images, "init-deployment-vllm/vllm") == ["docker.io/vllm/vllm-openai:v0.10.0"]


def test_global_registry_moves_every_image() -> None:
    images = _images(_with(global__imageRegistry="mirror.local:5000/ai/"))
    assert all(i.startswith("mirror.local:5000/ai/") for i in images.values()), images
    assert set(_pick(images, "router")) == {f"mirror.local:5000/ai/vfleet/vfleet:{APP_VERSION}"}
    # a registry written in the repository is replaced, a Docker Hub path kept
    assert _pick(images, "init-deployment-vllm/vllm") == [
        "mirror.local:5000/ai/vllm/vllm-openai:v0.10.0"
    ]
    assert _pick(images, "job-deployment-vllm/vllm") == [
        "mirror.local:5000/ai/vllm/vllm-openai:v0.26.0"
    ]


def test_one_vfleet_image_setting_and_per_component_overrides() -> None:
    values = _with(
        global__imageRegistry="mirror.local",
        routerSpec__image={"registry": "reg.example", "repository": "team/vf", "tag": "7"},
        tests__image={"tag": "7-debug"},
    )
    values["servingEngineSpec"]["download"] = {"image": {"repository": "localhost:5000/dl"}}
    images = _images(values)
    # routerSpec.image is the default of every vfleet container, its registry wins over global's
    assert set(_pick(images, "deployment-router/router")) | set(
        _pick(images, "sim-deployment")
    ) == {"reg.example/team/vf:7"}
    # downloads: their own repository (its registry replaced), the rest from routerSpec.image
    assert set(_pick(images, "download")) == {"reg.example/dl:7"}
    assert _pick(images, "test-router") == ["reg.example/team/vf:7-debug"]
    assert _pick(images, "job-deployment-vllm/vllm") == ["mirror.local/vllm/vllm-openai:v0.26.0"]


@pytest.mark.parametrize(
    "values",
    [
        {"global": {"imageRegistry": 5}},
        {"tests": {"image": {"repo": "x"}}},
        {"servingEngineSpec": {"download": {"image": {"tag": ["x"]}}}},
    ],
)
def test_schema_refuses_malformed_image_settings(values: dict[str, Any]) -> None:
    with pytest.raises(helm.KubeError):
        helm.render(values, release="r", namespace="default")
