"""Router replicas that serve TLS share key budgets over HTTPS, trusting exactly the certificate
they share (as the KEDA scaler's demand does, router.keda.peertls): real `vfleet router`
processes on 127.0.0.1 with a certificate made here. A replica with another certificate is not
trusted: its usage is not counted and the other keeps to its share."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProcess, start_sim
from httpclient import free_port, wait_for
from tlskit import Pair, TlsRouter, client_context, make_pair, start_tls_router, write_pair

pytestmark = pytest.mark.timeout(150)

ADMIN = "sk-admin-peers-tls"
TENANTS = "keys:\n  - {name: tokens, key: sk-tokens, tokens_per_day: 1000}\n"
ASK: Any = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    sp = start_sim("--model", "alpha", "--profile", "instant", "--max-model-len", "1024")
    yield sp
    sp.stop()


def _https(router: TlsRouter, pair: Pair, method: str, path: str, key: str) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", router.port, timeout=10, context=client_context(pair)
    )
    try:
        body = json.dumps(ASK) if method == "POST" else None
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        conn.request(method, path, body, headers)
        got = conn.getresponse()
        return got.status, json.loads(got.read())
    finally:
        conn.close()


def _known(router: TlsRouter, pair: Pair) -> int:
    status, body = _https(router, pair, "GET", "/vfleet/usage", ADMIN)
    assert status == 200, body
    known: int = body["replicas"]["known"]
    return known


@pytest.fixture
def start(tmp_path: Path, sim: SimProcess) -> Iterator[Any]:
    tenants, admin = tmp_path / "tenants.yaml", tmp_path / "admin.txt"
    tenants.write_text(TENANTS)
    admin.write_text(ADMIN + "\n")
    started: list[TlsRouter] = []

    def run(name: str, pair: Pair, port: int, peer_port: int) -> TlsRouter:
        cert, key = write_pair(tmp_path, name, pair)
        args = ("--backend", sim.url, "--tls-cert", str(cert), "--tls-key", str(key))
        args += ("--tenants-file", str(tenants), "--admin-key-file", str(admin))
        args += ("--peer", f"https://127.0.0.1:{peer_port}", "--port", str(port))
        router = start_tls_router(args=args)
        started.append(router)
        return router

    yield run
    for router in started:
        router.stop()


def test_replicas_sharing_a_certificate_share_a_budget_over_https(start: Any) -> None:
    shared = make_pair("router")
    port_a, port_b = free_port(), free_port()
    a = start("a", shared, port_a, port_b)
    b = start("b", shared, port_b, port_a)
    for router in (a, b):
        assert wait_for(lambda r=router: _known(r, shared) == 2, timeout_s=20), "".join(router.log)
    used = 0
    for _ in range(60):  # A spends the whole budget (more than its half alone)
        status, body = _https(a, shared, "POST", "/v1/chat/completions", "sk-tokens")
        if status == 429:
            break
        used += body["usage"]["total_tokens"]
    assert used > 500
    start_polls = _https(b, shared, "GET", "/vfleet/usage", ADMIN)[1]["replicas"]["polls"]
    assert wait_for(
        lambda: (
            _https(b, shared, "GET", "/vfleet/usage", ADMIN)[1]["replicas"]["polls"]
            >= start_polls + 2
        ),
        timeout_s=20,
    )
    status, body = _https(b, shared, "POST", "/v1/chat/completions", "sk-tokens")
    assert status == 429, body


def test_a_peer_with_another_certificate_is_not_counted(start: Any) -> None:
    mine, other = make_pair("mine"), make_pair("other")
    port_a, port_b = free_port(), free_port()
    a = start("a", mine, port_a, port_b)
    b = start("b", other, port_b, port_a)
    assert _https(b, other, "GET", "/vfleet/usage", ADMIN)[0] == 200  # B answers its own
    before = _https(a, mine, "GET", "/vfleet/usage", ADMIN)[1]["replicas"]["polls"]
    assert wait_for(
        lambda: (
            _https(a, mine, "GET", "/vfleet/usage", ADMIN)[1]["replicas"]["polls"] >= before + 2
        ),
        timeout_s=20,
    )
    status, body = _https(a, mine, "GET", "/vfleet/usage", ADMIN)
    assert status == 200 and body["replicas"]["known"] == 1  # B's usage: not trusted
