"""A spec under construction: the native dict an importer builds, with where each part came from.

Importers write native keys with `put(native_path, value, source_path)`; when validation later
fails on a native field, `origin()` maps it back to the key the user wrote, so the error names
their file, line and field, not ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vfleet.fleetspec.source import Document, Path_, dotted


@dataclass
class Draft:
    doc: Document
    docno: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[Path_, Path_] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings and notices, file:line prefixed
    # models merged in from another file: index here -> (that file's draft, index there)
    borrowed: dict[int, tuple[Draft, int]] = field(default_factory=dict)

    def put(self, path: Path_, value: Any, src: Path_ | None = None) -> None:
        node: Any = self.data
        for i, part in enumerate(path[:-1]):
            nxt: Any = {} if isinstance(path[i + 1], str) else []
            if isinstance(part, int):
                while len(node) <= part:
                    node.append({} if isinstance(nxt, dict) else [])
                node = node[part]
            else:
                node = node.setdefault(part, nxt)
        last = path[-1]
        if isinstance(last, int):
            while len(node) <= last:
                node.append(None)
        node[last] = value
        if src is not None:
            self.origins[path] = src

    def origin(self, path: Path_) -> Path_ | None:
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[:-1]
        return None

    def note(self, src: Path_, message: str, warning: bool = False) -> None:
        line = self.doc.line(src, self.docno)
        where = f"{self.doc.file}:{line}" if line else self.doc.file
        at = f" {dotted(src)}:" if src else ""
        self.notes.append(f"{'warning' if warning else 'note'}: {where}:{at} {message}")

    def unknown(self, src: Path_, keys: Any, known: set[str], keep: dict[str, Any] | None) -> None:
        """Warn about keys the importer does not know; keep them for the chart in `keep` (the
        chart takes the format's own keys), or leave them out where there is none."""
        if not isinstance(keys, dict):
            return
        for key in keys:
            if key in known:
                continue
            if keep is None:
                self.note((*src, key), "unknown key, not read by vfleet; left out", warning=True)
            else:
                self.note((*src, key), "unknown key, kept for Kubernetes as given", warning=True)
                keep[key] = keys[key]
