"""Every object the chart renders, for every example and seed file, is valid Kubernetes: built-in
kinds against PyPI kubernetes-validate's strict schemas for Kubernetes 1.29 through the newest it
bundles; ScaledObject, LeaderWorkerSet and ServiceMonitor against the schemas in
tests/data/crds/ (written from the projects' CRDs); `helm lint --strict` through the Helm SDK.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import referencing
from kubernetes_validate.utils import all_versions, major_minor

from test_chart_render import ALL, CHART, NAMESPACE, case_of, chart_made

CRDS = Path(__file__).parent / "data" / "crds"
CRD_FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    (
        "leaderworkerset.x-k8s.io/v1",
        "LeaderWorkerSet",
    ): "leaderworkerset.x-k8s.io_v1_leaderworkerset.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}
# objects users brought in their own files, of kinds nobody publishes a schema for
UNCHECKED = {("scheduling.sigs.k8s.io/v1alpha1", "ElasticResourceClaim")}
VERSIONS = [v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 29)]
SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"


def test_versions_cover_129_to_newest() -> None:
    assert VERSIONS[0].startswith("1.29") and len(VERSIONS) >= 8, VERSIONS


@functools.cache
def _validator(version: str, kind: str, api: str) -> jsonschema.protocols.Validator | None:
    """kubernetes_validate.validate(obj, version, strict=True), with its schema files loaded
    once per kind and version instead of once per object (the same files, the same checks)."""
    folder = SCHEMAS / f"v{version}-local-strict"
    name = f"{kind.lower()}-{_api_part(api)}.json"
    if not (folder / name).is_file():
        return None
    schema = json.loads((folder / name).read_text())
    defs = json.loads((folder / "_definitions.json").read_text())
    registry: referencing.Registry[Any] = (
        referencing.Resource.from_contents(schema) @ referencing.Registry()
    )
    registry = referencing.Resource.from_contents(defs) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _api_part(api: str) -> str:
    group, _, ver = api.rpartition("/")
    return f"{group.split('.')[0]}-{ver}" if group else ver


@functools.cache
def _crd(api: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CRDS / CRD_FILES[(api, kind)]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _builtin(obj: dict[str, Any]) -> bool:
    return _validator(VERSIONS[-1], obj["kind"], obj["apiVersion"]) is not None


def _errors(validator: jsonschema.protocols.Validator, obj: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


def _pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """A LeaderWorkerSet's templates as core PodTemplates, for the strict core schemas."""
    lwt = obj["spec"]["leaderWorkerTemplate"]
    name = obj["metadata"]["name"]
    return [
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{name}-{part}"},
            "template": copy.deepcopy(lwt[part]),
        }
        for part in ("leaderTemplate", "workerTemplate")
        if part in lwt
    ]


@pytest.mark.parametrize("name", ALL)
def test_builtin_objects_pass_kubernetes_validate_strict(name: str) -> None:
    case = case_of(name)
    objects = [o for o in case.rendered.objects if _builtin(o)]
    objects += [
        t
        for o in case.rendered.objects
        if o["kind"] == "LeaderWorkerSet"
        for t in _pod_templates(o)
    ]
    assert objects
    for version in VERSIONS:
        for obj in objects:
            validator = _validator(version, obj["kind"], obj["apiVersion"])
            assert validator is not None, f"{obj['kind']} {obj['apiVersion']} unknown in {version}"
            errors = _errors(validator, obj)
            assert not errors, f"{version} {obj['kind']} {obj['metadata']['name']}: {errors}"


@pytest.mark.parametrize("name", ALL)
def test_custom_resources_match_their_crds(name: str) -> None:
    case = case_of(name)
    for obj in case.rendered.objects:
        key = (obj["apiVersion"], obj["kind"])
        if _builtin(obj):
            continue
        if key in UNCHECKED:
            assert not chart_made(obj), "the chart makes no objects without a schema"
            continue
        assert key in CRD_FILES, f"no schema for {key}"
        errors = _errors(_crd(*key), obj)
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}: {errors}"
        if obj["kind"] == "ScaledObject":
            spec = obj["spec"]
            assert spec.get("minReplicaCount", 0) <= spec.get(
                "maxReplicaCount", 100
            )  # the CRD's CEL rule


def test_the_cached_validator_agrees_with_kubernetes_validate() -> None:
    """One object of every built-in kind through kubernetes_validate.validate itself."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for name in ALL:
        for obj in case_of(name).rendered.objects:
            if _builtin(obj):
                seen.setdefault((obj["apiVersion"], obj["kind"]), obj)
    assert len(seen) >= 14, sorted(seen)
    for obj in seen.values():
        for version in (VERSIONS[0], VERSIONS[-1]):
            assert kubernetes_validate.validate(obj, version, strict=True) == major_minor(version)
    broken = copy.deepcopy(seen[("apps/v1", "Deployment")])
    broken["spec"]["template"]["spec"]["containers"][0]["bogus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    assert _errors(_validator(VERSIONS[-1], "Deployment", "apps/v1"), broken)  # type: ignore[arg-type]


def test_crd_schemas_catch_mistakes() -> None:
    case = case_of("raw:features-values")
    for kind in ("ScaledObject", "LeaderWorkerSet", "ServiceMonitor"):
        obj = copy.deepcopy(case.kind(kind)[0])
        obj["spec"]["unknownField"] = True
        assert _errors(_crd(obj["apiVersion"], kind), obj), kind
    lws = copy.deepcopy(case.kind("LeaderWorkerSet")[0])
    lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Always"
    assert _errors(_crd(lws["apiVersion"], "LeaderWorkerSet"), lws)


@pytest.mark.parametrize("name", ALL)
def test_helm_lint_strict(name: str) -> None:
    case = case_of(name)
    for kube in ("v1.29.0", f"v{VERSIONS[-1]}"):
        report = helm_python.lint(
            CHART, case.values, strict=True, namespace=NAMESPACE, kube_version=kube
        )
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, problems
