"""How a fleet looks in a terminal: start-up progress, `vfleet status` tables, next commands."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

STYLE = {
    "healthy": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "crashed": "red",
    "unhealthy": "red",
    "stopped": "dim",
    "pending": "dim",
    "draining": "yellow",
    "idle": "dim",
}


def _age(since: float | None) -> str:
    if not since:
        return "-"
    s = int(time.time() - since)
    return f"{s}s" if s < 120 else (f"{s // 60}m" if s < 7200 else f"{s // 3600}h")


def engines_table(state: dict[str, Any], load: dict[str, tuple[int, int]] | None = None) -> Table:
    title = f"fleet {state.get('fleet')} - {state.get('phase')}"
    router = state.get("router") or {}
    if router.get("url"):
        title += f" - router {router['url']}/v1"
    table = Table(title=title, title_justify="left")
    for col in ("ENGINE", "MODEL", "SERVED AS", "GPU", "PORT", "PID", "STATE", "FOR", "RESTARTS"):
        table.add_column(col)
    if load is not None:
        table.add_column("RUNNING", justify="right")
        table.add_column("WAITING", justify="right")
    for e in state.get("engines", []):
        st = e.get("state", "?")
        if st == "idle":
            continue  # a standby slot of an autoscaled model: the models table counts it
        row = [
            e["key"],
            e["model"],
            ", ".join(e.get("served", [])),
            e.get("gpu", "-"),
            str(e.get("port", "")),
            str(e.get("pid") or "-"),
            f"[{STYLE.get(st, 'white')}]{st}[/]",
            _age(e.get("since")),
            str(e.get("restarts", 0)),
        ]
        if load is not None:
            running, waiting = load.get(e["key"], (-1, -1))
            row += [str(running) if running >= 0 else "-", str(waiting) if waiting >= 0 else "-"]
        table.add_row(*row)
    return table


def line(engine: dict[str, Any]) -> str:
    """One plain line per state change, for logs and non-terminals."""
    return (
        f"{engine['key']:<24} {engine['state']:<10} gpu {engine.get('gpu', '-'):<10} "
        f"port {engine.get('port')}"
    )


def has_autoscaling(state: dict[str, Any]) -> bool:
    return any(m.get("autoscaling") for m in (state.get("models") or {}).values())


def models_table(state: dict[str, Any]) -> Table:
    """Per model: replicas wanted by the autoscaler vs running and ready, and its last word."""
    table = Table(title="models", title_justify="left")
    for col in ("MODEL", "SCALE", "DESIRED", "CURRENT", "READY", "LAST DECISION", "CHANGED"):
        table.add_column(col)
    for name, m in (state.get("models") or {}).items():
        auto = m.get("autoscaling")
        scale = "fixed"
        if auto:
            top = auto.get("max") or "-"
            scale = f"{auto['min']}..{top} {auto['metric']} {auto['target']:g}"
        changed = m.get("changed")
        table.add_row(
            name,
            scale,
            str(m.get("desired", "-")),
            str(m.get("current", "-")),
            str(m.get("ready", "-")),
            m.get("decision") or "-",
            f"{_age(changed)} ago" if changed else "-",
        )
    return table


def self_command() -> str:
    """How to run this same vfleet again from another terminal: `vfleet` when that is what
    PATH finds, else the full path of this executable (a venv not activated)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "vfleet":
        found = shutil.which("vfleet")
        if found and Path(found).resolve() == argv0.resolve():
            return "vfleet"
        return str(argv0.resolve())
    return f"{sys.executable} -m vfleet"


def next_commands(flag: str, first: str, logs: Path) -> str:
    """The commands to use next, as they run from another terminal (the real executable)."""
    exe = self_command()
    return (
        f"  {exe} status{flag}\n"
        f"  {exe} logs {first}{flag}     (all logs: {logs})\n"
        f"  {exe} down{flag}"
    )
