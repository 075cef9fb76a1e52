"""Reading a spec file: YAML documents plus the line of every key, so errors can point at it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class SpecError(ValueError):
    """A spec problem a user can fix: `FILE:LINE: FIELD: what is wrong`."""

    def __init__(self, file: str, message: str, line: int | None = None, at: str = "") -> None:
        self.file, self.line, self.at, self.message = file, line, at, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {at + ': ' if at else ''}{message}")


@dataclass(frozen=True)
class Document:
    """One parsed file: its YAML documents and where each key sits."""

    file: str
    docs: list[Any]
    lines: dict[Path_, int] = field(default_factory=dict)  # (doc, *path) -> 1-based line
    text: str = ""
    renested: bool = False  # TKE values whose lost indentation vfleet restored

    def line(self, path: Path_, doc: int = 0) -> int | None:
        """The line of `path`, or of its nearest ancestor that is in the file."""
        full = (doc, *path)
        while full:
            if full in self.lines:
                return self.lines[full]
            full = full[:-1]
        return None

    def error(self, path: Path_, message: str, doc: int = 0) -> SpecError:
        return SpecError(self.file, message, self.line(path, doc), dotted(path))


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_text(file: str | Path) -> str:
    name = str(file)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(name, "no such file") from None
    except IsADirectoryError:
        raise SpecError(name, "is a directory, not a spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(name, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return text


def read(file: str | Path) -> Document:
    return parse(read_text(file), str(file))


def parse(text: str, name: str) -> Document:
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        docs = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or "invalid YAML"
        raise SpecError(name, f"invalid YAML: {what}", line) from None
    except yaml.YAMLError as exc:
        raise SpecError(name, f"invalid YAML: {exc}") from None
    keep = [(n, d) for n, d in zip(nodes, docs, strict=True) if n is not None]
    lines: dict[Path_, int] = {}
    for i, (node, _) in enumerate(keep):
        _walk(node, (i,), lines, name)
    return Document(name, [d for _, d in keep], lines, text)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], name: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                sub = (*path, key.value)
                line = key.start_mark.line + 1
                if sub in lines:
                    # YAML loaders keep the last one silently; a typo'd copy would win.
                    raise SpecError(
                        name,
                        f"duplicate key {key.value!r} (first on line {lines[sub]})",
                        line,
                        dotted(sub[1:]),
                    )
                lines[sub] = line
                _walk(value, sub, lines, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, name)
