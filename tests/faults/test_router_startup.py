"""Router start-up and restarts in front of real sims (issue 14 item 4, the router's side): a
restarted router answers no 503 while healthy engines exist, a hung engine delays neither the
start nor its healthy peers' probes, and requests a hung engine swallows are served elsewhere."""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from conftest import SimProcess, start_ready, start_router, start_sim
from httpclient import Client, free_port, metric_value, wait_for
from test_local_up import SEED_004, Up, start_up

COMPLETION = {"model": "demo", "prompt": "hi", "max_tokens": 2, "ignore_eos": True}


@pytest.fixture
def sims() -> Iterator[list[SimProcess]]:
    started = [start_sim("--model", "demo", "--profile", "instant") for _ in range(3)]
    yield started
    for sp in started:
        if sp.proc.poll() is None:
            os.kill(sp.proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        sp.stop()


class Load:
    """Client threads posting completions until stopped; HTTP statuses counted (connections
    refused while no router listens are counted apart: they are not answers)."""

    def __init__(self, url: str, body: dict[str, object] = COMPLETION, threads: int = 3) -> None:
        self.client = Client(url, timeout_s=15)
        self.body = body
        self.statuses: collections.Counter[int] = collections.Counter()
        self.refused = 0
        self.bodies: list[bytes] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                resp = self.client.post("/v1/completions", self.body)
            except ConnectionError:
                self.refused += 1
                self.done.wait(0.01)
                continue
            self.statuses[resp.status] += 1
            if resp.status != 200 and len(self.bodies) < 10:
                self.bodies.append(resp.body)

    def wait_answers(self, more: int, timeout_s: float = 20.0) -> bool:
        target = sum(self.statuses.values()) + more
        return wait_for(lambda: sum(self.statuses.values()) >= target, timeout_s)


def test_a_restarted_router_answers_no_503(sims: list[SimProcess]) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "vfleet",
        "router",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--health-interval",
        "0.5",
    ]
    for sp in sims:
        cmd += ["--backend", sp.url]
    router = start_ready(cmd, "router")
    try:
        with Load(router.url) as load:
            assert load.wait_answers(20)
            for _ in range(3):
                router.stop()
                router = start_ready(cmd, "router")
                assert load.wait_answers(20)
        assert load.statuses[200] > 0
        assert set(load.statuses) == {200}, (load.statuses, load.bodies)
    finally:
        router.stop()


@pytest.mark.timeout(240)
def test_a_router_restarted_under_vfleet_up_answers_no_503(tmp_path: Path) -> None:
    up: Up = start_up(tmp_path / "run", "-f", str(SEED_004), "--engine", "sim")
    try:
        body = {**COMPLETION, "model": "facebook/opt-125m"}
        with Load(up.url, body) as load:
            assert load.wait_answers(20)
            for _ in range(2):
                before = up.state()["router"]
                os.kill(before["pid"], signal.SIGKILL)  # the supervisor starts another

                def back(pid: int = before["pid"]) -> bool:
                    router = up.state().get("router") or {}
                    return router.get("pid") not in (None, pid)

                assert wait_for(back, timeout_s=60, interval_s=0.05), up.state()["router"]
                assert load.wait_answers(20)
        assert load.statuses[200] > 0
        assert set(load.statuses) == {200}, (load.statuses, load.bodies)
    finally:
        up.stop()


def test_a_hung_engine_delays_neither_start_nor_service(
    sims: list[SimProcess], tmp_path: Path
) -> None:
    """The hung engine's first probe would last 60 s: the router opens its port (within
    start_router's 20 s bound) as soon as the model has ready engines, and serves from them."""
    hung = sims[0]
    os.kill(hung.proc.pid, signal.SIGSTOP)  # its port accepts, nothing answers
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": [f"{sp.url}=demo" for sp in sims],
                "health_interval_s": 0.5,
                "health_timeout_s": 60.0,
            }
        )
    )
    router = start_router("--config", str(config))
    try:
        c = Client(router.url)
        statuses = [c.post("/v1/completions", COMPLETION).status for _ in range(30)]
        assert statuses == [200] * 30
        metrics = c.get("/metrics").body.decode()
        up = {
            sp.url: metric_value(metrics, "vfleet_router_endpoint_healthy", upstream=sp.url)
            for sp in sims
        }
        assert up == {hung.url: 0.0, sims[1].url: 1.0, sims[2].url: 1.0}
    finally:
        router.stop()


def test_probes_of_healthy_engines_do_not_wait_for_a_hung_one(
    sims: list[SimProcess], tmp_path: Path
) -> None:
    """A probe of the hung engine lasts the whole (long) probe timeout; meanwhile another
    engine's /health starts failing, and the router notices on that engine's own schedule."""
    hung, failing, healthy = sims
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": [sp.url for sp in sims],
                "health_interval_s": 0.2,
                "health_timeout_s": 60.0,
            }
        )
    )
    router = start_router("--config", str(config))
    try:
        c = Client(router.url)

        def healthy_flag(url: str) -> float:
            text = c.get("/metrics").body.decode()
            return metric_value(text, "vfleet_router_endpoint_healthy", upstream=url)

        # The port opens once one engine of the model answered: the others' first probes may
        # still be on their way.
        assert wait_for(lambda: all(healthy_flag(sp.url) == 1.0 for sp in sims), 5)
        os.kill(hung.proc.pid, signal.SIGSTOP)
        assert wait_for(lambda: healthy_flag(hung.url) == 1.0, 5)  # its probe hangs, for 60 s
        set_faults = Client(failing.url).post("/sim/faults", {"health_failing": True})
        assert set_faults.status == 200
        # within the hung probe's 60 s: the failing engine's own probes see it
        assert wait_for(lambda: healthy_flag(failing.url) == 0.0, 20)
        assert healthy_flag(healthy.url) == 1.0
    finally:
        router.stop()


def test_requests_a_hung_engine_swallows_are_served_elsewhere(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., SimProcess]
) -> None:
    hung = sim_factory("--model", "demo", "--profile", "instant", "--hang-rate", "1")
    good = [sim_factory("--model", "demo", "--profile", "instant") for _ in range(2)]
    router = router_factory(
        *(a for sp in (hung, *good) for a in ("--backend", sp.url)),
        "--policy",
        "round_robin",
        "--first-byte-timeout",
        "0.5",
        "--health-interval",
        "0.5",
    )
    c = Client(router.url)
    statuses = [c.post("/v1/completions", COMPLETION).status for _ in range(9)]
    assert statuses == [200] * 9
    text = c.get("/metrics").body.decode()
    assert metric_value(text, "vfleet_router_retries_total", model="demo") >= 1
