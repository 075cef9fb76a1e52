"""What the benchmarks read from /proc: CPU time and RSS of a process tree, busy and steal
time per core, and how much CPU the rest of the machine used meanwhile.

Standard library only (benchmarks/router_ab.py runs under any python3). Linux only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def pin(core: int) -> list[str]:
    """A `taskset` prefix that pins a command to `core`, or nothing on a one-core machine."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ")"
    return raw.rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 once it is gone)."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / _TICK if f else 0.0


def all_cpu() -> dict[int, float]:
    """{pid: CPU seconds} of every user-space process (kernel threads are children of pid 2)."""
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f and f[1] != "2" and entry.name != "2":
                out[int(entry.name)] = (int(f[11]) + int(f[12])) / _TICK
    return out


def tree(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (f := _stat_fields(int(entry.name))):
            kids.setdefault(int(f[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, ()))
    return found


def rss_bytes(pids: list[int]) -> int:
    """Resident memory summed over `pids` (pages shared between them count once per process)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):  # the process ended
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


@dataclass
class TreeWatch:
    """CPU seconds and peak RSS of a process tree (a router and its workers).

    A process of the tree that exits keeps the CPU time last seen for it, so a worker that is
    replaced mid-phase does not make the total go backwards."""

    root: int
    peak_rss: int = 0
    _last: dict[int, float] = field(default_factory=dict)

    def cpu_s(self) -> float:
        for pid in tree(self.root):
            if (t := cpu_s(pid)) > 0:
                self._last[pid] = t
        return sum(self._last.values())

    def sample_rss(self) -> int:
        rss = rss_bytes(tree(self.root))
        self.peak_rss = max(self.peak_rss, rss)
        return rss


def core_ticks() -> dict[str, list[int]]:
    """Per-core counters of /proc/stat: user nice system idle iowait irq softirq steal."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            out[name] = [int(v) for v in vals[:8]]
    return out


def core_usage(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, dict]:
    """{core: {"busy_pct", "steal_pct"}} between two `core_ticks()` readings."""
    res = {}
    for core, vals in after.items():
        d = [b - a for a, b in zip(before.get(core, vals), vals, strict=True)]
        total = sum(d) or 1
        idle = d[3] + d[4]
        res[core] = {
            "busy_pct": round(100.0 * (total - idle - d[7]) / total, 1),
            "steal_pct": round(100.0 * d[7] / total, 1),
        }
    return res


def foreign_cpu_s(before: dict[int, float], after: dict[int, float], ours: set[int]) -> float:
    """CPU seconds used between two `all_cpu()` readings by processes outside `ours`."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items() if pid not in ours)
