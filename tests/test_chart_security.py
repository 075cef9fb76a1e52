"""Chart hardening, on the real Helm renders of every example and seed (test_chart_render's
cases) and on variants: non-root pods with seccomp RuntimeDefault, containers without privilege
escalation or capabilities, read-only root filesystems (engines get a writable /tmp), keys only
through Secrets, the admin key on the router ServiceMonitor, and the optional NetworkPolicy."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from test_chart_render import (
    ALL,
    NAMESPACE,
    RELEASE,
    Case,
    case_of,
    chart_made,
    pod_specs,
    raw_case,
)
from test_chart_validate import VERSIONS, _builtin, _errors, _validator
from vfleet.kube import render as helm

# Containers the chart writes itself (user-supplied init containers are the user's business).
OURS = {"vllm", "vllm-worker", "router", "download", "wait-for-download"}
READ_ONLY = {"vllm", "vllm-worker", "router"}
FEATURES = "features-values"


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if chart_made(o) and pod_specs(o)]


@pytest.mark.parametrize("name", ALL)
def test_every_chart_pod_is_hardened(name: str) -> None:
    case = case_of(name)
    checked = 0
    for obj in _workloads(case.rendered.objects):
        for spec in pod_specs(obj):
            pod_sc = spec.get("securityContext") or {}
            where = f"{obj['kind']} {obj['metadata']['name']}"
            for c in (*spec.get("initContainers", []), *spec["containers"]):
                if c["name"] not in OURS:
                    continue
                checked += 1
                sc = c.get("securityContext") or {}
                # what applies: the container's setting, else the pod's
                effective = {**pod_sc, **sc}
                assert effective.get("runAsNonRoot") is True, (where, c["name"])
                assert effective.get("runAsUser", 0) != 0, (where, c["name"])
                assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
                assert sc.get("allowPrivilegeEscalation") is False, (where, c["name"])
                assert sc.get("capabilities") == {"drop": ["ALL"]}, (where, c["name"])
                if c["name"] in READ_ONLY:
                    assert sc.get("readOnlyRootFilesystem") is True, (where, c["name"])
    assert checked


@pytest.mark.parametrize("name", ALL)
def test_read_only_engines_get_a_writable_tmp_and_home(name: str) -> None:
    case = case_of(name)
    for obj in _workloads(case.rendered.objects):
        for spec in pod_specs(obj):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec["containers"]:
                if c["name"] not in ("vllm", "vllm-worker"):
                    continue
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert "emptyDir" in volumes[mounts["/tmp"]], obj["metadata"]["name"]
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                assert env["HOME"] == "/tmp" and env["XDG_CACHE_HOME"].startswith("/tmp/")
                assert env["USER"]  # torch's cache dir needs a user name


def _values(case: Case) -> dict[str, Any]:
    return copy.deepcopy(case.values)


def _router(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deploy = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("router")
    )
    return deploy["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_keys_reach_the_router_through_secrets_never_arguments() -> None:
    case = raw_case(FEATURES)
    router = _router(case.rendered.objects)
    assert not any("sk-test-key" in a for a in router["args"])
    assert not any("key" in a.lower() for a in router["args"])
    env = {e["name"]: e for e in router["env"]}
    assert "secretKeyRef" in env["VFLEET_API_KEYS"]["valueFrom"]
    admin = env["VFLEET_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert admin == {"name": "vfleet-admin", "key": "key"}


def test_the_router_service_monitor_sends_the_admin_key() -> None:
    case = raw_case(FEATURES)
    router_mon = case.one("ServiceMonitor", f"{RELEASE}-router-servicemonitor")
    (endpoint,) = router_mon["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["bearerTokenSecret"] == {"name": "vfleet-admin", "key": "key"}
    engine_mon = case.one("ServiceMonitor", f"{RELEASE}-engine-servicemonitor")
    assert "bearerTokenSecret" not in engine_mon["spec"]["endpoints"][0]  # vLLM's is open


def test_a_monitored_router_with_api_keys_needs_the_admin_key() -> None:
    values = _values(raw_case(FEATURES))
    del values["routerSpec"]["adminKey"]
    with pytest.raises(helm.KubeError, match="adminKey"):
        helm.render(values, release=RELEASE, namespace=NAMESPACE)
    values["routerSpec"]["adminKey"] = "sk-inline"  # a key in values would land in git
    with pytest.raises(helm.KubeError):
        helm.render(values, release=RELEASE, namespace=NAMESPACE)


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _pod_labels(obj: dict[str, Any]) -> list[dict[str, str]]:
    spec = obj["spec"]
    if obj["kind"] == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        return [
            lwt["leaderTemplate"]["metadata"]["labels"],
            lwt["workerTemplate"]["metadata"]["labels"],
        ]
    return [spec["template"]["metadata"]["labels"]]


def test_the_network_policy_admits_only_the_router_to_engines() -> None:
    case = raw_case(FEATURES)
    (policy,) = case.kind("NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    engines = [
        o
        for o in _workloads(case.rendered.objects)
        if o["kind"] in ("Deployment", "LeaderWorkerSet")
        and not o["metadata"]["name"].endswith("router")
    ]
    assert engines
    for obj in engines:
        for labels in _pod_labels(obj):
            assert _labels_match(spec["podSelector"], labels), obj["metadata"]["name"]
    router_labels = _pod_labels(
        next(o for o in case.kind("Deployment") if o["metadata"]["name"].endswith("router"))
    )[0]
    assert not _labels_match(spec["podSelector"], router_labels)
    rules = spec["ingress"]
    router_rule, prometheus_rule, replica_rule = rules
    assert _labels_match(router_rule["from"][0]["podSelector"], router_labels)
    assert router_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # a named port: every serving engine container calls its port http
    for obj in engines:
        for spec_ in pod_specs(obj):
            for c in spec_["containers"]:
                if c["name"] == "vllm":
                    assert any(p["name"] == "http" for p in c["ports"])
    assert prometheus_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # the multi-node model: leader and workers reach each other, on any port
    assert "ports" not in replica_rule
    assert any(obj["kind"] == "LeaderWorkerSet" for obj in engines)
    for obj in engines:
        for labels in _pod_labels(obj):
            assert _labels_match(replica_rule["from"][0]["podSelector"], labels)
    for version in (VERSIONS[0], VERSIONS[-1]):
        validator = _validator(version, "NetworkPolicy", policy["apiVersion"])
        assert _builtin(policy) and validator is not None
        assert _errors(validator, policy) == []


def test_no_network_policy_unless_asked_and_no_replica_rule_without_multi_node() -> None:
    for name in ALL:
        if name != f"raw:{FEATURES}":
            assert not case_of(name).kind("NetworkPolicy"), name
    values = _values(case_of("004-values-01-minimal-example"))
    values["servingEngineSpec"]["networkPolicy"] = {"enabled": True}
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    (policy,) = [o for o in rendered.objects if o["kind"] == "NetworkPolicy"]
    assert len(policy["spec"]["ingress"]) == 1  # the router only


def test_a_model_may_relax_its_container_and_keeps_the_rest() -> None:
    values = _values(case_of("004-values-01-minimal-example"))
    model = values["servingEngineSpec"]["modelSpec"][0]
    model["containerSecurityContext"] = {"readOnlyRootFilesystem": False}
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    engine = next(
        o
        for o in rendered.objects
        if o["kind"] == "Deployment" and not o["metadata"]["name"].endswith("router")
    )
    container = engine["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": False,
    }
    assert "/tmp" not in {m["mountPath"] for m in container.get("volumeMounts", [])}
