"""The supervisor's restart backoff starts again after stable running: a real supervisor (in this
process), a real sim engine and real router processes on 127.0.0.1, the router killed with
SIGKILL again and again. `stable_s` is the seam: 0 makes every run stable, an hour none."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.load import load
from vfleet.http import client
from vfleet.local.gpus import free_ports
from vfleet.local.plan import Options, build
from vfleet.local.rundir import RunDir
from vfleet.local.supervisor import RouterSettings, Supervisor
from vfleet.restarts import BACKOFF_MAX_S, failures_after_exit, restart_delay

FLEET = """
name: backoff
engine: sim
models:
  - name: chat
    servedNames: [m]
    source: org/m
    replicas: 1
    gpu: 0.5
"""


def test_failures_count_up_until_a_stable_run() -> None:
    assert failures_after_exit(0, ran_s=0.5, stable_s=60) == 1
    assert failures_after_exit(3, ran_s=59.9, stable_s=60) == 4
    assert failures_after_exit(7, ran_s=60.0, stable_s=60) == 1
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert restart_delay(40) == BACKOFF_MAX_S


def _kill_router(tmp_path: Path, stable_s: float, kills: int) -> list[int]:
    """Start a fleet, SIGKILL its router `kills` times (each time once the new one answers),
    and return the supervisor's consecutive-failure count after each restart."""
    spec = tmp_path / "fleet.yaml"
    spec.write_text(FLEET)
    fleet = load([spec]).fleet
    router_port, *engine_ports = free_ports(2)
    plan = build(fleet, Options(engine="sim", engine_rules=load_rules()), iter(engine_ports))
    run = RunDir(tmp_path / "run")
    config = {
        "endpoints_file": str(run.endpoints_file),
        "host": "127.0.0.1",
        "port": router_port,
        "models": ["m"],
    }
    router = RouterSettings("127.0.0.1", router_port, config)
    sup = Supervisor(fleet, plan, run, router, [str(spec)], grace_s=5, stable_s=stable_s)

    async def main() -> list[int]:
        try:
            await asyncio.wait_for(sup.start(), 45)
            sup.begin()
            seen = []
            for n in range(1, kills + 1):
                killed = sup.router_proc
                assert killed is not None
                os.kill(killed.pid, signal.SIGKILL)
                for _ in range(600):  # bounded: 600 x at least 0.05 s
                    back = sup.router_restarts == n and sup.router_proc is not killed
                    if back and await client.answers(router.local_url, "/health", 1.0):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"router not back after kill {n}")
                seen.append(sup.router_failures)
            return seen
        finally:
            await sup.shutdown()

    return asyncio.run(main())


@pytest.mark.timeout(120)
def test_router_backoff_resets_after_stable_running(tmp_path: Path) -> None:
    assert _kill_router(tmp_path, stable_s=0.0, kills=3) == [1, 1, 1]


@pytest.mark.timeout(120)
def test_router_backoff_grows_while_it_keeps_failing(tmp_path: Path) -> None:
    assert _kill_router(tmp_path, stable_s=3600.0, kills=2) == [1, 2]
