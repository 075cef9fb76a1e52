"""`routerSpec.tls.secretName`: the router serves HTTPS with the Secret's certificate and key
(mounted read-only, passed as --tls-cert/--tls-key), its probes, ServiceMonitor and `helm test`
pod speak HTTPS. The rendered test pod's script is run against a real router started with the
rendered TLS flags (the mount path pointed at a temporary directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import start_sim
from test_chart_validate import VERSIONS, _crd, _errors, _validator
from tlskit import make_pair, start_tls_router
from vfleet.kube import render as helm

MOUNT = "/etc/vfleet/tls"


def _values(tls: dict[str, Any] | None) -> dict[str, Any]:
    router: dict[str, Any] = {
        "serviceMonitor": {"enabled": True},
        "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    if tls is not None:
        router["tls"] = tls
    return {
        "servingEngineSpec": {"modelSpec": [{"name": "a", "modelURL": "demo", "engine": "sim"}]},
        "routerSpec": router,
    }


def _objects(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rendered = helm.render(values, release="r", namespace="default").objects
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in rendered}


def _router(objects: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = objects["Deployment/r-deployment-router"]["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_plain_http_by_default() -> None:
    objects = _objects(_values(None))
    pod, router = _router(objects)
    assert "--tls-cert" not in router["args"]
    assert all("scheme" not in p["httpGet"] for p in _probes(router))
    assert [v["name"] for v in pod["volumes"]] == ["scratch"]
    endpoint = objects["ServiceMonitor/r-router-servicemonitor"]["spec"]["endpoints"][0]
    assert "scheme" not in endpoint and "tlsConfig" not in endpoint
    assert _test_env(objects)["ROUTER_URL"].startswith("http://")


def test_tls_secret_is_mounted_and_passed() -> None:
    objects = _objects(_values({"secretName": "router-cert", "certKey": "chain.pem"}))
    pod, router = _router(objects)
    args = router["args"]
    cert = args[args.index("--tls-cert") + 1]
    key = args[args.index("--tls-key") + 1]
    assert (cert, key) == (f"{MOUNT}/chain.pem", f"{MOUNT}/tls.key")
    assert pod["volumes"][0] == {"name": "router-tls", "secret": {"secretName": "router-cert"}}
    assert [v["name"] for v in pod["volumes"]] == ["router-tls", "scratch"]
    assert router["volumeMounts"][0] == {
        "name": "router-tls",
        "mountPath": MOUNT,
        "readOnly": True,
    }
    assert {p["httpGet"]["scheme"] for p in _probes(router)} == {"HTTPS"}
    endpoint = objects["ServiceMonitor/r-router-servicemonitor"]["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert _test_env(objects)["ROUTER_URL"] == "https://r-router-service.default.svc:80"
    for name in ("Deployment/r-deployment-router", "Pod/r-test-router"):
        obj = objects[name]
        validator = _validator(VERSIONS[-1], obj["kind"], obj["apiVersion"])
        assert validator is not None and not _errors(validator, obj), name
    monitor = objects["ServiceMonitor/r-router-servicemonitor"]
    assert not _errors(_crd(monitor["apiVersion"], "ServiceMonitor"), monitor)


def test_unknown_tls_key_is_refused() -> None:
    with pytest.raises(helm.KubeError, match="tls"):
        helm.render(_values({"secret": "x"}), release="r", namespace="default")


@pytest.mark.timeout(120)
def test_helm_test_pod_passes_against_a_tls_router(tmp_path: Path) -> None:
    objects = _objects(_values({"secretName": "router-cert"}))
    _, container = _router(objects)
    args = container["args"]
    # the rendered TLS flags, with the Secret's mount in a temporary directory
    tls_args = [a.replace(MOUNT, str(tmp_path)) for a in args[args.index("--tls-cert") :][:4]]
    pair = make_pair("router")
    (tmp_path / "tls.crt").write_bytes(pair.cert)
    (tmp_path / "tls.key").write_bytes(pair.key)
    sim = start_sim("--model", "demo", "--profile", "instant")
    router = None
    try:
        router = start_tls_router(args=["--backend", sim.url, *tls_args])
        test_pod = objects["Pod/r-test-router"]["spec"]["containers"][0]
        env = _test_env(objects)
        env["ROUTER_URL"] = f"https://127.0.0.1:{router.port}"
        assert json.loads(env["WANT_MODELS"]) == ["demo"]
        done = subprocess.run(
            [sys.executable, *test_pod["command"][1:]],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "router serves: demo" in done.stdout
    finally:
        if router is not None:
            router.stop()
        sim.stop()


def _probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")]


def _test_env(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    env = objects["Pod/r-test-router"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e}
