"""`vfleet up`: a thin command over the supervisor; each fleet gets its own run directory
(vfleet.local.rundir). `status`, `logs` and `down` are in vfleet.local.control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live

from vfleet.download.errors import DownloadError
from vfleet.engines.router import router_options
from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.caveats import as_warning, caveats, documents
from vfleet.fleetspec.importers.common import slug
from vfleet.fleetspec.load import load, missing_local_files
from vfleet.fleetspec.models import Fleet
from vfleet.fleetspec.source import SpecError
from vfleet.local import display
from vfleet.local.control import RUN_DIR
from vfleet.local.dryrun import plan_json
from vfleet.local.gpus import detect_gpus, free_ports, parse_gpus, port_free, vllm_version
from vfleet.local.keys import Keys, api_keys
from vfleet.local.packer import PackError
from vfleet.local.plan import Options, Plan, PlanError, build, needs_download, ports_needed
from vfleet.local.rundir import (
    RunDir,
    explicit_run_dir,
    fleet_run_dir,
    known_fleets,
)
from vfleet.local.supervisor import (
    ROUTER_DRAIN_S,
    RouterSettings,
    StartError,
    Supervisor,
    demand_names,
)
from vfleet.local.weights import on_disk


@click.command()
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    required=True,
    help="Fleet spec or values file (repeat to add files, e.g. a PV next to values).",
)
@click.option(
    "--engine",
    type=click.Choice(["sim", "vllm"]),
    default=None,
    help="Run every model on this engine (sim needs no GPU).",
)
@click.option("--host", default=None, help="Router address (default from the spec, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Router port (default from the spec, 8000).",
)
@click.option("--gpus", default=None, help="GPU ids to use, e.g. 0,1 (default: all found).")
@click.option(
    "--pvc-root",
    default=None,
    help="Directory standing in for PVCs: models from pvc://CLAIM/PATH are read "
    "from PVC_ROOT/CLAIM/PATH.",
)
@click.option(
    "--cache-dir",
    default=None,
    help="Where S3, git and URL-list weights are downloaded (env VFLEET_CACHE_DIR; "
    "default ~/.cache/vfleet/models).",
)
@click.option("--detach", is_flag=True, help="Return once the fleet is up; it keeps running.")
@click.option(
    "--grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds engines get between SIGTERM and SIGKILL.",
)
@click.option(
    "--max-replicas-cap",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Most replicas an autoscaled model gets here (an unbounded maxReplicas, or a larger one).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds a scale-down waits for an engine's requests to finish before stopping it.",
)
@click.option(
    "--api-key-file",
    "key_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Client API keys, one per line, added to the spec's (env VFLEET_API_KEYS replaces both).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (each engine's GPUs, share, port, environment and command) as JSON "
    "and start nothing.",
)
@RUN_DIR
@click.option("--supervise", is_flag=True, hidden=True)  # the detached supervisor itself
def up(
    files: tuple[str, ...],
    engine: str | None,
    host: str | None,
    port: int | None,
    gpus: str | None,
    pvc_root: str | None,
    cache_dir: str | None,
    detach: bool,
    grace: float,
    max_replicas_cap: int,
    drain_timeout: float,
    key_file: str | None,
    dry_run: bool,
    run_dir: str | None,
    supervise: bool,
) -> None:
    """Start a fleet on this machine: engines, then the router in front of them. Models with
    autoscaling start at their minReplicas and scale with load (to zero and back)."""
    fleet, plan, router, run = _prepare(
        files,
        engine,
        host,
        port,
        gpus,
        pvc_root,
        cache_dir,
        max_replicas_cap,
        run_dir,
        key_file,
        dry_run,
    )
    if dry_run:
        click.echo(json.dumps(plan_json(fleet, plan, router.host, router.port), indent=1))
        return
    if detach:
        argv = [a for a in sys.argv[1:] if a != "--detach"]
        # the same directory for the supervisor whatever its environment says
        argv += ["--run-dir", str(run.path), "--supervise"]
        _detach(run, [sys.executable, "-m", "vfleet", *argv], plan, _next_flag(run, run_dir))
        return
    if not supervise:
        run.prepare()
        run.rotate_logs()
        click.echo(
            # (not " starting ": that word marks an engine's spawn in the state lines)
            f"vfleet: launching fleet {fleet.name!r}: {len(plan.engines)} engine(s) and the "
            f"router; logs in {run.logs}",
            err=True,
        )
    sup = Supervisor(
        fleet,
        plan,
        run,
        router,
        [str(Path(f).resolve()) for f in files],
        grace_s=grace,
        drain_timeout_s=drain_timeout,
    )
    _foreground(
        sup, interactive=not supervise and sys.stdout.isatty(), flag=_next_flag(run, run_dir)
    )


def _next_flag(run: RunDir, run_dir: str | None) -> str:
    """What `status/logs/down` need to find this fleet: nothing when it is the only one
    running."""
    if explicit_run_dir(run_dir) is not None:
        return f" --run-dir {run.path}"
    others = [n for n, rd in known_fleets() if n != run.path.name and rd.owner()]
    return f" --fleet {run.path.name}" if others else ""


def _prepare(
    files: tuple[str, ...],
    engine: str | None,
    host: str | None,
    port: int | None,
    gpus: str | None,
    pvc_root: str | None,
    cache_dir: str | None,
    max_replicas_cap: int,
    run_dir: str | None,
    key_file: str | None,
    dry_run: bool = False,
) -> tuple[Fleet, Plan, RouterSettings, RunDir]:
    """Everything that can fail before a process starts: spec, GPUs, ports, run dir. A dry
    run plans without vLLM installed, downloads nothing and does not mind a running fleet."""
    try:
        loaded = load(files)
        for note in loaded.notes:
            click.echo(as_warning(note), err=True)
        for caveat in caveats(documents(files), loaded.fleet, "", loaded.notes):
            if caveat.local:  # what matters on this machine (the chart's own: k8s render)
                click.echo(str(caveat), err=True)
        for loc, message in missing_local_files(loaded.fleet)[:1]:
            raise loaded.error_at(loc, message)  # the spec's file, line and field
        keys = api_keys(loaded.fleet, key_file)
        for line in keys.said:
            click.echo(f"vfleet: {line}", err=True)
        fleet = loaded.fleet
        explicit = explicit_run_dir(run_dir)
        run = RunDir(explicit) if explicit is not None else fleet_run_dir(fleet.name)
        owner = None if dry_run else run.owner()
        if owner:
            flag = f"--run-dir {run.path}" if explicit is not None else f"--fleet {fleet.name}"
            raise click.ClickException(
                f"a fleet is already running from {run.path} (fleet {fleet.name!r}, supervisor "
                f"pid {owner}); stop it with `vfleet down {flag}`, or give this one another "
                f"{'--run-dir' if explicit is not None else 'name'}"
            )
        rhost = host or fleet.router.host
        rport = fleet.router.port if port is None else port
        busy = None if dry_run else port_free(rhost, rport)
        if busy:
            raise click.ClickException(f"router port {rhost}:{rport} is not available: {busy}")
        uses_vllm = any((engine or fleet.engine_of(m)) == "vllm" for m in fleet.models)
        exe = shutil.which("vllm") if uses_vllm else None
        if uses_vllm and not exe and not dry_run:
            raise click.ClickException(
                "vLLM is not installed here (no `vllm` on PATH): pip install vllm, "
                "or run the fleet on simulated engines with --engine sim"
            )
        rules = load_rules()
        opts = Options(
            engine=engine,
            devices=parse_gpus(gpus) if gpus else None,
            pvc_root=pvc_root,
            vllm_version=vllm_version(exe) if exe else None,
            vllm_executable=(exe,) if exe else ("vllm",),
            fetched=_fetch(fleet, engine, cache_dir, fetch=not dry_run),
            on_disk=on_disk(fleet, pvc_root),
            max_replicas_cap=max_replicas_cap,
            engine_rules=rules,
            # the engines' KV-event sockets: in the run directory, which only this user opens
            kv_events_dir=str(run.path.resolve()),
        )
        n = ports_needed(fleet, max_replicas_cap, rules)
        # One call for every port, the router's too: separate calls may get the same port back.
        picked = free_ports(n + 1)
        if rport == 0:
            rport = picked[0]
        ports = iter(picked[1:])
        plan = build(fleet, opts, ports, detect_gpus() if uses_vllm and gpus is None else ())
    except (SpecError, PlanError, PackError, DownloadError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for note in plan.notices:
        click.echo(f"note: {note}", err=True)
    router = RouterSettings(rhost, rport, _router_config(fleet, run, rhost, rport, keys))
    return fleet, plan, router, run


def _fetch(
    fleet: Fleet, engine: str | None, cache_dir: str | None, fetch: bool = True
) -> dict[str, str]:
    """Download the weights vLLM cannot fetch itself (S3, git, URL lists) into the cache; a
    re-run finds them complete and skips them. fetch=False: only where they would be."""
    from vfleet.download import download
    from vfleet.download.progress import JsonReporter, RichReporter

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out: dict[str, str] = {}
    for m in fleet.models:
        if not needs_download(m, engine or fleet.engine_of(m)):
            continue
        dest = root / slug(m.source.uri) / (m.source.revision or "default")
        out[m.name] = str(dest)
        if not fetch:
            continue
        click.echo(f"vfleet: fetching {m.source.uri} for {m.name} into {dest}", err=True)
        reporter = RichReporter() if sys.stderr.isatty() else JsonReporter(sys.stderr)
        download(
            m.source.uri,
            dest,
            revision=m.source.revision,
            include=m.source.include,
            endpoint=m.source.endpoint,
            reporter=reporter,
        )
    return out


def default_cache_dir() -> Path:
    if os.environ.get("VFLEET_CACHE_DIR"):
        return Path(os.environ["VFLEET_CACHE_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "vfleet" / "models"


def _router_config(
    fleet: Fleet, run: RunDir, host: str, port: int, keys: Keys | None = None
) -> dict[str, Any]:
    """The router's config file: the spec's router settings (as the chart gets them, from
    vfleet.engines.router) and what only a local fleet has (its endpoints file, address).

    With client keys on, the router's /metrics and /vfleet/demand need an admin key: the
    supervisor reads demand with one made for this run (the file is 0600 in a 0700 run dir)."""
    options = router_options(fleet)
    if keys and keys.client:
        options["api_keys"] = list(keys.client)
    if keys and keys.backend:
        options["backend_api_key"] = keys.backend  # what the engines require
    if keys and keys.tenants:
        options["tenants_file"] = keys.tenants  # named keys: the router re-reads the file
    keyed = options.get("api_keys") or options.get("tenants_file")
    admin = {"admin_keys": [secrets.token_urlsafe(32)]} if keyed else {}
    return {
        "endpoints_file": str(run.endpoints_file),
        "autoscale_file": str(run.autoscale_file),  # desired replicas, as router metrics
        "host": host,
        "port": port,
        "health_interval_s": 1.0,
        "drain_timeout_s": ROUTER_DRAIN_S,
        # Every name a client may ask for: one with no engine up (scaled to zero, starting)
        # is held until one is ready, not answered 404.
        "models": sorted({name for m in fleet.models for name in demand_names(m)}),
        "model_hold": {
            name: {"timeout_s": m.hold.timeout_s, "max_queued": m.hold.max_queued}
            for m in fleet.models
            for name in demand_names(m)
        },
        **options,
        **admin,
    }


def _foreground(sup: Supervisor, interactive: bool, flag: str = "") -> None:
    error = asyncio.run(_supervise(sup, interactive, flag))
    if error:
        raise click.ClickException(error)


async def _supervise(sup: Supervisor, interactive: bool, flag: str = "") -> str | None:
    """Start, serve until SIGINT/SIGTERM, stop in order. Returns the start-up error, if any.
    One event loop for all of it: the engine processes belong to it."""
    console = Console(stderr=True)
    seen: dict[str, str] = {}

    def lines(state: dict[str, Any]) -> None:
        for e in state["engines"]:
            before = seen.get(e["key"])
            if before != e["state"]:
                seen[e["key"]] = e["state"]
                if before is not None or e["state"] != "idle":  # standby slots say nothing
                    console.print(display.line(e), highlight=False)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if interactive:
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            sup.on_change = lambda state: live.update(display.engines_table(state))
            ok = await _start(sup, stop)
        seen.update({e["key"]: e["state"] for e in sup.state()["engines"]})
    else:
        sup.on_change = lines
        ok = await _start(sup, stop)
    sup.on_change = lines
    if not ok:
        return sup.error or "start-up interrupted"
    sup.begin()
    click.echo(_ready_message(sup, flag))
    sys.stdout.flush()
    await stop.wait()
    click.echo("vfleet: stopping (router first, then engines)", err=True)
    await sup.shutdown()
    return None


async def _start(sup: Supervisor, stop: asyncio.Event) -> bool:
    """Start everything; on failure or Ctrl-C stop what was started. True when up."""
    starting = asyncio.create_task(sup.start())
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if starting.done() and starting.exception() is None:
        return True
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, StartError):
            await starting
        sup.error = "interrupted during start-up"
    else:
        exc = starting.exception()
        sup.error = str(exc) if isinstance(exc, StartError) else f"start-up failed: {exc!r}"
    sup.phase = "failed"
    await sup.shutdown()
    return False


def _ready_message(sup: Supervisor, flag: str = "") -> str:
    state = sup.state()
    models = sorted({s for m in sup.fleet.models for s in m.served_names})
    gpus = len(state["devices"])
    where = f"{gpus} simulated GPU(s)" if state["simulated_gpus"] else f"{gpus} GPU(s)"
    url = state["router"]["url"]
    running = [e for e in sup.engines if e.wanted]
    first = running[0].spec.key if running else "router"
    scaled = f", {len(sup.scalers)} model(s) autoscaled" if sup.scalers else ""
    return (
        f"vfleet: fleet {sup.fleet.name!r} is up: {len(running)} engine(s) on {where}{scaled}\n"
        f"  send requests to {url}/v1  (models: {', '.join(models)})\n"
        f"  try: curl {url}/v1/models\n"
        f"{display.next_commands(flag, first, sup.run.logs)}\n"
        "  Ctrl-C stops it"
    )


def _detach(run: RunDir, argv: list[str], plan: Plan, flag: str) -> None:
    """Start the supervisor in the background and wait until it reports ready or failed."""
    run.prepare()
    run.rotate_logs()
    run.clear()
    click.echo(
        f"vfleet: launching the fleet in the background: {len(plan.engines)} engine(s) and the "
        f"router; logs in {run.logs}",
        err=True,
    )
    logfile = run.log("supervisor")
    with logfile.open("ab") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    timeout = max([e.startup_timeout_s for e in plan.engines] + [60.0]) + 60
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = run.read_state() or {}
        if state.get("supervisor_pid") == child.pid and state.get("phase") in ("ready", "failed"):
            break
        if child.poll() is not None:
            break
        time.sleep(0.2)
    if state.get("phase") != "ready" or state.get("supervisor_pid") != child.pid:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(30)
        why = state.get("error") or f"see {logfile}"
        raise click.ClickException(f"the fleet did not come up: {why}")
    url = state["router"]["url"]
    engines = [e["key"] for e in state.get("engines", []) if e.get("state") != "idle"]
    click.echo(
        f"vfleet: fleet {state['fleet']!r} is up in the background "
        f"(supervisor pid {child.pid}); send requests to {url}/v1\n"
        f"{display.next_commands(flag, engines[0] if engines else 'router', run.logs)}"
    )
