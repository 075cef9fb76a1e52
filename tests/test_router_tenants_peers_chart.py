"""The chart's router replicas share key budgets: with tenancy on (a tenants Secret, or a rate or
token limit) and no KEDA scaler, each router pod is given the peer selector (its replicas) and
so asks them for their keys' usage; HTTPS peers get the trust flags as the scaler's do. A router
given peers with neither a scaler nor tenancy refuses to start, in one line."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import run_vfleet
from vfleet.kube import render as helm

PEERS = (
    "app.kubernetes.io/name=vfleet,app.kubernetes.io/instance=r,app.kubernetes.io/component=router"
)


def _args(router: dict[str, Any]) -> list[str]:
    values = {
        "servingEngineSpec": {"modelSpec": [{"name": "a", "modelURL": "demo", "engine": "sim"}]},
        "routerSpec": router,
    }
    objects = helm.render(values, release="r", namespace="default").objects
    [deployment] = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("router")
    ]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


@pytest.mark.parametrize(
    "router",
    [
        {"tenants": {"secretName": "keys"}},
        {"rateLimitPerMinute": 60},
        {"tokenLimitPerMinute": 1000},
    ],
)
def test_tenancy_gives_the_router_its_peers(router: dict[str, Any]) -> None:
    args = _args(router)
    assert args[args.index("--k8s-peer-selector") + 1] == PEERS
    assert "--keda-port" not in args  # no scaler: peers are asked for key usage only


def test_without_tenancy_or_scaler_there_are_no_peers() -> None:
    assert "--k8s-peer-selector" not in _args({})


def test_https_peers_of_a_tenancy_are_verified_as_the_scalers_are() -> None:
    tls = {"secretName": "cert", "peerCaKey": "ca.crt", "peerName": "r.default.svc"}
    args = _args({"rateLimitPerMinute": 60, "tls": tls})
    assert args[args.index("--peer-ca") + 1] == "/etc/vfleet/tls/ca.crt"
    assert args[args.index("--peer-tls-name") + 1] == "r.default.svc"


def test_a_peer_without_keda_or_tenancy_is_refused_in_one_line() -> None:
    got = run_vfleet("router", "--backend", "http://127.0.0.1:1", "--peer", "http://127.0.0.1:2")
    assert got.returncode != 0
    assert "Traceback" not in got.stderr
    assert "set --keda-port or --tenants-file" in got.stderr.strip().splitlines()[-1]
