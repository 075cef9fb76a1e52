"""Where the vfleet Helm chart is: the one lookup `vfleet k8s` and the engine rules share.

The chart is package data (setup.py copies `charts/vfleet` into the wheel as `vfleet/chart`),
so an installed vfleet finds it from any directory; an editable install or a clone finds the
source tree's. The engine rules file inside it is read by `vfleet up` too, which is why this
lives below both `kube` and `engines.rulefile`.
"""

from __future__ import annotations

import os
from pathlib import Path

CHART_ENV = "VFLEET_CHART"


class ChartNotFound(Exception):
    """No chart where one was asked for or expected; the message is one line for the user."""


def find_chart(explicit: str | Path | None = None) -> Path:
    """--chart, else $VFLEET_CHART, else the chart shipped inside the package, else the chart of
    the source tree this module is in (an editable install), else ./charts/vfleet."""
    for candidate in (explicit, os.environ.get(CHART_ENV)):
        if candidate:
            path = Path(candidate)
            if not (path / "Chart.yaml").is_file():
                raise ChartNotFound(f"{path}: not a Helm chart (no Chart.yaml)")
            return path
    package = Path(__file__).resolve().parent.parent
    for path in (
        package / "chart",
        *(parent / "charts" / "vfleet" for parent in package.parents),
        Path.cwd() / "charts" / "vfleet",
    ):
        if (path / "Chart.yaml").is_file():
            return path
    raise ChartNotFound(f"the vfleet chart was not found; give --chart DIR or set {CHART_ENV}")
