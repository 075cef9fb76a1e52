"""`vfleet router --workers 2 --keda-port 0`: the KEDA scaler runs in a process of its own, forked
by the parent like a worker (router.app's ScalerProcess), so the parent stays single-threaded
(grpc's threads never see a fork) while it forks dead workers again. A real router over a real
sim engine: a worker and then the scaler are killed with SIGKILL; each comes back, the parent
still has one thread and no grpc, and the scaler answers KEDA's calls on the same port, from the
demand table the workers write."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest

from httpclient import wait_for
from test_keda_scaler import SCALER_LINE, Factory, Held, Stubs, _active, _ref, channels, held
from test_router_worker_restart import children_of
from vfleet.restarts import Slots

__all__ = ["channels", "held"]  # fixtures, used by name


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    assert found is not None, status
    return int(found.group(1))


def _has_grpc(pid: int) -> bool:
    try:
        return "cygrpc" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # exited while we looked
        return False


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _answers(stub: Any) -> bool:
    try:
        return not _active(stub, _ref("cold"))  # nothing held yet: idle
    except grpc.RpcError:  # the scaler is not back yet
        return False


@pytest.mark.timeout(30)
def test_scaler_and_workers_come_back_in_a_single_threaded_parent(
    sim_factory: Factory, router_factory: Factory, channels: Stubs, held: Held
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = router_factory(
        "--backend", sim.url, "--model", "cold", "--keda-port", "0", "--hold-timeout", "60",
        "--workers", "2",
    )  # fmt: skip
    parent = router.proc.pid
    stub = channels(router)  # waits for the scaler's line: it serves
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 2, timeout_s=10)
    first = children_of(parent)
    scalers = [pid for pid in first if _has_grpc(pid)]
    assert len(first) == 3 and len(scalers) == 1, first  # two workers and the scaler
    scaler = scalers[0]
    worker = next(pid for pid in first if pid != scaler)
    assert _answers(stub)

    os.kill(worker, signal.SIGKILL)
    assert wait_for(
        lambda: len(children_of(parent)) == 3 and worker not in children_of(parent), timeout_s=10
    )
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 3, timeout_s=10)
    assert _threads(parent) == 1 and not _has_grpc(parent)  # forked again by a lone thread
    assert _answers(stub)  # the same scaler process, untouched

    os.kill(scaler, signal.SIGKILL)
    assert wait_for(
        lambda: len(children_of(parent)) == 3 and scaler not in children_of(parent), timeout_s=10
    )
    assert wait_for(lambda: sum(bool(SCALER_LINE.search(x)) for x in router.log) == 2, 10)
    ports = {m.group(1) for line in router.log if (m := SCALER_LINE.search(line))}
    assert len(ports) == 1, ports  # the new scaler binds the port KEDA knows, not a new one
    stub = channels(router)  # a fresh channel: the old one's reconnect backoff is not the test
    assert wait_for(lambda: _answers(stub), timeout_s=10)
    assert _threads(parent) == 1 and not _has_grpc(parent)
    sock = held(router, "cold")  # the new scaler reads the workers' demand table
    assert wait_for(lambda: _active(stub, _ref("cold")), timeout_s=10)
    assert any(f"KEDA scaler (pid {scaler}) was killed by SIGKILL" in x for x in router.log)

    # SIGTERM: the workers drain (the held request keeps them) while KEDA still sees it
    router.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: _refused(router.port), timeout_s=10)  # both workers stopped accepting
    assert _active(stub, _ref("cold")) and _threads(parent) == 1
    sock.close()  # out of the queue: the workers finish, then the scaler is stopped
    assert router.wait_exit(timeout_s=10) == 0
    assert children_of(parent) == []
    assert sum("starting it again" in line for line in router.log) == 2, "".join(router.log)


def test_the_slot_stopped_last_is_told_once_the_workers_are_gone() -> None:
    slots = Slots([11, 12, 13], now=0.0, last=1)  # two workers, then the scaler
    assert slots.stopped_first() == [11, 12] and slots.to_stop_last() == []  # not stopping
    ended = slots.exited(13, now=1.0)  # the scaler dies while serving: restarted like a worker
    assert ended is not None and (ended.worker, ended.restart_in) == (2, 0.5)
    slots.started(2, 14, now=1.5)
    slots.stop()
    assert slots.stopped_first() == [11, 12] and slots.to_stop_last() == []  # workers draining
    slots.exited(11, now=2.0)
    assert slots.to_stop_last() == []
    slots.exited(12, now=2.0)
    assert slots.to_stop_last() == [14] and slots.to_stop_last() == []  # told once
    assert not slots.done()
    ended = slots.exited(14, now=2.5)
    assert ended is not None and ended.restart_in is None and slots.done()
    with pytest.raises(ValueError):
        Slots([1], now=0.0, last=2)
