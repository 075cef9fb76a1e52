"""`vfleet bench` as the bench tests run it: a bounded subprocess, its options written as
keywords (`input_len=32` is `--input-len 32`), so a test's command line reads as its settings."""

from __future__ import annotations

import subprocess

from conftest import run_vfleet

TIMEOUT_S = 60.0  # bound on one bench command


def flags(**options: object) -> list[str]:
    """`--name value` per keyword, underscores as dashes, in the order given; a list or tuple
    repeats the flag once per item (`metrics_url=[a, b]`)."""
    out: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        for item in value if isinstance(value, list | tuple) else [value]:
            out += [flag, str(item)]
    return out


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`vfleet bench ARGS` to its end, output captured."""
    return run_vfleet("bench", *args, timeout_s=TIMEOUT_S)


def ok(*args: str) -> str:
    """`vfleet bench ARGS`, which must succeed; its standard output."""
    res = bench(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout
