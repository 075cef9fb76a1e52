"""Golden-file comparison shared by every golden test, with one way to regenerate them.

A golden test renders its output fresh and compares it with the file under tests/data. With
`VFLEET_UPDATE_GOLDEN=1` in the environment it writes the fresh output to the file instead and
then fails, so that an update run can never be mistaken for a passing run: read the diff, then
re-run without the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

UPDATE_ENV = "VFLEET_UPDATE_GOLDEN"


def updating() -> bool:
    return os.environ.get(UPDATE_ENV, "") not in ("", "0")


def check_golden(path: Path, fresh: str) -> None:
    """Fail unless `fresh` equals the text of `path`; in update mode write it, then fail."""
    if updating():
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text(encoding="utf-8") if path.exists() else None
        path.write_text(fresh, encoding="utf-8")
        what = "unchanged" if old == fresh else "written"
        pytest.fail(f"{path} {what} because {UPDATE_ENV} is set; review it, re-run without it")
    assert path.exists(), f"no golden file {path}; write it with {UPDATE_ENV}=1 and review it"
    assert fresh == path.read_text(encoding="utf-8"), (
        f"{path} differs from a fresh render; if the change is intended, "
        f"re-run with {UPDATE_ENV}=1 and review the diff"
    )
