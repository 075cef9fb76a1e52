"""`vfleet k8s package`: the chart as a Helm package, vfleet-VERSION.tgz, whose `version` and
`appVersion` are this vfleet's version, accepted by the Helm SDK's strict lint and rendering, and
whose objects pass kubernetes-validate's strict schemas. The chart directory's Chart.yaml carries
the same number (`helm install charts/vfleet` from a clone reads it, and the router image tag
defaults to it)."""

from __future__ import annotations

import tarfile
import tomllib
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml

import vfleet
from conftest import run_vfleet
from test_chart_render import CHART, NAMESPACE, RAW, RELEASE
from test_chart_validate import VERSIONS, _builtin, _errors, _validator
from vfleet.kube import render as helm

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_one_version_number() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert vfleet.__version__ == PYPROJECT_VERSION
    assert chart["version"] == chart["appVersion"] == PYPROJECT_VERSION


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("package") / "charts"
    done = run_vfleet("k8s", "package", "--out", str(out), timeout_s=60)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path == out / f"vfleet-{vfleet.__version__}.tgz"
    return path


def test_archive_holds_the_chart_and_its_version(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        names = {m.name for m in tar if m.isfile()}
    source = {f"vfleet/{p.relative_to(CHART).as_posix()}" for p in CHART.rglob("*") if p.is_file()}
    assert names == source
    with helm_python.Chart.load(archive) as chart:
        assert chart.metadata["version"] == chart.metadata["appVersion"] == vfleet.__version__


@pytest.mark.parametrize("name", sorted(RAW))
def test_archive_lints_strict_and_renders_valid_objects(archive: Path, name: str) -> None:
    values = yaml.safe_load(RAW[name].read_text())
    for kube in ("v1.29.0", f"v{VERSIONS[-1]}"):
        report = helm_python.lint(
            archive, values, strict=True, namespace=NAMESPACE, kube_version=kube
        )
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, problems
    with helm_python.Chart.load(archive) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = helm.from_files(files).objects
    assert any(o["kind"] == "Deployment" for o in objects)
    for obj in filter(_builtin, objects):
        validator = _validator(VERSIONS[-1], obj["kind"], obj["apiVersion"])
        assert validator is not None
        assert not _errors(validator, obj), (obj["kind"], obj["metadata"]["name"])
    router = next(o for o in objects if o["metadata"]["name"] == f"{RELEASE}-deployment-router")
    image = router["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f":{vfleet.__version__}")


def test_archive_installs_where_the_directory_does(archive: Path, tmp_path: Path) -> None:
    """Unpacked, the package renders what the chart directory renders."""
    helm_python.expand(tmp_path, archive)
    values = yaml.safe_load(RAW["features-values"].read_text())
    unpacked = helm.render(values, release=RELEASE, namespace=NAMESPACE, chart=tmp_path / "vfleet")
    source = helm.render(values, release=RELEASE, namespace=NAMESPACE, chart=CHART)
    assert unpacked.objects == source.objects
    kubernetes_validate.validate(unpacked.objects[0], VERSIONS[-1], strict=True)


def test_package_stamps_the_running_version(tmp_path: Path) -> None:
    """A copy of the chart with another number is packaged as this vfleet's version."""
    copy = tmp_path / "chart"
    with helm_python.Chart.load(CHART) as chart:
        chart.save_dir(tmp_path / "saved")
    (tmp_path / "saved" / "vfleet").rename(copy)
    text = (copy / "Chart.yaml").read_text()
    (copy / "Chart.yaml").write_text(
        text.replace(f'appVersion: "{PYPROJECT_VERSION}"', "appVersion: 9.9.9")
    )
    path = helm.package(tmp_path / "out", "1.2.3", chart=copy)
    assert path.name == "vfleet-1.2.3.tgz"
    with helm_python.Chart.load(path) as chart:
        assert (chart.metadata["version"], chart.metadata["appVersion"]) == ("1.2.3", "1.2.3")


def test_package_problems_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_vfleet("k8s", "package", "--out", str(blocker / "sub"), timeout_s=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "cannot write" in done.stderr, done.stderr
    done = run_vfleet("k8s", "package", "--chart", str(tmp_path), timeout_s=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "not a Helm chart" in done.stderr, done.stderr


def test_broken_chart_fails_lint(tmp_path: Path) -> None:
    """The lint the package command runs does refuse a bad chart."""
    copy = tmp_path / "chart"
    with helm_python.Chart.load(CHART) as chart:
        chart.save_dir(tmp_path / "saved")
    (tmp_path / "saved" / "vfleet").rename(copy)
    (copy / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.deeper }}\n")
    with pytest.raises(helm.KubeError, match="lint"):
        helm.package(tmp_path / "out", "0.0.1", chart=copy)
