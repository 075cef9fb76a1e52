"""docs/kubernetes.md's values reference is what values.schema.json and values.yaml say, and
the schema describes every key values.yaml sets."""

from __future__ import annotations

import json
from typing import Any

import yaml

from test_chart_render import CHART, ROOT
from vfleet.kube.valuesdoc import BEGIN, END, main, rows, table, updated


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_values_reference_is_current() -> None:
    doc = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    assert updated(doc, table(_schema(), _defaults())) == doc, "run python -m vfleet.kube.valuesdoc"
    assert main(["--check", "--repo", str(ROOT)]) == 0


def test_every_default_is_in_the_schema_with_a_description() -> None:
    documented = {r[0] for r in rows(_schema(), _defaults())}

    def walk(node: Any, prefix: str) -> list[str]:
        if not isinstance(node, dict) or not node or prefix.endswith(("labels", "Labels")):
            return [prefix.rstrip(".")]
        out = []
        for key, value in node.items():
            path = f"{prefix}{key}"
            out += [path] if path in documented else walk(value, f"{path}.")
        return out

    missing = [k for k in walk(_defaults(), "") if k not in documented]
    assert not missing, missing
    assert all(
        r[3] for r in rows(_schema(), _defaults()) if "[]" not in r[0] or r[0].count(".") < 4
    )


def test_updated_needs_the_markers() -> None:
    assert updated(f"a\n{BEGIN}\nold\n{END}\nb", "new") == f"a\n{BEGIN}\nnew\n{END}\nb"
    try:
        updated("no markers", "new")
    except ValueError as exc:
        assert "markers" in str(exc)
    else:
        raise AssertionError("no error")
