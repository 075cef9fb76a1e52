"""Demand the router's workers share: the table itself (pure, and across a real fork), the
activator's queues under a fake clock, and `GET /vfleet/demand` end to end: held requests,
sums over workers, the long-poll, and counts back at zero after every kind of request end."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SimProcess
from httpclient import Client, free_port, http_request, metric_value, raw_socket, wait_for
from vfleet.router.activator import FULL, HELD, WOKE, Activator, HoldLimits
from vfleet.router.demand import HELD as HELD_COUNT
from vfleet.router.demand import INFLIGHT, REQUESTS, Demand, DemandTable

Factory = Callable[..., SimProcess]
HOLD = {"model": "cold", "prompt": "hello", "max_tokens": 2}


# -- the table --------------------------------------------------------------------------------


def test_rows_are_summed_per_model_and_endpoint() -> None:
    table = DemandTable.create(3, slots=8)
    a, b = table.row(0), table.row(2)
    a.add(a.model("m"), INFLIGHT, 2)
    a.add(a.model("m"), REQUESTS, 5)
    b.add(b.model("m"), HELD_COUNT, 3)
    b.add(b.model("n"), REQUESTS, 1)
    a.set_endpoints(["http://e1"])
    b.add(b.endpoint("http://e1"), INFLIGHT, 1)
    assert table.models() == {"m": Demand(2, 3, 5), "n": Demand(0, 0, 1)}
    assert table.endpoints() == {"http://e1": 1}
    assert table.held() == 3
    assert table.as_dict() == {
        "models": {
            "m": {"inflight": 2, "held": 3, "requests": 5},
            "n": {"inflight": 0, "held": 0, "requests": 1},
        },
        "endpoints": {"http://e1": 1},
        "workers": 3,
    }


def test_endpoint_slot_is_reclaimed_once_unlisted_and_idle() -> None:
    table = DemandTable.create(1, slots=2)
    row = table.row(0)
    row.set_endpoints(["http://a", "http://b"])
    slot = row.endpoint("http://a")
    row.add(slot, INFLIGHT, 1)
    row.set_endpoints(["http://b"])  # unlisted, one request still in flight: still shown
    assert table.endpoints() == {"http://a": 1, "http://b": 0}
    row.endpoint_done(slot)
    assert table.endpoints() == {"http://b": 0}
    row.set_endpoints(["http://b", "http://c"])  # the reclaimed slot holds the new url
    assert table.endpoints() == {"http://b": 0, "http://c": 0}


def test_a_full_row_says_so_once_and_skips(caplog: pytest.LogCaptureFixture) -> None:
    table = DemandTable.create(1, slots=2)
    row = table.row(0)
    with caplog.at_level(logging.WARNING, "vfleet.router.demand"):
        assert row.model("a") >= 0 and row.model("b") >= 0
        assert row.model("c") == -1 and row.endpoint("http://x") == -1
        assert row.model("x" * 300) == -1
    assert len(caplog.records) == 1
    row.add(-1, INFLIGHT, 1)  # what was not counted is skipped, never misplaced
    row.endpoint_done(-1)
    assert set(table.models()) == {"a", "b"}


def test_clearing_an_exited_workers_row_keeps_its_cumulative_counts() -> None:
    table = DemandTable.create(2)
    a, b = table.row(0), table.row(1)
    a.add(a.model("m"), HELD_COUNT, 1)
    b.add(b.model("m"), HELD_COUNT, 2)
    b.add(b.model("m"), INFLIGHT, 4)
    b.add(b.model("m"), REQUESTS, 7)
    b.set_endpoints(["http://e"])
    table.clear_row(1)
    assert table.models() == {"m": Demand(0, 1, 7)}
    assert table.endpoints() == {}
    assert table.held() == 1


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 5)), max_size=60))
def test_sums_equal_what_was_added(ops: list[tuple[int, int]]) -> None:
    table = DemandTable.create(2, slots=4)
    rows = [table.row(0), table.row(1)]
    want = [0, 0, 0, 0]
    for i, delta in ops:
        row = rows[i % 2]
        row.add(row.model(f"m{i}"), INFLIGHT, delta)
        want[i] += delta
    got = table.models()
    for i in range(4):
        assert got.get(f"m{i}", Demand()).inflight == want[i]


# -- the activator's queues under a fake clock --------------------------------------------------


class FakeTimers:
    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[tuple[float, Callable[[], None], FakeTimers.Handle]] = []

    class Handle:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def call_later(self, delay: float, cb: Callable[[], None]) -> Handle:
        handle = FakeTimers.Handle()
        self.pending.append((self.now + delay, cb, handle))
        return handle

    def live(self) -> int:
        return sum(not h.cancelled for _, _, h in self.pending)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while True:
            due = [p for p in self.pending if p[0] <= self.now and not p[2].cancelled]
            if not due:
                return
            first = min(due, key=lambda p: p[0])
            self.pending.remove(first)
            first[1]()


class W:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def wake(self) -> None:
        self.log.append(f"wake {self.name}")

    def expire(self) -> None:
        self.log.append(f"expire {self.name}")


def _activator(timers: FakeTimers, timeout_s: float = 10.0, max_queued: int = 3) -> Activator:
    limits = HoldLimits(timeout_s, max_queued)
    return Activator(lambda: timers.now, timers.call_later, lambda _m: limits)


def test_released_in_arrival_order_and_bounded() -> None:
    timers, log = FakeTimers(), []
    act = _activator(timers)
    ws = [W(str(i), log) for i in range(4)]
    assert [act.hold("m", w) for w in ws] == [WOKE, HELD, HELD, FULL]
    assert act.held("m") == 3
    for w in act.take("m", 2):
        w.wake()
    assert act.hold("m", ws[3]) == HELD
    for w in act.take("m"):
        w.wake()
    assert log == ["wake 0", "wake 1", "wake 2", "wake 3"]
    assert act.queues == {} and timers.live() == 0


def test_deadlines_expire_in_order_with_one_timer_per_queue() -> None:
    timers, log = FakeTimers(), []
    act = _activator(timers, timeout_s=10.0)
    a, b, c = W("a", log), W("b", log), W("c", log)
    act.hold("m", a)
    timers.advance(4)
    act.hold("m", b)
    act.hold("m", c)
    assert timers.live() == 1
    assert act.cancel("m", a)  # its client left: out, never expired
    timers.advance(6)  # a's old deadline: nothing due yet
    assert log == []
    timers.advance(4)
    assert log == ["expire b", "expire c"]
    assert act.queues == {} and timers.live() == 0


@settings(max_examples=50)
@given(st.lists(st.sampled_from(["hold", "cancel", "take", "tick"]), max_size=40))
def test_every_request_leaves_exactly_once(ops: list[str]) -> None:
    timers, log = FakeTimers(), []
    act = _activator(timers, timeout_s=3.0, max_queued=5)
    held: list[W] = []
    left = 0
    for n, op in enumerate(ops):
        if op == "hold":
            w = W(str(n), log)
            if act.hold("m", w) != FULL:
                held.append(w)
        elif op == "cancel" and held:
            assert act.cancel("m", held.pop(0))
            left += 1
        elif op == "take":
            for w in act.take("m", 1):
                w.wake()
                held = [h for h in held if h is not w]
        else:
            timers.advance(1.0)
            held = [w for w in held if f"expire {w.name}" not in log]
        assert act.held("m") == len(held)
    timers.advance(10.0)
    assert act.held("m") == 0 and timers.live() == 0
    names = [line.split()[1] for line in log]
    assert len(names) == len(set(names))


# -- GET /vfleet/demand, end to end -------------------------------------------------------------


def demand(url: str, query: str = "", timeout_s: float = 10.0) -> dict[str, Any]:
    resp = Client(url, timeout_s).get("/vfleet/demand" + query)
    assert resp.status == 200, resp.body
    body: dict[str, Any] = resp.json()
    return body


def send_held(url: str) -> socket.socket:
    sock = raw_socket(url)
    sock.sendall(http_request("POST", "/v1/completions", HOLD))
    return sock


def test_demand_shows_held_requests_then_zero(router_factory: Factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory("--backend", dead, "--model", "cold", "--hold-timeout", "30")
    assert demand(router.url) == {
        "models": {"cold": {"inflight": 0, "held": 0, "requests": 0}},
        "endpoints": {dead: 0},
        "workers": 1,
    }
    socks = [send_held(router.url) for _ in range(3)]
    assert wait_for(lambda: demand(router.url)["models"]["cold"]["held"] == 3)
    for s in socks:
        s.close()
    assert wait_for(lambda: demand(router.url)["models"]["cold"]["held"] == 0)


def test_demand_needs_the_admin_key_when_keys_are_set(
    router_factory: Factory, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    admin = tmp_path / "admin"
    admin.write_text("adm\n")
    router = router_factory(
        "--backend", dead, "--model", "cold", "--api-key", "k1", "--admin-key-file", str(admin)
    )
    c = Client(router.url)
    assert c.get("/vfleet/demand").status == 401
    # a client key is not enough: the answer names engine URLs
    assert c.get("/vfleet/demand", headers={"Authorization": "Bearer k1"}).status == 401
    resp = c.get("/vfleet/demand", headers={"Authorization": "Bearer adm"})
    assert resp.status == 200 and resp.json()["workers"] == 1
    assert c.get("/vfleet/demand?wait_s=x", headers={"Authorization": "Bearer adm"}).status == 400


def test_demand_is_summed_over_workers(router_factory: Factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory(
        "--backend", dead, "--model", "cold", "--hold-timeout", "30", "--workers", "2"
    )
    # Both workers listening, connections spread over them (SO_REUSEPORT hashes each address).
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 2)
    n = 24
    socks = [send_held(router.url) for _ in range(n)]
    try:
        assert wait_for(lambda: demand(router.url)["models"]["cold"]["held"] == n, timeout_s=10)
        # Whichever worker answers, it answers for both.
        for _ in range(6):
            body = demand(router.url)
            assert body["workers"] == 2
            assert body["models"]["cold"]["held"] == n
        # /metrics too: whichever worker answers, its gauge is the sum over workers.
        shares = [
            metric_value(
                Client(router.url).get("/metrics").body.decode(),
                "vfleet_router_held_requests",
                model="cold",
            )
            for _ in range(20)
        ]
        assert set(shares) == {n}, shares
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: demand(router.url)["models"]["cold"]["held"] == 0)


def test_long_poll_answers_when_a_request_is_held(router_factory: Factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory(
        "--backend", dead, "--model", "cold", "--hold-timeout", "30", "--workers", "2"
    )
    assert demand(router.url, "?wait_s=0.05")["models"]["cold"]["held"] == 0  # times out empty
    answers: list[tuple[float, dict[str, Any]]] = []

    def poll() -> None:
        t0 = time.monotonic()
        body = demand(router.url, "?wait_s=25", timeout_s=40)
        answers.append((time.monotonic() - t0, body))

    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for t in pollers:
        t.start()
    time.sleep(0.2)  # the polls are waiting (nothing is held yet)
    assert answers == []
    sock = send_held(router.url)
    try:
        for t in pollers:
            t.join(timeout=30)
        assert len(answers) == 4
        for waited, body in answers:
            assert body["models"]["cold"]["held"] == 1
            assert waited < 25  # answered by the hold, not by its own deadline
    finally:
        sock.close()


def test_counts_return_to_zero_after_mixed_traffic(
    sim_factory: Factory, router_factory: Factory
) -> None:
    ok = sim_factory("--model", "m", "--profile", "instant", "--step-base-ms", "5")
    bad = sim_factory("--model", "m", "--profile", "instant", "--error-rate", "1.0")
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory(
        "--backend",
        ok.url,
        "--backend",
        bad.url,
        "--backend",
        f"{dead}=cold",
        "--policy",
        "round_robin",
        "--hold-timeout",
        "0.5",
    )
    c = Client(router.url, 20)
    statuses = [
        c.post("/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 3}).status
        for _ in range(8)
    ]
    assert sorted(set(statuses)) == [200, 500], statuses
    # A stream the client drops after its first chunk.
    body = {"model": "m", "prompt": "x", "max_tokens": 500, "ignore_eos": True, "stream": True}
    aborted = 0
    for _ in range(4):
        sock = raw_socket(router.url)
        sock.sendall(http_request("POST", "/v1/completions", body))
        first = sock.recv(4096)
        if first.startswith(b"HTTP/1.1 200"):
            aborted += 1
        sock.close()
    assert aborted >= 1
    # Held then left, and held until the deadline (503).
    gone = send_held(router.url)
    assert wait_for(lambda: demand(router.url)["models"]["cold"]["held"] == 1)
    gone.close()
    assert c.post("/v1/completions", HOLD).status == 503

    def settled() -> bool:
        d = demand(router.url)
        return all(m["inflight"] == 0 and m["held"] == 0 for m in d["models"].values()) and all(
            v == 0 for v in d["endpoints"].values()
        )

    assert wait_for(settled, timeout_s=10), demand(router.url)
    d = demand(router.url)
    assert d["models"]["m"]["requests"] == 8 + 4
    assert d["models"]["cold"]["requests"] == 1  # the 503; the client that left is not counted
    assert set(d["endpoints"]) == {ok.url, bad.url, dead}
    text = c.get("/metrics").body.decode()
    assert metric_value(text, "vfleet_router_held_requests", model="cold") == 0
    assert metric_value(text, "vfleet_router_endpoint_inflight", upstream=ok.url) == 0
