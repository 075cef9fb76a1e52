"""Key budgets shared by router replicas (issue 16 item 6): real `vfleet router` processes pointed
at each other with `--peer`, in front of a `vfleet sim` engine, all on 127.0.0.1.

While the peers answer, a key's budget is one budget across the replicas: one replica may use
all of it, and what it used is refused on the other once a poll has carried it there. When a peer
stops answering, each replica falls back to its share (limit / replicas). A replica with two
workers (SO_REUSEPORT) counts both in what it tells its peers. Peers found in Kubernetes (a fake
API server) are asked too, and set how many replicas share a limit.

No timing thresholds: a test waits (bounded) for the poll counter a replica reports to move past
the moment it cares about, and the day-long token window cannot expire during a test. The one
assertion on a 6-second request window is made only while that window still holds the charges.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProcess, start_router, start_sim
from httpclient import Client, free_port, wait_for

pytestmark = pytest.mark.timeout(150)

ADMIN = "sk-admin-peers"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}
SIM = ("--profile", "instant", "--max-model-len", "1024", "--num-gpu-blocks", "256")
TOKENS_PER_DAY = 1000
REQUESTS_PER_MINUTE = 300  # a burst of 30 in any 6 s (router.ratelimit.requests_window)
BURST, BURST_WINDOW_S = 30, 6.0
TENANTS = f"""
keys:
  - {{name: tokens, key: sk-tokens, tokens_per_day: {TOKENS_PER_DAY}}}
  - {{name: calls, key: sk-calls, requests_per_minute: {REQUESTS_PER_MINUTE}}}
"""
ASK: Any = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
MAX_TRIES = 80  # requests sent to exhaust a budget, at most


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    sp = start_sim("--model", "alpha", *SIM)
    yield sp
    sp.stop()


Pair = Callable[..., tuple[SimProcess, SimProcess]]


@pytest.fixture
def pair(tmp_path: Path, sim: SimProcess) -> Iterator[Pair]:
    """Two router replicas given the same peer list, both of them, as one config shared by
    every replica would (each knows itself in it); B with `b_workers` workers."""
    tenants, admin = tmp_path / "tenants.yaml", tmp_path / "admin.txt"
    tenants.write_text(TENANTS)
    admin.write_text(ADMIN + "\n")
    started: list[SimProcess] = []

    def start(b_workers: int = 1) -> tuple[SimProcess, SimProcess]:
        ports = free_port(), free_port()
        common = ("--backend", sim.url, "--tenants-file", str(tenants))
        common += ("--admin-key-file", str(admin), "--health-interval", "0.2")
        common += tuple(a for p in ports for a in ("--peer", f"http://127.0.0.1:{p}"))
        for mine, workers in ((ports[0], 1), (ports[1], b_workers)):
            router = start_router(*common, "--port", str(mine), "--workers", str(workers))
            started.append(router)
            assert wait_for(lambda r=router, n=workers: _ready(r) == n, timeout_s=20)
        a, b = started[-2:]
        for router in (a, b):  # each has an answer from the other, and knows itself
            assert wait_for(lambda r=router: _replicas(r)["known"] == 2, timeout_s=20), r_log(
                router
            )
            # itself is known once it answered itself (it cannot before its port opens)
            assert wait_for(lambda r=router: _replicas(r)["expected"] == 2, timeout_s=20)
        return a, b

    yield start
    for router in started:
        router.stop()


def _ready(router: SimProcess) -> int:
    return sum("ready on" in line for line in router.log)


def r_log(router: SimProcess) -> str:
    return "".join(router.log)


def _usage(router: SimProcess) -> dict[str, Any]:
    got = Client(router.url).get("/vfleet/usage", headers=ADMIN_HEADERS)
    assert got.status == 200, got.body
    body: dict[str, Any] = json.loads(got.body)
    return body


def _replicas(router: SimProcess) -> dict[str, int]:
    replicas: dict[str, int] = _usage(router)["replicas"]
    return replicas


def _polled_twice(router: SimProcess) -> None:
    """Wait until `router` has written two polls of its peers that started after now."""
    start = _replicas(router)["polls"]
    assert wait_for(lambda: _replicas(router)["polls"] >= start + 2, timeout_s=20)


def _ask(router: SimProcess, key: str) -> tuple[int, int]:
    """(status, tokens the engine reported) of one chat request, on a fresh connection."""
    got = Client(router.url).post(
        "/v1/chat/completions", ASK, headers={"authorization": f"Bearer {key}"}
    )
    if got.status != 200:
        assert got.status == 429, got.body
        assert json.loads(got.body)["error"]["code"] == 429
        return got.status, 0
    usage = json.loads(got.body)["usage"]
    return 200, int(usage["prompt_tokens"]) + int(usage["completion_tokens"])


def _exhaust(router: SimProcess, key: str) -> list[int]:
    """Tokens of each request admitted before the first refusal (bounded)."""
    used: list[int] = []
    for _ in range(MAX_TRIES):
        status, tokens = _ask(router, key)
        if status == 429:
            return used
        used.append(tokens)
    raise AssertionError(f"{MAX_TRIES} requests and no refusal")


def test_one_token_budget_across_two_replicas_one_with_two_workers(pair: Pair) -> None:
    a, b = pair(b_workers=2)
    on_a = _exhaust(a, "sk-tokens")
    # The whole budget, not the half a replica holds alone: B's usage (none) is known.
    assert sum(on_a) > TOKENS_PER_DAY / 2
    _polled_twice(b)
    replicas = _replicas(b)
    assert (replicas["known"], replicas["expected"]) == (2, 2)
    seen = _usage(b)  # B's own usage only: A's is not echoed back to A
    assert "tokens" not in seen["keys"]
    on_b = _exhaust(b, "sk-tokens")  # fresh connections: either of B's workers answers
    assert on_b == []  # A spent it: B refuses from the first request
    # together at most the budget and the one request whose estimate fell short of its usage
    assert sum(on_a) + sum(on_b) <= TOKENS_PER_DAY + max(on_a)
    shown = _usage(a)["keys"]["tokens"]["tokens_day"]
    assert sum(shown["ages"]) == sum(on_a)  # what A tells its peers: what it charged


def test_one_request_burst_across_two_replicas(pair: Pair) -> None:
    a, b = pair()
    first = time.monotonic()
    admitted = 0
    for _ in range(MAX_TRIES):
        if _ask(a, "sk-calls")[0] == 429:
            break
        admitted += 1
    assert admitted > BURST // 2  # more than A's share alone: the burst is shared
    _polled_twice(b)
    status, _ = _ask(b, "sk-calls")
    if time.monotonic() - first < BURST_WINDOW_S:  # A's charges are all still in the window
        assert status == 429
    assert _replicas(b)["known"] == 2


def test_a_peer_that_stops_answering_leaves_each_replica_its_share(pair: Pair) -> None:
    a, b = pair()
    before = _exhaust_some(a, 2)
    b.stop()
    assert wait_for(lambda: _replicas(a)["known"] == 1, timeout_s=20)
    assert _replicas(a)["expected"] == 2
    on_a = before + _exhaust(a, "sk-tokens")
    assert 0 < sum(on_a) <= TOKENS_PER_DAY / 2 + max(on_a)
    assert any("no key usage" in line for line in a.log)


def _exhaust_some(router: SimProcess, n: int) -> list[int]:
    used = []
    for _ in range(n):
        status, tokens = _ask(router, "sk-tokens")
        assert status == 200
        used.append(tokens)
    return used


def test_a_replica_whose_peer_never_answers_keeps_to_its_share(
    tmp_path: Path, sim: SimProcess
) -> None:
    tenants, admin = tmp_path / "tenants.yaml", tmp_path / "admin.txt"
    tenants.write_text(TENANTS)
    admin.write_text(ADMIN + "\n")
    nobody = f"http://127.0.0.1:{free_port()}"
    router = start_router(
        *("--backend", sim.url, "--tenants-file", str(tenants)),
        *("--admin-key-file", str(admin), "--peer", nobody),
    )
    try:
        replicas = _replicas(router)
        assert (replicas["known"], replicas["expected"]) == (1, 2)  # its share: half
        on_a = _exhaust(router, "sk-tokens")
        assert 0 < sum(on_a) <= TOKENS_PER_DAY / 2 + max(on_a)
    finally:
        router.stop()


def test_the_usage_route_is_for_the_admin_key_and_get_only(pair: Pair) -> None:
    a, _ = pair()
    client = Client(a.url)
    for headers in ({}, {"authorization": "Bearer sk-tokens"}):  # a client key is not enough
        got = client.get("/vfleet/usage", headers=headers)
        assert got.status == 401
        assert json.loads(got.body)["error"]["type"] == "authentication_error"
    got = client.post("/vfleet/usage", {}, headers=ADMIN_HEADERS)
    assert got.status == 405 and got.headers["allow"] == "GET"
    assert json.loads(got.body)["error"]["code"] == 405


def test_peers_found_in_kubernetes_share_the_budget_and_set_the_replica_count(
    tmp_path: Path, sim: SimProcess
) -> None:
    from kubefake import FakeKube

    tenants, admin = tmp_path / "tenants.yaml", tmp_path / "admin.txt"
    tenants.write_text(TENANTS)
    admin.write_text(ADMIN + "\n")
    labels = {"app.kubernetes.io/name": "vfleet", "app.kubernetes.io/component": "router"}
    common = ("--backend", sim.url, "--tenants-file", str(tenants), "--admin-key-file", str(admin))
    with FakeKube() as kube:
        peer = start_router(*common, "--peer", f"http://127.0.0.1:{free_port()}")
        me = start_router(
            *common,
            *("--k8s-api-url", kube.url, "--k8s-selector", "app.kubernetes.io/component=engine"),
            *("--k8s-peer-selector", ",".join(f"{k}={v}" for k, v in labels.items())),
        )
        try:
            assert _replicas(me)["expected"] == 1  # no router pod listed yet: alone
            kube.add_pod(socket.gethostname(), port=me.port, labels=labels)  # itself: left out
            kube.add_pod("router-peer", port=peer.port, labels=labels)
            assert wait_for(lambda: _replicas(me)["known"] == 2, timeout_s=20), r_log(me)
            assert _replicas(me)["expected"] == 2
            kube.delete("router-peer")  # gone from the Deployment: the whole limit is its own
            assert wait_for(lambda: _replicas(me)["expected"] == 1, timeout_s=20), r_log(me)
            assert _replicas(me)["known"] == 1
        finally:
            me.stop()
            peer.stop()
