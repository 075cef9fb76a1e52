"""The router's own client edge, set from its command line: slow heads get 408, idle
keep-alive connections are closed, connections past `--max-connections` get 503, and the
open-file limit is raised at start (issue 14, item 1)."""

from __future__ import annotations

import select
from collections.abc import Callable
from pathlib import Path

from conftest import SimProcess
from faults.edgekit import CLOSED, connect, error_of, read_all, status_of
from httpclient import RawReader, request, wait_for

Factory = Callable[..., SimProcess]
HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_flags_set_the_routers_timeouts(router_factory: Factory) -> None:
    router = router_factory(
        "--backend",
        "http://127.0.0.1:9=m",
        "--client-header-timeout",
        "1",
        "--keepalive-timeout",
        "1",
    )
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with connect(router.url) as sock:
        for byte in head:  # 1 byte per 0.1 s until the router answers
            sock.send(bytes([byte]))
            if select.select([sock], [], [], 0.1)[0]:
                break
        reply = read_all(sock, timeout_s=10)
    assert status_of(reply) == 408 and reply.endswith(CLOSED)
    assert error_of(reply)["code"] == 408
    with connect(router.url) as sock:  # served, then left idle past the keep-alive timeout
        sock.sendall(HEALTH)
        reader = RawReader(sock)
        assert reader.response()[0] == 200
        assert reader.buf + read_all(sock, timeout_s=10) == CLOSED


def test_connections_past_the_routers_bound_get_503(router_factory: Factory) -> None:
    router = router_factory("--backend", "http://127.0.0.1:9=m", "--max-connections", "3")
    held = [connect(router.url) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(HEALTH)
            assert RawReader(sock).response()[0] == 200
        with connect(router.url) as extra:
            reply = read_all(extra)
        assert status_of(reply) == 503 and reply.endswith(CLOSED)
        held.pop().close()
        assert wait_for(lambda: _health(router) == 200, timeout_s=5)
    finally:
        for sock in held:
            sock.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit(router_factory: Factory) -> None:
    import resource

    router = router_factory("--backend", "http://127.0.0.1:9=m")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = Path(f"/proc/{router.proc.pid}/limits").read_text().splitlines()
    row = next(line for line in limits if line.startswith("Max open files"))
    soft = row.split()[3]
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(min(hard, 1 << 20))
    assert soft == want


def _health(sp: SimProcess) -> int:
    try:
        return request(sp.url, "GET", "/health", timeout=2)[0]
    except OSError:
        return 0
