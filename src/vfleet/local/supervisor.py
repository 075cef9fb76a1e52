"""The local supervisor: starts engines and the router, keeps them running, stops them in order.

The asyncio shell around `plan` (what to run) and `procs` (how to run one process). Every change
is written to the run directory's state.json, which `vfleet status` and the progress display
read; endpoints.json lists the healthy engines, and the router re-reads it when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from vfleet.local import procs
from vfleet.local.plan import EngineSpec, Plan
from vfleet.local.rundir import RunDir
from vfleet.router.probe import http_get
from vfleet.spec.models import Fleet

log = logging.getLogger("vfleet.local")

BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # running this long resets the restart backoff


def restart_delay(failures: int) -> float:
    """1, 2, 4, ... seconds, at most BACKOFF_MAX_S, by consecutive failures."""
    return min(BACKOFF_MAX_S, 2.0 ** max(0, failures - 1))


class StartError(RuntimeError):
    pass


async def answers(url: str, path: str, timeout_s: float) -> bool:
    """Whether `GET url+path` returns 200 within `timeout_s`; any failure is a no."""
    try:
        status, _ = await http_get(url, path, timeout_s)
    except (OSError, TimeoutError, ValueError, IndexError):
        return False
    return status == 200


@dataclass
class Engine:
    spec: EngineSpec
    state: str = "pending"  # pending starting healthy unhealthy crashed restarting stopped
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    failures: int = 0  # consecutive, for the backoff
    since: float = field(default_factory=time.time)
    exit_code: int | None = None

    def row(self) -> dict[str, Any]:
        s = self.spec
        return {
            "key": s.key,
            "model": s.model,
            "replica": s.replica,
            "engine": s.engine,
            "served": list(s.served),
            "gpu": s.gpu_label,
            "devices": list(s.devices),
            "share_pct": s.share_pct,
            "port": s.port,
            "url": f"http://{_host(s)}:{s.port}",
            "pid": self.proc.pid if self.proc else None,
            "state": self.state,
            "restarts": self.restarts,
            "since": self.since,
            "exit_code": self.exit_code,
        }


def _host(spec: EngineSpec) -> str:
    i = spec.argv.index("--host")
    return spec.argv[i + 1]


@dataclass
class RouterSettings:
    host: str
    port: int
    config: dict[str, Any]


class Supervisor:
    def __init__(
        self,
        fleet: Fleet,
        plan: Plan,
        run: RunDir,
        router: RouterSettings,
        spec_files: list[str],
        on_change: Callable[[dict[str, Any]], None] = lambda state: None,
        grace_s: float = 10.0,
    ) -> None:
        self.fleet, self.plan, self.run, self.router = fleet, plan, run, router
        self.engines = [Engine(e) for e in plan.engines]
        self.spec_files = spec_files
        self.on_change = on_change
        self.grace_s = grace_s
        self.phase = "starting"
        self.error: str | None = None
        self.router_proc: asyncio.subprocess.Process | None = None
        self.router_restarts = 0
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    # -- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet.name,
            "files": self.spec_files,
            "phase": self.phase,
            "error": self.error,
            "supervisor_pid": os.getpid(),
            "updated": time.time(),
            "devices": list(self.plan.devices),
            "simulated_gpus": self.plan.simulated_gpus,
            "router": {
                "url": f"http://{self.router.host}:{self.router.port}",
                "pid": self.router_proc.pid if self.router_proc else None,
                "restarts": self.router_restarts,
            },
            "engines": [e.row() for e in self.engines],
        }

    def publish(self) -> None:
        state = self.state()
        self.run.write_json(self.run.state_file, state)
        self.on_change(state)

    def publish_endpoints(self) -> None:
        live = [
            {"url": f"http://{_host(e.spec)}:{e.spec.port}", "models": list(e.spec.served)}
            for e in self.engines
            if e.state == "healthy"
        ]
        self.run.write_json(self.run.endpoints_file, live)

    def set_state(self, engine: Engine, state: str) -> None:
        engine.state, engine.since = state, time.time()
        if state in ("healthy", "unhealthy", "crashed", "stopped"):
            self.publish_endpoints()
        self.publish()

    # -- start --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Engines (one at a time per shared GPU for vLLM), then the router. Raises StartError
        naming the engine that failed; the caller then shuts everything down."""
        self.run.prepare()
        self.publish_endpoints()
        self.publish()
        try:
            async with asyncio.TaskGroup() as group:
                for lane in self._lanes():
                    group.create_task(self._start_lane(lane))
        except ExceptionGroup as eg:  # the first failure names the engine
            raise eg.exceptions[0] from None
        await self._start_router()
        self.phase = "ready"
        self.publish()

    def _lanes(self) -> list[list[Engine]]:
        """Engines that must start one after another: vLLM engines sharing a GPU (its start-up
        memory profiling counts the neighbours' allocations). Everything else starts at once."""
        lanes: dict[object, list[Engine]] = {}
        for e in self.engines:
            key: object = id(e) if e.spec.engine != "vllm" or not e.spec.devices else e.spec.devices
            lanes.setdefault(key, []).append(e)
        return list(lanes.values())

    async def _start_lane(self, lane: list[Engine]) -> None:
        for e in lane:
            await self._spawn(e)
            if not await self._healthy(e):
                raise StartError(self._failure(e))

    def _failure(self, e: Engine) -> str:
        logfile = self.run.log(e.spec.key)
        why = (
            f"exited with code {e.exit_code}"
            if e.exit_code is not None
            else f"not healthy after {e.spec.startup_timeout_s:g}s"
        )
        last = procs.tail(logfile)
        return f"engine {e.spec.key} {why}" + (f": {last}" if last else "") + f" (log: {logfile})"

    async def _spawn(self, e: Engine) -> None:
        e.exit_code = None
        banner = f"start {e.restarts + 1}: {' '.join(e.spec.argv)}"
        e.proc = await procs.spawn(e.spec.argv, self.run.log(e.spec.key), e.spec.env, banner)
        self.set_state(e, "starting")

    async def _healthy(self, e: Engine) -> bool:
        """Poll /health until 200, the process exits, or the start-up timeout passes."""
        assert e.proc is not None
        url = f"http://{_host(e.spec)}:{e.spec.port}"
        deadline = time.monotonic() + e.spec.startup_timeout_s
        while time.monotonic() < deadline:
            if e.proc.returncode is not None:
                e.exit_code = e.proc.returncode
                return False
            if await answers(url, "/health", 2.0):
                self.set_state(e, "healthy")
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(e.proc.wait()), 0.2)
        return False

    async def _start_router(self) -> None:
        self.run.router_config.write_text(yaml.safe_dump(self.router.config, sort_keys=True))
        os.chmod(self.run.router_config, 0o600)
        argv = [sys.executable, "-m", "vfleet", "router", "--config", str(self.run.router_config)]
        self.router_proc = await procs.spawn(argv, self.run.log("router"), {}, "router")
        url = f"http://{self.router.host}:{self.router.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.router_proc.returncode is not None:
                last = procs.tail(self.run.log("router"))
                raise StartError(f"router exited with code {self.router_proc.returncode}: {last}")
            if await answers(url, "/ready", 2.0):
                return
            await asyncio.sleep(0.1)
        raise StartError(f"router not ready after 30s (log: {self.run.log('router')})")

    # -- keep running -------------------------------------------------------------------------

    async def watch(self, e: Engine) -> None:
        """Restart the engine whenever it exits, with backoff, until shutdown."""
        while not self.stopping:
            assert e.proc is not None
            started = time.monotonic()
            live = asyncio.create_task(self._liveness(e, e.proc))
            try:
                code = await e.proc.wait()
            finally:
                live.cancel()
            if self.stopping:
                return
            e.exit_code = code
            e.failures = 1 if time.monotonic() - started > STABLE_S else e.failures + 1
            self.set_state(e, "crashed")
            log.warning("engine %s exited with code %s; restarting", e.spec.key, code)
            await asyncio.sleep(restart_delay(e.failures))
            if self.stopping:
                return
            e.restarts += 1
            self.set_state(e, "restarting")
            await self._spawn(e)
            if not await self._healthy(e) and e.proc.returncode is None:
                procs.signal_group(e.proc.pid, 9)  # hung in start-up: kill, the loop restarts it

    async def _liveness(self, e: Engine, proc: asyncio.subprocess.Process) -> None:
        """Probe a running engine; after `failures` failed probes in a row kill its process
        group, and `watch` restarts it. Out of the router's endpoints while it fails."""
        check = e.spec.health
        url = f"http://{_host(e.spec)}:{e.spec.port}"
        failed = 0
        while proc.returncode is None:
            await asyncio.sleep(check.interval_s)
            if await answers(url, "/health", check.timeout_s):
                failed = 0
                if e.state == "unhealthy":
                    self.set_state(e, "healthy")
                continue
            failed += 1
            if e.state == "healthy":
                self.set_state(e, "unhealthy")
            if failed >= check.failures and proc.returncode is None:
                log.warning("engine %s failed %d health checks; restarting it", e.spec.key, failed)
                procs.signal_group(proc.pid, 9)
                return

    async def watch_router(self) -> None:
        while not self.stopping:
            assert self.router_proc is not None
            code = await self.router_proc.wait()
            if self.stopping:
                return
            log.warning("router exited with code %s; restarting", code)
            self.router_restarts += 1
            await asyncio.sleep(restart_delay(self.router_restarts))
            with contextlib.suppress(StartError):
                await self._start_router()
            self.publish()

    # -- stop ---------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Router first (stops accepting, drains), then every engine: SIGTERM, then SIGKILL."""
        self.stopping = True
        if self.phase != "failed":
            self.phase = "stopping"
        self.publish()
        for t in self.tasks:
            t.cancel()
        if self.router_proc is not None:
            await procs.stop([self.router_proc], self.grace_s)
        await procs.stop([e.proc for e in self.engines if e.proc is not None], self.grace_s)
        for e in self.engines:
            e.state = "stopped"
        self.publish_endpoints()
        if self.phase != "failed":
            self.phase = "stopped"
        self.publish()
