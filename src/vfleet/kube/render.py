"""The vfleet chart through Helm's Go SDK (PyPI `helm-python-sdk`, no helm binary): render
offline, install, upgrade, uninstall and status against the current kubeconfig.

`render()` talks to no cluster. Helm's messages become `KubeError`s of one line; the chart's own
`fail` messages (a bad GPU request, an unknown download mode) come through as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vfleet.engines.chartdir import ChartNotFound, find_chart

# Helm's install order (pkg/release/util/kind_sorter.go), so `render` prints objects in the
# order they are applied; kinds not listed go last, as Helm puts them.
INSTALL_ORDER = (
    *("PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange"),
    *("PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList"),
    *("ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim"),
    *("CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding"),
    *("ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service"),
    *("DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment"),
    *("HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress"),
    *("APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"),
)
_HELM_PREFIX = re.compile(r"^(execution error at \([^)]*\):\s*|[A-Za-z ]+ failed:\s*)+")


class KubeError(Exception):
    """A problem with the chart, the values or the cluster, in one line for the user."""


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]  # every manifest, test hooks included, in install order
    notes: str  # the chart's NOTES.txt

    def yaml(self) -> str:
        return "".join(f"---\n{_dump(obj)}" for obj in self.objects)


def chart_dir(explicit: str | Path | None = None) -> Path:
    """The chart to render: see `vfleet.engines.chartdir.find_chart` for where it is looked for."""
    try:
        return find_chart(explicit)
    except ChartNotFound as exc:
        raise KubeError(str(exc)) from None


@contextmanager
def helm_errors() -> Iterator[None]:
    """Helm SDK errors (and a missing SDK) as one-line KubeErrors."""
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - a dependency of vfleet
        raise KubeError(
            f"the Helm SDK is not installed (pip install helm-python-sdk): {exc}"
        ) from None
    try:
        yield
    except helm_python.HelmError as exc:
        raise KubeError(one_line(str(exc))) from None


def one_line(message: str) -> str:
    text = " ".join(message.split())
    return _HELM_PREFIX.sub("", text) or "Helm failed without a message"


def render(
    values: dict[str, Any], *, release: str, namespace: str, chart: str | Path | None = None
) -> Rendered:
    """The chart's manifests for `values`, as `helm template` would print them."""
    import helm_python

    with helm_errors(), helm_python.Chart.load(chart_dir(chart)) as loaded:
        check_release(release)
        files = loaded.render(values, name=release, namespace=namespace, is_install=True)
    return from_files(files)


def package(out: Path, version: str, *, chart: str | Path | None = None) -> Path:
    """`helm package` of the chart into `out` (created) as vfleet-VERSION.tgz, its `version` and
    `appVersion` both set to `version`; the archive is linted (strict) before it is returned.

    The version is stamped here, not only read from Chart.yaml, so a package always names the
    vfleet it came from, whichever copy of the chart (`--chart`) was packaged; the router image
    tag defaults to `appVersion`, so the two must be one number."""
    import helm_python

    source = chart_dir(chart)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KubeError(f"cannot write {out}: {exc.strerror or exc}") from None
    with helm_errors():
        archive = Path(
            helm_python.package(source, destination=out, version=version, app_version=version)
        )
        report = helm_python.lint(archive, strict=True)
    problems = [str(m["error"]) for m in report["messages"] if m["severity"] >= 2]
    problems += [str(e) for e in report["errors"]]
    if problems:
        raise KubeError(f"{archive}: helm lint --strict: {one_line(problems[0])}")
    return archive


def check_release(release: str) -> None:
    """Helm's rule for release names, plus a letter first: they begin Service names."""
    import helm_python

    try:
        helm_python.validate_release_name(release)
    except helm_python.HelmError as exc:
        raise KubeError(f"release name {release!r}: {one_line(str(exc))}") from None
    if not release[0].isalpha():
        raise KubeError(
            f"release name {release!r}: start it with a letter (it begins Service names)"
        )


def from_files(files: dict[str, str]) -> Rendered:
    """Helm's {template path: text} as parsed objects in install order, and the notes."""
    objects: list[dict[str, Any]] = []
    notes = ""
    for path in sorted(files):
        text = files[path]
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise KubeError(f"{path} rendered invalid YAML: {one_line(str(exc))}") from None
        objects += [d for d in docs if isinstance(d, dict) and d]
    objects.sort(key=_order)
    return Rendered(objects, notes)


def _order(obj: dict[str, Any]) -> tuple[bool, int, str, str]:
    """Install order; hooks (`helm test` pods) last, as Helm runs them after the release."""
    meta = obj.get("metadata") or {}
    hook = "helm.sh/hook" in (meta.get("annotations") or {})
    kind = str(obj.get("kind", ""))
    rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
    return hook, rank, kind, str(meta.get("name", ""))


def _dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100)


def file_names(objects: list[dict[str, Any]]) -> list[str]:
    """One file name per object: NN-kind-name.yaml, numbered in install order."""
    out = []
    width = max(2, len(str(len(objects))))
    for i, obj in enumerate(objects, 1):
        meta = obj.get("metadata") or {}
        slug = re.sub(
            r"[^a-z0-9.-]+", "-", f"{obj.get('kind', 'object')}-{meta.get('name', '')}".lower()
        )
        out.append(f"{i:0{width}d}-{slug.strip('-')}.yaml")
    return out


def write_dir(rendered: Rendered, out: Path) -> list[Path]:
    """One file per object under `out` (created); returns the paths written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for obj, name in zip(rendered.objects, file_names(rendered.objects), strict=True):
            path = out / name
            path.write_text(_dump(obj), encoding="utf-8")
            paths.append(path)
    except OSError as exc:
        raise KubeError(f"cannot write {out}: {exc.strerror or exc}") from None
    return paths


@dataclass(frozen=True)
class Cluster:
    """Where releases live: the current kubeconfig (or KUBECONFIG), one namespace."""

    namespace: str
    kubeconfig: str | None = None
    context: str | None = None


def install(
    cluster: Cluster,
    values: dict[str, Any],
    release: str,
    *,
    chart: str | Path | None = None,
    upgrade: bool = False,
    wait: bool = False,
    timeout_s: int = 600,
    create_namespace: bool = False,
) -> dict[str, Any]:
    """helm install (or upgrade) RELEASE with `values`; returns Helm's release summary."""
    import helm_python

    with helm_errors(), _config(cluster) as cfg, helm_python.Chart.load(chart_dir(chart)) as ch:
        check_release(release)
        options: dict[str, Any] = {
            "namespace": cluster.namespace,
            "timeout": timeout_s,
            "wait": "watcher" if wait else None,
        }
        if upgrade:
            summary: dict[str, Any] = cfg.upgrade(ch, release, values, **options)
        else:
            summary = cfg.install(ch, release, values, create_namespace=create_namespace, **options)
    return summary


def uninstall(cluster: Cluster, release: str, *, wait: bool = False) -> dict[str, Any]:
    with helm_errors(), _config(cluster) as cfg:
        summary: dict[str, Any] = cfg.uninstall(release, wait="watcher" if wait else None)
    return summary


def status(cluster: Cluster, release: str) -> dict[str, Any]:
    with helm_errors(), _config(cluster) as cfg:
        summary: dict[str, Any] = cfg.status(release)
    return summary


@contextmanager
def _config(cluster: Cluster) -> Iterator[Any]:
    import helm_python

    with helm_python.Config(
        namespace=cluster.namespace,
        kubeconfig_path=cluster.kubeconfig,
        kube_context=cluster.context,
    ) as cfg:
        yield cfg
