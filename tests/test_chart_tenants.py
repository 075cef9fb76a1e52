"""`routerSpec.tenants.secretName`: the chart mounts the Secret's tenants file read-only (the
whole volume, which the kubelet updates, never a subPath) and passes it as --tenants-file. The
rendered flag is run by a real router with the mount pointed at a temporary directory laid out
as the kubelet lays out a Secret volume, and an update by the kubelet's link swap takes effect
without a restart."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import start_router, start_sim
from httpclient import wait_for
from test_chart_validate import VERSIONS, _errors, _validator
from test_tenants import kubelet_write
from vfleet.kube import render as helm

MOUNT = "/etc/vfleet/tenants"


def _values(tenants: dict[str, Any] | None) -> dict[str, Any]:
    router: dict[str, Any] = {
        "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    if tenants is not None:
        router["tenants"] = tenants
    return {
        "servingEngineSpec": {"modelSpec": [{"name": "a", "modelURL": "demo", "engine": "sim"}]},
        "routerSpec": router,
    }


def _deployment(values: dict[str, Any]) -> dict[str, Any]:
    rendered = helm.render(values, release="r", namespace="default").objects
    by_name = {f"{o['kind']}/{o['metadata']['name']}": o for o in rendered}
    return by_name["Deployment/r-deployment-router"]


def _pod(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _deployment(values)["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_no_tenants_file_by_default() -> None:
    pod, router = _pod(_values(None))
    assert "--tenants-file" not in router["args"]
    assert [v["name"] for v in pod["volumes"]] == ["scratch"]


def test_the_secret_is_mounted_whole_and_passed() -> None:
    values = _values({"secretName": "vfleet-tenants", "secretKey": "keys.json"})
    pod, router = _pod(values)
    args = router["args"]
    assert args[args.index("--tenants-file") + 1] == f"{MOUNT}/keys.json"
    assert pod["volumes"][-1] == {
        "name": "router-tenants",
        "secret": {"secretName": "vfleet-tenants"},
    }
    mount = router["volumeMounts"][-1]
    assert mount == {"name": "router-tenants", "mountPath": MOUNT, "readOnly": True}
    assert "subPath" not in mount  # a subPath mount is never updated by the kubelet
    assert [v["name"] for v in pod["volumes"]] == ["scratch", "router-tenants"]
    deployment = _deployment(values)
    validator = _validator(VERSIONS[-1], "Deployment", deployment["apiVersion"])
    assert validator is not None and not _errors(validator, deployment)


def test_the_default_key_is_tenants_yaml() -> None:
    _, router = _pod(_values({"secretName": "t"}))
    args = router["args"]
    assert args[args.index("--tenants-file") + 1] == f"{MOUNT}/tenants.yaml"


@pytest.mark.parametrize("tenants", [{"secret": "x"}, {"secretName": "t", "secretKey": ""}])
def test_a_wrong_tenants_value_is_refused(tenants: dict[str, Any]) -> None:
    with pytest.raises(helm.KubeError, match="tenants"):
        helm.render(_values(tenants), release="r", namespace="default")


def _status(port: int, key: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_the_rendered_router_follows_a_secret_update(tmp_path: Path) -> None:
    _, container = _pod(_values({"secretName": "t"}))
    args = container["args"]
    flag = args[args.index("--tenants-file") + 1].replace(MOUNT, str(tmp_path))
    kubelet_write(tmp_path, 1, "keys: [{name: team-a, key: sk-a, models: [demo]}]\n")
    sim = start_sim("--model", "demo", "--profile", "instant")
    router = None
    try:
        router = start_router("--backend", sim.url, "--tenants-file", flag)
        assert _status(router.port, "sk-a") == 200
        assert _status(router.port, "sk-b") == 401
        kubelet_write(tmp_path, 2, "keys: [{name: team-b, key: sk-b, models: [demo]}]\n")
        assert wait_for(lambda: _status(router.port, "sk-b") == 200, timeout_s=15, interval_s=0.2)
        assert _status(router.port, "sk-a") == 401
        assert not any("sk-b" in line for line in router.log)
    finally:
        if router is not None:
            router.stop()
        sim.stop()
