"""The router's parent supervises its workers (router.app's wait_workers, router.restarts): a real
`vfleet router --workers 2` over a real sim engine, worker 0 killed with SIGKILL, is back to two
workers, serves every request on fresh connections (no connection is left to the dead worker's
socket), and its request counters summed over the workers do not go back; shutdown afterwards
stops everything without restarting anyone. And the pure restart decisions."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SimProcess
from httpclient import Client, wait_for
from vfleet.restarts import BACKOFF_MAX_S, Slots, restart_delay

Factory = Callable[..., SimProcess]
COMPLETION = {"model": "demo", "prompt": "hello", "max_tokens": 2}


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid`, oldest (lowest pid) first, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            out.append(int(entry.name))
    return sorted(out)


def requests_total(client: Client) -> float:
    text = client.get("/metrics").body.decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("vfleet_router_requests_total{")
    )


@pytest.mark.timeout(30)
def test_a_killed_worker_is_forked_again_into_its_slot(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "demo", "--profile", "instant")
    router = router_factory("--backend", sim.url, "--workers", "2")
    parent = router.proc.pid
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 2, timeout_s=10)
    first = children_of(parent)
    assert len(first) == 2
    # each request on a fresh connection, a short bound: one handed to a socket nobody accepts
    # on (the dead worker's, if a sibling still held it) fails instead of hanging the test
    client = Client(router.url, timeout_s=5.0)
    for _ in range(4):
        assert client.post("/v1/completions", COMPLETION).status == 200
    before = requests_total(client)
    assert before == 4

    os.kill(first[0], signal.SIGKILL)  # worker 0 (forked first): the one that holds peer duties

    def back_to_two() -> bool:
        now = children_of(parent)
        return len(now) == 2 and first[0] not in now and first[1] in now

    assert wait_for(back_to_two, timeout_s=10)
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 3, timeout_s=10)
    for _ in range(8):
        assert client.post("/v1/completions", COMPLETION).status == 200
    after = requests_total(client)
    assert after == before + 8  # the dead worker's counts stay, the new one counts on
    assert any(
        f"router worker 0 (pid {first[0]}) was killed by SIGKILL" in line for line in router.log
    ), "".join(router.log)

    assert router.stop() == 0  # SIGTERM: drained and stopped, nobody restarted
    assert children_of(parent) == []
    assert sum("starting it again" in line for line in router.log) == 1, "".join(router.log)


def test_restart_decisions_back_off_and_stop() -> None:
    slots = Slots([101, 102], now=0.0)
    assert slots.exited(999, now=1.0) is None  # not a worker
    ended = slots.exited(101, now=1.0)
    assert ended is not None and (ended.worker, ended.restart_in) == (0, 0.5)
    assert slots.pids() == [102]
    assert slots.due(1.2) == [] and slots.wait_s(1.2) == pytest.approx(0.3)
    assert slots.due(1.5) == [0]
    slots.started(0, 103, now=1.5)
    delays = []
    for k in range(8):  # crashes right after each start: the delay doubles, up to the cap
        ended = slots.exited(103 + k, now=2.0 + k)
        assert ended is not None and ended.restart_in is not None
        delays.append(ended.restart_in)
        slots.started(0, 104 + k, now=2.0 + k)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    ended = slots.exited(111, now=2.0 + 7 + 60.0)  # ran a stable minute: back to the first delay
    assert ended is not None and ended.restart_in == 0.5
    slots.started(0, 112, now=70.0)
    ended = slots.exited(112, now=70.1)
    assert ended is not None and ended.restart_in == 1.0
    assert slots.not_forked(0, now=71.1) == 2.0  # a failed fork counts as a failure too
    assert slots.due(73.0) == [] and slots.due(73.2) == [0]
    slots.stop()  # shutting down: the waiting restart is dropped, an exit makes no new one
    assert slots.due(1e9) == [] and slots.wait_s(0.0) is None and not slots.done()
    ended = slots.exited(102, now=100.0)
    assert ended is not None and (ended.worker, ended.restart_in) == (1, None)
    assert slots.done()
    waiting = Slots([7], now=0.0, restart=False)  # the plain wait: nobody comes back
    ended = waiting.exited(7, now=1.0)
    assert ended is not None and ended.restart_in is None and waiting.done()
    assert restart_delay(3) == 4.0 and restart_delay(40) == BACKOFF_MAX_S  # the supervisor's
