"""The chart ships inside the package: an installed vfleet finds it from any directory.

CI's first pass runs the installed (non-editable) package, whose chart must be the copy inside
the package; an editable install or PYTHONPATH=src finds the source tree's chart instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import vfleet
from vfleet.engines.chartdir import ChartNotFound, find_chart

REPO = Path(__file__).resolve().parent.parent
INSTALLED = "site-packages" in Path(vfleet.__file__).parts


def _env_without_chart() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "VFLEET_CHART"}


@pytest.mark.skipif(not INSTALLED, reason="needs vfleet installed as a package")
def test_installed_package_uses_its_own_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFLEET_CHART", raising=False)
    chart = find_chart()
    assert chart == Path(vfleet.__file__).resolve().parent / "chart"
    assert (chart / "files" / "engine-rules.yaml").is_file()
    shipped = sorted(p.relative_to(chart) for p in chart.rglob("*") if p.is_file())
    source = REPO / "charts" / "vfleet"
    if source.is_dir():  # a clone: the package holds the same files as the source chart
        assert shipped == sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())


@pytest.mark.skipif(not INSTALLED, reason="needs vfleet installed as a package")
@pytest.mark.timeout(120)
def test_render_and_plan_work_outside_a_clone(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text((REPO / "examples" / "quickstart.yaml").read_text())
    vfleet_bin = Path(sys.executable).parent / "vfleet"
    render = subprocess.run(
        [str(vfleet_bin), "k8s", "render", "-f", str(fleet)],
        cwd=tmp_path,
        env=_env_without_chart(),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert render.returncode == 0, render.stderr
    assert "kind: Deployment" in render.stdout


def test_explicit_chart_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ChartNotFound, match="not a Helm chart"):
        find_chart(tmp_path)


def test_env_names_the_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Chart.yaml").write_text("name: x\n")
    monkeypatch.setenv("VFLEET_CHART", str(tmp_path))
    assert find_chart() == tmp_path
