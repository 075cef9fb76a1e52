"""Finding and reading the engine rules file of the chart vfleet uses (the I/O half of
`vfleet.engines.rules`). Commands call `load_rules` once and pass the rules on, so the plan,
the packer and the command lines stay pure. The file is found inside the chart `vfleet k8s`
renders (`vfleet.engines.chartdir`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from vfleet.engines.chartdir import ChartNotFound, find_chart
from vfleet.engines.rules import EngineRules, RulesError, parse

RULES_FILE = Path("files") / "engine-rules.yaml"


def rules_path(chart: str | Path | None = None) -> Path:
    """The rules file of the chart vfleet uses (`vfleet.engines.chartdir.find_chart`)."""
    try:
        return find_chart(chart) / RULES_FILE
    except ChartNotFound as exc:
        raise RulesError(str(exc)) from None


def load_rules(chart: str | Path | None = None) -> EngineRules:
    """The rules of the chart vfleet uses (see `rules_path`)."""
    path = rules_path(chart)
    try:
        stat = path.stat()
    except OSError as exc:
        raise RulesError(f"{path}: {exc.strerror or exc}") from None
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> EngineRules:
    # mtime and size are part of the key: an edited file is read again.
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    return parse(raw, path)
