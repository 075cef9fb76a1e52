"""The golden-file helper: a match passes, a difference or a missing file fails, and update mode
writes the fresh text and still fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from golden import UPDATE_ENV, check_golden


def test_a_matching_file_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    (tmp_path / "g.txt").write_text("same\n", encoding="utf-8")
    check_golden(tmp_path / "g.txt", "same\n")


def test_a_difference_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UPDATE_ENV, raising=False)
    (tmp_path / "g.txt").write_text("old\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=UPDATE_ENV):
        check_golden(tmp_path / "g.txt", "new\n")
    with pytest.raises(AssertionError, match="no golden file"):
        check_golden(tmp_path / "missing.txt", "new\n")


def test_update_mode_writes_then_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPDATE_ENV, "1")
    path = tmp_path / "sub" / "g.txt"
    with pytest.raises(pytest.fail.Exception, match="re-run without it"):
        check_golden(path, "fresh\n")
    assert path.read_text(encoding="utf-8") == "fresh\n"
    monkeypatch.setenv(UPDATE_ENV, "0")  # "0" means off, as an unset variable does
    check_golden(path, "fresh\n")
