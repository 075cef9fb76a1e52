"""The local supervisor: starts engines and the router, keeps them running, stops them in order.

The asyncio shell around `plan` (what to run) and `procs` (how to run one process). Every change
is written to the run directory's state.json, which `vfleet status` and the progress display
read; endpoints.json lists the engines the router may serve from (healthy ones, and starting
ones marked so the router probes them itself), and the router re-reads it when it changes.

Each engine slot is wanted or not. A wanted slot has a keeper task that starts its engine and
restarts it when it exits; autoscaling (`local.elastic`) makes slots wanted and drains the ones
it no longer wants: out of endpoints.json, then waits until the router and the engine have no
request left for it, then SIGTERM. A crash of a slot nobody wants is not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import yaml

from vfleet.autoscale import ScalePolicy, policy_for
from vfleet.engines.sim import shared_gpu_args
from vfleet.fleetspec.models import Autoscaling, Fleet, Model
from vfleet.http import client
from vfleet.local import procs
from vfleet.local.elastic import Elastic, engine_load
from vfleet.local.plan import EngineSpec, Plan
from vfleet.local.rundir import RunDir
from vfleet.local.scaler import ModelScaler, SlotView, pick, routed
from vfleet.restarts import failures_after_exit, restart_delay  # shared with the router

log = logging.getLogger("vfleet.local")

STABLE_S = 60.0  # a process that ran this long before exiting is restarted after 1 s again
START_POLL_S = 0.025  # /health poll of a starting engine: a woken model serves within ms
ROUTER_FORGET_S = 30.0  # bound on waiting for the router to stop routing to a drained engine
DRAIN_POLL_S = 0.1
# The router's own bound on draining at SIGTERM (written to its config): shutdown gives it this
# plus --grace before SIGKILL, so requests in flight are not cut by the engines' grace.
ROUTER_DRAIN_S = 30.0
MIN_PERIOD_S = 0.1  # shortest autoscaling period


class StartError(RuntimeError):
    pass


@dataclass
class Engine:
    spec: EngineSpec
    # pending idle starting healthy unhealthy crashed restarting draining stopped
    state: str = "pending"
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    failures: int = 0  # consecutive, for the backoff
    since: float = field(default_factory=time.time)
    exit_code: int | None = None
    wanted: bool = True
    keeper: asyncio.Task[None] | None = None  # starts and restarts the engine while wanted
    drainer: asyncio.Task[None] | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set when no longer wanted
    drained: dict[str, Any] | None = None  # the last drain: requests it waited for, how long
    spawned_at: float | None = None  # wall clock of the last spawn (start-up time is measured)

    @property
    def url(self) -> str:
        return f"http://{_host(self.spec)}:{self.spec.port}"

    @property
    def busy(self) -> bool:
        return any(t is not None and not t.done() for t in (self.keeper, self.drainer))

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
            "url": self.url,
            "pid": self.proc.pid if self.proc else None,
            "state": self.state,
            "wanted": self.wanted,
            "restarts": self.restarts,
            "since": self.since,
            "spawned_at": self.spawned_at,
            "exit_code": self.exit_code,
            "drained": self.drained,
        }


def _host(spec: EngineSpec) -> str:
    i = spec.argv.index("--host")
    return spec.argv[i + 1]


def demand_names(model: Model) -> tuple[str, ...]:
    """The names clients reach a model by: its served names and its LoRA adapters."""
    return (*model.served_names, *model.vllm.lora.modules)


def local_policy(auto: Autoscaling, slots: int) -> ScalePolicy:
    """The model's policy, bounded by the slots that fit here, sampled at least three times per
    panic window (a short window, as in a test, would otherwise see one sample or none)."""
    policy = policy_for(auto, slots)
    period = min(policy.period_s, max(MIN_PERIOD_S, policy.panic_window_s / 3))
    return replace(policy, period_s=period)


@dataclass
class RouterSettings:
    host: str
    port: int
    config: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def local_url(self) -> str:
        """Where this machine reaches the router (a wildcard address is not a destination)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def auth(self) -> bytes:
        """The header the supervisor sends to the router: its admin key (/vfleet/demand is an
        admin route when keys are on), else a client key."""
        keys = self.config.get("admin_keys") or self.config.get("api_keys") or []
        return client.bearer(keys[0] if keys else None)


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
        drain_timeout_s: float = 60.0,
        stable_s: float = STABLE_S,
    ) -> None:
        self.fleet, self.plan, self.run, self.router = fleet, plan, run, router
        self.engines = [Engine(e) for e in plan.engines]
        for e in self.engines:
            if not e.spec.initial:
                e.wanted, e.state = False, "idle"
        self.spec_files = spec_files
        self.on_change = on_change
        self.grace_s = grace_s
        self.drain_timeout_s = drain_timeout_s
        self.stable_s = stable_s
        self.phase = "starting"
        self.error: str | None = None
        self.router_proc: asyncio.subprocess.Process | None = None
        self.router_restarts = 0
        self.router_failures = 0  # consecutive, for the backoff
        self.router_started_at = 0.0  # monotonic, of the last spawn
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.lanes: dict[object, asyncio.Lock] = {}
        self.scalers = {
            m.name: ModelScaler(
                m.name,
                demand_names(m),
                local_policy(m.autoscaling, plan.slots[m.name]),
                m.autoscaling.min_replicas,
            )
            for m in fleet.models
            if m.autoscaling is not None and plan.slots.get(m.name)
        }
        self._listed: list[dict[str, Any]] | None = None
        self._desired: dict[str, dict[str, int]] | None = None

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
                "url": self.router.url,
                "pid": self.router_proc.pid if self.router_proc else None,
                "restarts": self.router_restarts,
            },
            "models": {m.name: self.model_row(m) for m in self.fleet.models},
            "engines": [e.row() for e in self.engines],
        }

    def model_row(self, model: Model) -> dict[str, Any]:
        mine = [e for e in self.engines if e.spec.model == model.name]
        row: dict[str, Any] = {
            "served": list(model.served_names),
            "autoscaling": None,
            "desired": sum(e.spec.initial for e in mine),
            "current": sum(e.wanted for e in mine),
            "ready": sum(e.state == "healthy" for e in mine),
            "slots": len(mine),
        }
        scaler = self.scalers.get(model.name)
        if scaler is not None:
            row.update(scaler.row())
        return row

    def publish(self) -> None:
        state = self.state()
        self.run.write_json(self.run.state_file, state)
        self.publish_desired()
        self.on_change(state)

    def publish_desired(self) -> None:
        """The autoscalers' desired counts per served name, for the router to export beside
        the replicas it sees ready. Written only on a change."""
        desired = {
            name: {"desired": scaler.desired}
            for m in self.fleet.models
            if (scaler := self.scalers.get(m.name)) is not None
            for name in demand_names(m)
        }
        if desired != self._desired:
            self.run.write_json(self.run.autoscale_file, {"models": desired})
            self._desired = desired

    def publish_endpoints(self) -> None:
        """Healthy engines, and wanted ones starting up marked `starting` (the router probes
        those itself, fast, and serves them at their first 200). Written only on a change."""
        listed: list[dict[str, Any]] = []
        for e in self.engines:
            entry: dict[str, Any] = {"url": e.url, "models": list(e.spec.served)}
            if e.spec.kv_events is not None:  # the router subscribes to its KV-cache events
                entry["kv_events"] = e.spec.kv_events
                if e.spec.kv_ranks > 1:  # each data-parallel rank publishes at port + rank
                    entry["kv_ranks"] = e.spec.kv_ranks
            if e.state == "healthy" and e.wanted:
                listed.append(entry)
            elif e.state == "starting" and e.wanted:
                listed.append({**entry, "state": "starting"})
        if listed != self._listed:
            self.run.write_json(self.run.endpoints_file, listed)
            self._listed = listed

    def set_state(self, engine: Engine, state: str) -> None:
        engine.state, engine.since = state, time.time()
        self.publish_endpoints()
        self.publish()

    # -- background tasks ---------------------------------------------------------------------

    def spawn_task(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """A supervised background task: kept until done, its failure logged loudly."""
        task = asyncio.create_task(work, name=what)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def begin(self) -> None:
        """After start(): keep every running engine and the router up, and scale."""
        for e in self.engines:
            if e.wanted and e.keeper is None:
                e.keeper = self.spawn_task(self._keep(e, running=True), f"keep {e.spec.key}")
        self.spawn_task(self.watch_router(), "router watch")
        if self.scalers:
            self.spawn_task(Elastic(self, list(self.scalers.values())).run(), "autoscaler")

    # -- start --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Engines (one at a time per shared GPU for vLLM), then the router. Raises StartError
        naming the engine that failed; the caller then shuts everything down."""
        self.run.prepare()
        self.publish_endpoints()
        self.publish()
        try:
            async with asyncio.TaskGroup() as group:
                for e in self.engines:
                    if e.wanted:
                        group.create_task(self._start_one(e))
        except ExceptionGroup as eg:  # the first failure names the engine
            raise eg.exceptions[0] from None
        await self._start_router()
        self.phase = "ready"
        self.publish()

    async def _start_one(self, e: Engine) -> None:
        if not await self._launch(e):
            raise StartError(self._failure(e))

    @contextlib.asynccontextmanager
    async def _lane(self, e: Engine) -> AsyncIterator[None]:
        """vLLM engines sharing a GPU start one after another (vLLM's start-up memory profiling
        counts the neighbours' allocations); everything else starts at once."""
        if e.spec.engine != "vllm" or not e.spec.devices:
            yield
            return
        lock = self.lanes.setdefault(e.spec.devices, asyncio.Lock())
        async with lock:
            yield

    async def _launch(self, e: Engine) -> bool:
        """Start the slot's engine and wait until it is healthy; False when it exits, does not
        become healthy in time (then it is killed), or the slot stops being wanted (then the
        drainer stops it)."""
        async with self._lane(e):
            if not e.wanted or self.stopping:
                return False
            await self._spawn(e)
            if await self._healthy(e):
                return True
        assert e.proc is not None
        if e.proc.returncode is None and e.wanted and not self.stopping:
            procs.signal_group(e.proc.pid, 9)  # hung in start-up; `_keep` starts it again
            await e.proc.wait()
        return False  # an unwanted one is the drainer's to stop: the router may be using it

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
        s = e.spec
        argv = [*s.argv, *shared_gpu_args(s.engine, s.devices, s.share_pct, str(self.run.path))]
        banner = f"start {e.restarts + 1}: {' '.join(argv)}"
        e.spawned_at = time.time()
        e.proc = await procs.spawn(argv, self.run.log(e.spec.key), e.spec.env, banner)
        if e.wanted:  # else a drain began meanwhile and owns the state
            self.set_state(e, "starting")

    async def _healthy(self, e: Engine) -> bool:
        """Poll /health until 200, the process exits, the start-up timeout passes or the slot
        stops being wanted."""
        assert e.proc is not None
        deadline = time.monotonic() + e.spec.startup_timeout_s
        while time.monotonic() < deadline and e.wanted and not self.stopping:
            if e.proc.returncode is not None:
                e.exit_code = e.proc.returncode
                return False
            if await client.answers(e.url, "/health", 2.0):
                if not e.wanted:
                    return False
                self.set_state(e, "healthy")
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(e.proc.wait()), START_POLL_S)
        return False

    async def _start_router(self) -> None:
        self.run.router_config.write_text(yaml.safe_dump(self.router.config, sort_keys=True))
        os.chmod(self.run.router_config, 0o600)
        argv = [sys.executable, "-m", "vfleet", "router", "--config", str(self.run.router_config)]
        self.router_proc = await procs.spawn(argv, self.run.log("router"), {}, "router")
        self.router_started_at = time.monotonic()
        url = self.router.local_url
        # Ready means every model it knows has a healthy engine; a fleet entirely at zero has
        # none, and its router is up once it answers at all (it holds the first requests).
        path = "/ready" if any(e.wanted for e in self.engines) else "/health"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.router_proc.returncode is not None:
                last = procs.tail(self.run.log("router"))
                raise StartError(f"router exited with code {self.router_proc.returncode}: {last}")
            if await client.answers(url, path, 2.0):
                return
            await asyncio.sleep(0.1)
        raise StartError(f"router not ready after 30s (log: {self.run.log('router')})")

    # -- keep running -------------------------------------------------------------------------

    async def _keep(self, e: Engine, running: bool = False) -> None:
        """While the slot is wanted: start its engine (unless `running`), and restart it with
        backoff whenever it exits. Ends when the slot is released or the fleet stops."""
        if not running:
            await self._launch(e)
        while e.wanted and not self.stopping:
            assert e.proc is not None
            started = time.monotonic()
            if e.proc.returncode is None:
                live = asyncio.create_task(self._liveness(e, e.proc))
                try:
                    await e.proc.wait()
                finally:
                    live.cancel()
            if not e.wanted or self.stopping:
                return
            e.exit_code = e.proc.returncode
            e.failures = failures_after_exit(e.failures, time.monotonic() - started, self.stable_s)
            self.set_state(e, "crashed")
            log.warning("engine %s exited with code %s; restarting", e.spec.key, e.exit_code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(e.released.wait(), restart_delay(e.failures))
            if not e.wanted or self.stopping:
                return
            e.restarts += 1
            self.set_state(e, "restarting")
            await self._launch(e)

    async def _liveness(self, e: Engine, proc: asyncio.subprocess.Process) -> None:
        """Probe a running engine; after `failures` failed probes in a row kill its process
        group, and `_keep` restarts it. Out of the router's endpoints while it fails."""
        check = e.spec.health
        failed = 0
        while proc.returncode is None:
            await asyncio.sleep(check.interval_s)
            if await client.answers(e.url, "/health", check.timeout_s):
                failed = 0
                if e.state == "unhealthy" and e.wanted:
                    self.set_state(e, "healthy")
                continue
            failed += 1
            if e.state == "healthy" and e.wanted:
                self.set_state(e, "unhealthy")
            if failed >= check.failures and proc.returncode is None and e.wanted:
                log.warning("engine %s failed %d health checks; restarting it", e.spec.key, failed)
                procs.signal_group(proc.pid, 9)
                return

    async def watch_router(self) -> None:
        """Restart the router whenever it exits, with backoff by consecutive failures (a router
        that ran `stable_s` first is restarted after 1 s again, however often it failed)."""
        while not self.stopping:
            assert self.router_proc is not None
            code = await self.router_proc.wait()
            if self.stopping:
                return
            ran_s = time.monotonic() - self.router_started_at
            self.router_failures = failures_after_exit(self.router_failures, ran_s, self.stable_s)
            log.warning("router exited with code %s; restarting", code)
            self.router_restarts += 1
            await asyncio.sleep(restart_delay(self.router_failures))
            with contextlib.suppress(StartError):
                await self._start_router()
            self.publish()

    # -- scale ----------------------------------------------------------------------------------

    def replicas(self, model: str) -> tuple[int, int]:
        """(wanted, healthy) slots of a model."""
        mine = [e for e in self.engines if e.spec.model == model]
        return sum(e.wanted for e in mine), sum(e.wanted and e.state == "healthy" for e in mine)

    def ready_urls(self, model: str) -> list[str]:
        """The engines of `model` that are wanted and healthy."""
        return [
            e.url
            for e in self.engines
            if e.spec.model == model and e.wanted and e.state == "healthy"
        ]

    def scale(self, model: str, desired: int) -> None:
        """Start or drain slots of `model` until `desired` are wanted (as far as free slots
        allow: a slot still draining is started again once it is idle)."""
        if self.stopping:
            return
        mine = {e.spec.key: e for e in self.engines if e.spec.model == model}
        views = [
            SlotView(k, e.spec.replica, e.wanted, e.state == "healthy", e.busy)
            for k, e in mine.items()
        ]
        start, drain = pick(views, desired)
        for key in start:
            e = mine[key]
            e.wanted, e.released = True, asyncio.Event()
            e.failures = 0  # a fresh start; `restarts` keeps counting crashes
            self.set_state(e, "pending")
            e.keeper = self.spawn_task(self._keep(e), f"keep {key}")
        for key in drain:
            e = mine[key]
            e.wanted = False
            e.released.set()
            e.drainer = self.spawn_task(self._drain(e), f"drain {key}")

    async def _drain(self, e: Engine) -> None:
        """Take a replica out of service without losing a request: out of endpoints.json, wait
        (bounded) until the router neither routes to it nor has requests in flight to it, then
        until the engine itself has nothing running or waiting, then SIGTERM its group."""
        self.set_state(e, "draining")  # publish_endpoints leaves it out from now on
        proc = e.proc
        began = time.monotonic()
        if proc is not None and proc.returncode is None:
            deadline = began + self.drain_timeout_s
            inflight = await self._router_forgets(e.url, min(deadline, began + ROUTER_FORGET_S))
            await self._engine_idle(e.url, proc, deadline)
            e.drained = {"requests": inflight, "waited_s": round(time.monotonic() - began, 3)}
            await procs.stop([proc], self.grace_s)
        if e.keeper is not None:
            await asyncio.shield(e.keeper)  # ends at once: its engine exited, slot released
        if e.proc is not None and e.proc.returncode is None:  # spawned while we drained
            await procs.stop([e.proc], self.grace_s)
        e.proc, e.exit_code = None, None
        self.set_state(e, "idle")
        log.info("engine %s drained and stopped", e.spec.key)

    async def _router_forgets(self, url: str, deadline: float) -> int:
        """Wait until the router has no request in flight to `url` and no longer lists it.
        Returns the most requests it was seen to have in flight there meanwhile."""
        most = 0
        while time.monotonic() < deadline and not self.stopping:
            doc = await self.demand()
            if doc is not None:
                listed = routed(doc)
                if url not in listed:
                    return most
                most = max(most, listed[url])
            await asyncio.sleep(DRAIN_POLL_S)
        log.warning("drain: the router still lists %s; stopping it anyway", url)
        return most

    async def _engine_idle(
        self, url: str, proc: asyncio.subprocess.Process, deadline: float
    ) -> None:
        while time.monotonic() < deadline and proc.returncode is None and not self.stopping:
            load = await engine_load(url)
            if load is None or load.running + load.waiting == 0:
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def demand(self, wait_s: float = 0.0) -> dict[str, Any] | None:
        """The router's `GET /vfleet/demand` (a long-poll for held requests when `wait_s`);
        None when the router does not answer."""
        path = f"/vfleet/demand?wait_s={wait_s:g}" if wait_s > 0 else "/vfleet/demand"
        try:
            response = await client.get(self.router.local_url, path, wait_s + 2.0, self.router.auth)
            doc = orjson.loads(response.body) if response.status == 200 else None
        except (OSError, ValueError):  # orjson.JSONDecodeError is a ValueError
            return None
        return doc if isinstance(doc, dict) else None

    # -- stop ---------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Router first (stops accepting, drains), then every engine: SIGTERM, then SIGKILL."""
        self.stopping = True
        if self.phase != "failed":
            self.phase = "stopping"
        self.publish()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.router_proc is not None:
            await procs.stop([self.router_proc], ROUTER_DRAIN_S + self.grace_s)
        await procs.stop([e.proc for e in self.engines if e.proc is not None], self.grace_s)
        for e in self.engines:
            e.state = "stopped"
        self.publish_endpoints()
        if self.phase != "failed":
            self.phase = "stopped"
        self.publish()
