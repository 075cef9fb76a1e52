"""The vfleet chart rendered by the real Helm SDK for every example and seed file, both as
`vfleet k8s render` does it (file -> Fleet -> chart values) and, for vllm-stack values, as
`helm install -f values.yaml` does (the file as chart values). Renders are cached for the
session; the other test_chart_* modules import the cases from here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.load import load
from vfleet.fleetspec.models import Fleet
from vfleet.fleetspec.source import SpecError
from vfleet.kube import render as helm
from vfleet.kube.values import chart_values

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SEEDS = EXAMPLES / "seeds"
CHART = ROOT / "charts" / "vfleet"
GOLDEN = Path(__file__).parent / "data" / "golden-chart"
RELEASE, NAMESPACE = "vllm", "llm"


def _groups() -> dict[str, tuple[Path, ...]]:
    """Every example and seed file as a case; object-only seed files (a PV, a Service) join the
    fleet file with the same number, as `-f fleet.yaml -f objects.yaml`."""
    cases: dict[str, tuple[Path, ...]] = {}
    objects: list[Path] = []
    for path in sorted(EXAMPLES.glob("*.yaml")) + sorted(SEEDS.glob("*.yaml")):
        try:
            load([path])
        except SpecError:
            objects.append(path)
            continue
        cases[path.stem] = (path,)
    for path in objects:
        prefix = path.name.split("-", 1)[0]
        base = next(k for k in cases if k.startswith(prefix + "-") and "+" not in k)
        joined = (*cases.get(f"{base}+objects", cases[base]), path)
        cases[f"{base}+objects"] = joined
    cases["features-fleet"] = (GOLDEN / "features-fleet.yaml",)
    return cases


CASES = _groups()
# vllm-stack values files as `helm install vllm vfleet/vfleet -f FILE` reads them
RAW = {
    "000-embedding": SEEDS / "000-embedding.yaml",
    "004-values-01-minimal-example": SEEDS / "004-values-01-minimal-example.yaml",
    "features-values": GOLDEN / "features-values.yaml",
}


@dataclass(frozen=True)
class Case:
    name: str
    fleet: Fleet | None  # None for raw chart values
    values: dict[str, Any]
    rendered: helm.Rendered

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.rendered.objects if o.get("kind") == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} found"
        return found[0]


@functools.cache
def fleet_case(name: str, sets: tuple[tuple[str, Any], ...] = ()) -> Case:
    fleet = load(CASES[name]).fleet
    values = chart_values(fleet, engine_rules=load_rules(CHART)).values
    for dotted, value in sets:
        node = values
        *head, last = dotted.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return Case(name, fleet, values, helm.render(values, release=RELEASE, namespace=NAMESPACE))


@functools.cache
def raw_case(name: str) -> Case:
    values = yaml.safe_load(RAW[name].read_text(encoding="utf-8"))
    return Case(name, None, values, helm.render(values, release=RELEASE, namespace=NAMESPACE))


def all_cases() -> list[Case]:
    return [fleet_case(n) for n in CASES] + [raw_case(n) for n in RAW]


def chart_made(obj: dict[str, Any]) -> bool:
    """Made by the chart's own templates (not a user's extraObjects)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return str(labels.get("helm.sh/chart", "")).startswith("vfleet-")


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs inside a workload (both templates of a LeaderWorkerSet)."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Pod":
        return [spec]
    if kind == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        return [lwt["leaderTemplate"]["spec"], lwt["workerTemplate"]["spec"]]
    template = spec.get("template") or {}
    return [template["spec"]] if "spec" in template else []


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for p in pod_specs(obj) for c in (*p.get("initContainers", []), *p["containers"])]


ALL = sorted(CASES) + [f"raw:{n}" for n in RAW]


def case_of(name: str) -> Case:
    return raw_case(name[4:]) if name.startswith("raw:") else fleet_case(name)


@pytest.mark.parametrize("name", ALL)
def test_renders_with_labels_requests_and_names(name: str) -> None:
    case = case_of(name)
    assert case.kind("Deployment"), "no workloads"
    for obj in case.rendered.objects:
        meta = obj["metadata"]
        assert meta.get("name"), obj
        if not chart_made(obj):
            continue
        labels = meta["labels"]
        for key in ("name", "instance", "version", "managed-by", "part-of", "component"):
            assert labels.get(f"app.kubernetes.io/{key}"), (obj["kind"], meta["name"], key)
        assert len(meta["name"]) <= 63 or obj["kind"] not in ("Service",), meta["name"]
        for c in containers(obj):
            requests = (c.get("resources") or {}).get("requests") or {}
            assert requests.get("cpu") and requests.get("memory"), (meta["name"], c["name"])


@pytest.mark.parametrize("name", ALL)
def test_router_discovers_the_engine_pods(name: str) -> None:
    case = case_of(name)
    router = case.one("Deployment", f"{RELEASE}-deployment-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    selector = dict(kv.split("=") for kv in args[args.index("--k8s-selector") + 1].split(","))
    assert args[args.index("--k8s-namespace") + 1] == NAMESPACE
    assert args[:5] == ["router", "--host", "0.0.0.0", "--port", "8000"]
    engines = [o for o in case.rendered.objects if o["kind"] in ("Deployment", "LeaderWorkerSet")]
    engines = [
        o for o in engines if o["metadata"]["labels"]["app.kubernetes.io/component"] == "engine"
    ]
    assert engines
    for obj in engines:
        if obj["kind"] == "Deployment":
            templates = [obj["spec"]["template"]]
        else:
            lwt = obj["spec"]["leaderWorkerTemplate"]
            templates = [lwt["leaderTemplate"]]
            worker = lwt["workerTemplate"]["metadata"]["labels"]
            assert not selector.items() <= worker.items(), "workers must not get requests"
        for tmpl in templates:
            labels = tmpl["metadata"]["labels"]
            assert selector.items() <= labels.items()
            vllm = tmpl["spec"]["containers"][0]
            assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in vllm["ports"]
            notes = tmpl["metadata"]["annotations"]
            assert notes["vfleet.io/port"] == "8000"
            if "vfleet.io/models" in notes:
                assert all(notes["vfleet.io/models"].split(","))


@pytest.mark.parametrize("name", ALL)
def test_rbac_is_pods_read_only(name: str) -> None:
    case = case_of(name)
    role = case.one("Role", f"{RELEASE}-pod-reader")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    assert not case.kind("ClusterRole")
    binding = case.one("RoleBinding", f"{RELEASE}-pod-reader")
    account = f"{RELEASE}-router-service-account"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    router = case.one("Deployment", f"{RELEASE}-deployment-router")
    assert router["spec"]["template"]["spec"]["serviceAccountName"] == account


@pytest.mark.parametrize("name", ALL)
def test_our_images_run_as_non_root(name: str) -> None:
    case = case_of(name)
    for obj in case.rendered.objects:
        for pod in pod_specs(obj):
            for c in (*pod.get("initContainers", []), *pod["containers"]):
                if c["name"] in ("router", "download", "wait-for-download", "call-router"):
                    sc = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
                    assert sc.get("runAsNonRoot") is True, (obj["metadata"]["name"], c["name"])
                    assert sc.get("allowPrivilegeEscalation") is False
                    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_helm_test_hook_calls_the_router() -> None:
    case = fleet_case("000-embedding+objects")
    pod = case.one("Pod", f"{RELEASE}-test-router")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["ROUTER_URL"] == f"http://{RELEASE}-router-service.{NAMESPACE}.svc:80"
    assert yaml.safe_load(env["WANT_MODELS"]) == ["Qwen3-Embedding-0.6B"]


def test_notes_say_how_to_reach_the_router() -> None:
    notes = fleet_case("000-embedding+objects").rendered.notes
    assert f"port-forward svc/{RELEASE}-router-service 8000:80" in notes
    assert "qwen3embed: serves Qwen3-Embedding-0.6B" in notes
    assert "20% of a GPU (hami)" in notes
    assert "--gpu-memory-utilization 0.15 is a fraction of that slice" in notes
