"""The chart's router with HTTPS and the KEDA scaler: its replicas ask each other for demand over
HTTPS (tests/test_router_peer_tls.py runs that with real routers). By default nothing more is
passed (each trusts the Secret's certificate, the one --tls-cert names); `tls.peerCaKey` and
`tls.peerName` become --peer-ca (a file of the mounted Secret) and --peer-tls-name. The rendered
objects stay valid for Kubernetes' strict schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from test_chart_validate import VERSIONS, _builtin, _errors, _validator
from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.load import load
from vfleet.kube import render as helm
from vfleet.kube.values import chart_values

pytestmark = pytest.mark.timeout(120)

MOUNT = "/etc/vfleet/tls"


def _router_args(tmp_path: Path, tls: dict[str, str]) -> list[str]:
    spec = tmp_path / "fleet.yaml"
    model = {
        "name": "chat",
        "source": "hf://Qwen/Qwen3-0.6B",
        "engine": "sim",
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3},
    }
    spec.write_text(yaml.safe_dump({"name": "demo", "models": [model]}))
    values: dict[str, Any] = chart_values(load([spec]).fleet, engine_rules=load_rules(None)).values
    values.setdefault("routerSpec", {})["tls"] = tls
    objects = helm.render(values, release="r", namespace="default").objects
    for version in (VERSIONS[0], VERSIONS[-1]):
        for obj in filter(_builtin, objects):
            validator = _validator(version, obj["kind"], obj["apiVersion"])
            assert validator is not None
            assert not _errors(validator, obj), (version, obj["kind"], _errors(validator, obj))
    [router] = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("router")
    ]
    args: list[str] = router["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_peers_trust_the_shared_certificate_with_no_more_flags(tmp_path: Path) -> None:
    args = _router_args(tmp_path, {"secretName": "router-cert"})
    assert "--keda-port" in args and "--k8s-peer-selector" in args
    assert args[args.index("--tls-cert") + 1] == f"{MOUNT}/tls.crt"
    assert "--peer-ca" not in args and "--peer-tls-name" not in args


def test_peer_ca_and_name_are_passed(tmp_path: Path) -> None:
    tls = {"secretName": "router-cert", "peerCaKey": "ca.crt", "peerName": "r.default.svc"}
    args = _router_args(tmp_path, tls)
    assert args[args.index("--peer-ca") + 1] == f"{MOUNT}/ca.crt"
    assert args[args.index("--peer-tls-name") + 1] == "r.default.svc"


def test_no_peer_flags_without_tls(tmp_path: Path) -> None:
    args = _router_args(tmp_path, {"secretName": "", "peerCaKey": "ca.crt"})
    assert "--keda-port" in args
    assert not {"--tls-cert", "--peer-ca", "--peer-tls-name"} & set(args)
