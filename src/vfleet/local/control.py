"""`vfleet status`, `logs` and `down`: commands on a running fleet, found by its run directory
(the one fleet there is, `--fleet NAME` or `--run-dir`; vfleet.local.rundir)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from vfleet.local import display
from vfleet.local.elastic import engine_load
from vfleet.local.rundir import NoFleet, RunDir, explicit_run_dir, find, known_fleets, pid_alive

RUN_DIR = click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where state and logs live (env VFLEET_RUN_DIR; default: one directory per fleet "
    "under ~/.local/state/vfleet/fleets, env VFLEET_STATE_DIR).",
)
FLEET = click.option(
    "--fleet",
    "fleet_name",
    default=None,
    help="The fleet to use when several run on this machine (their names: vfleet status).",
)


WATCH_S = 2.0  # seconds between refreshes of `status --watch` when no interval is given


def _find(fleet_name: str | None, run_dir: str | None) -> RunDir:
    try:
        return find(fleet_name, run_dir)
    except NoFleet as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@FLEET
@RUN_DIR
@click.option("--timeout", type=float, default=60.0, show_default=True)
def down(fleet_name: str | None, run_dir: str | None, timeout: float) -> None:
    """Stop a fleet started by `vfleet up`: router first, then engines. Returns once every
    process of it is gone."""
    run = _find(fleet_name, run_dir)
    state = run.read_state()
    if not state:
        raise click.ClickException(f"no fleet found in {run.path}")
    name = state.get("fleet")
    router_state = state.get("router") or {}
    engines = [e for e in state.get("engines", []) if pid_alive(e.get("pid"))]
    pid: Any = state.get("supervisor_pid")
    if not (pid_alive(pid) and state.get("phase") not in ("stopped", "failed")):
        leftovers = _kill_leftovers(state)
        extra = f"; killed {len(leftovers)} leftover process(es)" if leftovers else ""
        click.echo(f"vfleet: fleet {name!r} is not running ({run.path}){extra}")
        return
    what = [f"router {router_state.get('url', '')}".rstrip()]
    what += (
        [f"{len(engines)} engine(s) ({', '.join(e['key'] for e in engines)})"] if engines else []
    )
    click.echo(f"vfleet: stopping fleet {name!r} (supervisor pid {pid}): {'; '.join(what)}")
    os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    # _exists, not pid_alive: a supervisor whose parent has not reaped it yet is a zombie
    while _exists(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    forced = _exists(int(pid))
    if forced:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    leftovers = _kill_leftovers(state)
    if forced or leftovers:
        click.echo(
            f"vfleet: fleet {name!r} did not stop within {timeout:g}s; killed "
            f"{len(leftovers) + int(forced)} process(es)",
            err=True,
        )
    click.echo(f"vfleet: fleet {name!r} stopped")


def _kill_leftovers(state: dict[str, Any]) -> list[int]:
    """SIGKILL whatever of a fleet outlived its supervisor, and wait (bounded) until it is
    gone: `down` returns when the fleet's ports and GPUs are free."""
    pids: list[Any] = [(state.get("router") or {}).get("pid")]
    pids += [e.get("pid") for e in state.get("engines", [])]
    alive = [int(p) for p in pids if pid_alive(p)]
    for p in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while any(_exists(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _exists(pid: int) -> bool:
    """Alive and not a zombie (a killed child of another process may linger as one)."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@click.command()
@FLEET
@RUN_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@click.option(
    "--watch",
    "watch_s",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=WATCH_S,
    default=None,
    help=f"Keep the table on screen, refreshed in place every N seconds ({WATCH_S:g} when "
    "no N is given), until Ctrl-C.",
)
def status(
    fleet_name: str | None, run_dir: str | None, as_json: bool, watch_s: float | None
) -> None:
    """Models, replicas, GPU, port, health and load of the running fleet. With --json and no
    --fleet: every fleet on this machine ({"fleets": [...]})."""
    if watch_s is not None and as_json:
        raise click.ClickException("--watch shows a live table; --json prints the state once")
    if watch_s is not None:
        _watch(_find(fleet_name, run_dir), watch_s)
        return
    if as_json and fleet_name is None and explicit_run_dir(run_dir) is None:
        fleets = [_with_load(rd) for _, rd in known_fleets()]
        click.echo(json.dumps({"fleets": [f for f in fleets if f]}, indent=1))
        return
    run = _find(fleet_name, run_dir)
    state = _with_load(run)
    if not state:
        raise click.ClickException(f"no fleet found in {run.path}; start one with vfleet up")
    if as_json:
        click.echo(json.dumps(state, indent=1))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: do not squeeze the table to 80 columns
    load = {e["key"]: (e["running"], e["waiting"]) for e in state["engines"] if e["running"] >= 0}
    console.print(display.engines_table(state, load))
    if display.has_autoscaling(state):
        console.print(display.models_table(state))


def _tables(state: dict[str, Any] | None, run: RunDir) -> RenderableType:
    """What `status` prints for a fleet (or a line saying it is gone)."""
    if not state:
        return Text(f"no fleet in {run.path} (stopped?); still watching, Ctrl-C stops")
    load = {e["key"]: (e["running"], e["waiting"]) for e in state["engines"] if e["running"] >= 0}
    parts: list[RenderableType] = [display.engines_table(state, load)]
    if display.has_autoscaling(state):
        parts.append(display.models_table(state))
    return Group(*parts)


def _watch(run: RunDir, every_s: float) -> None:
    """The status table, redrawn in place every `every_s` until Ctrl-C (or SIGTERM). Each
    refresh is bounded: the engines' /metrics reads have their own timeouts."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    stop = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends it as ^C
    try:
        with Live(_tables(_with_load(run), run), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(every_s)
                live.update(_tables(_with_load(run), run), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, stop)


def _with_load(run: RunDir) -> dict[str, Any] | None:
    """A fleet's state with its run dir and each healthy engine's running/waiting requests."""
    state = run.read_state()
    if not state:
        return None
    if not pid_alive(state.get("supervisor_pid")) and state.get("phase") not in ("stopped",):
        state["phase"] = "supervisor gone"
    state["run_dir"] = str(run.path)
    load = asyncio.run(_loads(state))
    for e in state["engines"]:
        e["running"], e["waiting"] = load.get(e["key"], (-1, -1))
    return state


async def _loads(state: dict[str, Any]) -> dict[str, tuple[int, int]]:
    async def one(e: dict[str, Any]) -> tuple[str, tuple[int, int]]:
        load = await engine_load(e["url"])
        return e["key"], (-1, -1) if load is None else (load.running, load.waiting)

    live = [e for e in state.get("engines", []) if e.get("state") == "healthy"]
    return dict(await asyncio.gather(*(one(e) for e in live)))


@click.command()
@click.argument("name")
@FLEET
@RUN_DIR
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
def logs(name: str, fleet_name: str | None, run_dir: str | None, lines: int, follow: bool) -> None:
    """Print the log of an engine (chat-0), every replica of a model (chat), the router or the
    supervisor (this run's; the previous run's are the .log.1 files next to them)."""
    run = _find(fleet_name, run_dir)
    state = run.read_state() or {}
    keys = [e["key"] for e in state.get("engines", [])]
    if name in keys or name in ("router", "supervisor"):
        files = [run.log(name)]
    else:
        files = [run.log(e["key"]) for e in state.get("engines", []) if e["model"] == name]
    files = [f for f in files if f.exists()]
    if not files:
        known = ", ".join([*keys, "router"]) or "none"
        raise click.ClickException(f"no log for {name!r} in {run.path} (known: {known})")
    prefix = len(files) > 1
    offsets = {}
    for f in files:
        text = f.read_text(errors="replace").splitlines()[-lines:]
        for row in text:
            click.echo(f"{f.stem} | {row}" if prefix else row)
        offsets[f] = f.stat().st_size
    while follow:
        time.sleep(0.2)
        for f in files:
            size = f.stat().st_size
            if size > offsets[f]:
                with f.open("rb") as fh:
                    fh.seek(offsets[f])
                    chunk = fh.read().decode(errors="replace")
                offsets[f] = size
                for row in chunk.splitlines():
                    click.echo(f"{f.stem} | {row}" if prefix else row)
