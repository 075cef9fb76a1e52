"""Helpers for the download tests: run `vfleet download` as a real process against local servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Never let a test reach a real hub, pick up a developer's token or go through a proxy.
_DROP = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "AWS_PROFILE",
    "MODELSCOPE_API_TOKEN",
    "MODELSCOPE_ENDPOINT",
    "MODELSCOPE_DOMAIN",
    "JOB_COMPLETION_INDEX",
    "JOB_COMPLETION_TOTAL",
)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith("AWS_")}
    env.update(
        HF_HOME=str(home / "hf"),
        MODELSCOPE_CACHE=str(home / "ms"),
        HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    # The click command itself; `vfleet download` (cli.py) registers the same object.
    return [sys.executable, "-m", "vfleet.download", *args]


@dataclass
class Run:
    code: int
    events: list[dict[str, object]]
    stderr: str

    def last(self, event: str) -> dict[str, object]:
        return [e for e in self.events if e["event"] == event][-1]


def run(*args: str, env: dict[str, str], timeout_s: float = 50.0) -> Run:
    proc = subprocess.run(
        command(*args, "--json"),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return Run(proc.returncode, events, proc.stderr)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root except vfleet's own bookkeeping, with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".vfleet/")
    }


def same_files(a: Path, b: Path, sample: bool = False) -> bool:
    """Byte-for-byte equality of two trees, compared by streaming (files may be GBs).

    `sample`: files over 64 MiB are compared by size and at the offsets where `make_files`
    writes its non-zero bytes (start, middle, end), for tests that already verified a digest."""
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = sorted(
        p.relative_to(b).as_posix()
        for p in b.rglob("*")
        if p.is_file() and not p.relative_to(b).as_posix().startswith(".vfleet/")
    )
    if fa != fb:
        return False
    for rel in fa:
        size = (a / rel).stat().st_size
        if size != (b / rel).stat().st_size:
            return False
        with (a / rel).open("rb") as x, (b / rel).open("rb") as y:
            if sample and size > 64 * 2**20:
                for off in (0, size // 2, size - 64):
                    x.seek(off)
                    y.seek(off)
                    if x.read(64) != y.read(64):
                        return False
                continue
            while True:
                bx, by = x.read(2**22), y.read(2**22)
                if bx != by:
                    return False
                if not bx:
                    break
    return True
