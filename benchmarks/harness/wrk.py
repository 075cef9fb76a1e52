"""Running `wrk` with the harness's chat request, and reading its report.

Standard library only, so that benchmarks/router_ab.py runs under any python3. `parse` is pure:
it turns wrk's text report into numbers and is what the callers check errors with.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CHAT_LUA = Path(__file__).with_name("chat.lua")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    req_per_s: float | None = None
    requests: int = 0
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p75/p90/p99 (--latency)

    @property
    def clean(self) -> bool:
        """Every request answered 2xx, no socket error, and wrk printed a rate."""
        failed = self.non_2xx or any(self.socket_errors.values())
        return self.req_per_s is not None and self.requests > 0 and not failed


def parse(text: str) -> WrkResult:
    """The numbers of one wrk report (missing lines leave their defaults)."""
    r = WrkResult()
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        r.req_per_s = float(m.group(1))
    if m := re.search(r"(\d+) requests in ", text):
        r.requests = int(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        r.non_2xx = int(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        kinds = ("connect", "read", "write", "timeout")
        r.socket_errors = dict(zip(kinds, map(int, m.groups()), strict=True))
    for p in ("50", "75", "90", "99"):
        if m := re.search(rf"^\s+{p}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
            r.latency_ms[f"p{p}"] = round(float(m.group(1)) * _UNIT_MS[m.group(2)], 3)
    return r


def command(url: str, seconds: float, conns: int = 64, latency: bool = False) -> list[str]:
    """wrk's argv: one thread (the load core is one core), `conns` keep-alive connections."""
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    if latency:
        argv.append("--latency")
    return [*argv, "-s", str(CHAT_LUA), url]


def run(url: str, seconds: float, pin: list[str], conns: int = 64) -> WrkResult:
    """Run wrk (pinned by the `pin` prefix, e.g. taskset) and parse its report."""
    argv = [*pin, *command(url, seconds, conns, latency=True)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    return parse(out.stdout)
