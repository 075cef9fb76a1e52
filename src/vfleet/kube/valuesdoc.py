"""The values reference of docs/kubernetes.md, generated from the chart's values.schema.json
(descriptions, types) and values.yaml (defaults).

    python -m vfleet.kube.valuesdoc            # rewrite the table in docs/kubernetes.md
    python -m vfleet.kube.valuesdoc --check    # exit 1 when the doc is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from vfleet.kube.render import chart_dir

BEGIN = "<!-- values-reference:begin (python -m vfleet.kube.valuesdoc) -->"
END = "<!-- values-reference:end -->"


def rows(schema: dict[str, Any], defaults: Any, prefix: str = "") -> list[tuple[str, ...]]:
    """(key, type, default, description) for every leaf of the schema, in schema order."""
    out: list[tuple[str, ...]] = []
    for name, prop in (schema.get("properties") or {}).items():
        key = f"{prefix}{name}"
        default = defaults.get(name) if isinstance(defaults, dict) else None
        items = prop.get("items") if isinstance(prop.get("items"), dict) else {}
        if prop.get("properties") and prop.get("type") == "object":
            out += rows(prop, default, f"{key}.")
        elif items.get("properties"):
            out.append((key, "list", _default(default), prop.get("description", "")))
            out += rows(items, None, f"{key}[].")
        else:
            out.append((key, _type(prop), _default(default), prop.get("description", "")))
    return out


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    kind = prop.get("type", "any")
    return " \\| ".join(kind) if isinstance(kind, list) else str(kind)


def _default(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, separators=(", ", ": "))
    return f"`{text}`" if len(text) <= 40 else "(see values.yaml)"


def table(schema: dict[str, Any], defaults: dict[str, Any]) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, text in rows(schema, defaults):
        meaning = text.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {default} | {meaning} |")
    return "\n".join(lines)


def updated(doc: str, new_table: str) -> str:
    """`doc` with the text between the markers replaced by `new_table`."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"the document has no {BEGIN} ... {END} markers")
    return f"{head}{BEGIN}\n{new_table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    """`[--check] [--repo DIR]`: the repository (default: the current directory) whose chart
    and docs/kubernetes.md are compared or updated; a developer's tool, run from a clone."""
    root = Path(argv[argv.index("--repo") + 1]) if "--repo" in argv else Path.cwd()
    chart = chart_dir(root / "charts" / "vfleet")
    doc_path = root / "docs" / "kubernetes.md"
    schema = json.loads((chart / "values.schema.json").read_text(encoding="utf-8"))
    defaults = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    doc = doc_path.read_text(encoding="utf-8")
    new = updated(doc, table(schema, defaults))
    if "--check" in argv:
        if new != doc:
            print(
                f"{doc_path} is out of date: run python -m vfleet.kube.valuesdoc", file=sys.stderr
            )
            return 1
        return 0
    doc_path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
