"""Health probes: the loop that keeps the registry's view of each engine current.

Each endpoint due for a probe gets GET /health, then /v1/models (what it serves, LoRA adapters
included) and /metrics (its load). Failures eject it with backoff; success puts it back. A
stdlib-only minimal HTTP/1.1 GET keeps this off the request hot path and free of extra clients.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from vfleet.router.endpoints import Endpoint, Registry, parse_load
from vfleet.router.upstream import host_port

log = logging.getLogger("vfleet.router.probe")


async def http_get(
    url: str, path: str, timeout_s: float, headers: bytes = b""
) -> tuple[int, bytes]:
    host, port = host_port(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        authority = url.removeprefix("http://").partition("/")[0]
        writer.write(b"GET %s HTTP/1.1\r\nhost: %s\r\nconnection: close\r\n%s\r\n"
                     % (path.encode(), authority.encode(), headers))  # fmt: skip
        raw = await asyncio.wait_for(reader.read(-1), timeout_s)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(out)


async def probe(ep: Endpoint, timeout_s: float, auth: bytes) -> bool:
    """Refresh one endpoint; True when it answered /health with 200."""
    try:
        status, _ = await http_get(ep.url, "/health", timeout_s)
        if status != 200:
            return False
        status, body = await http_get(ep.url, "/v1/models", timeout_s, auth)
        if status == 200:
            data = orjson.loads(body).get("data", [])
            ep.cards = [c for c in data if isinstance(c, dict) and "id" in c]
        status, body = await http_get(ep.url, "/metrics", timeout_s)
        if status == 200:
            ep.running, ep.waiting, ep.kv_usage = parse_load(body.decode(errors="replace"))
        return True
    except (OSError, TimeoutError, ValueError, IndexError, orjson.JSONDecodeError):
        return False


async def probe_due(registry: Registry, now: float, interval_s: float, timeout_s: float,
                    auth: bytes) -> None:  # fmt: skip
    due = [ep for ep in registry.endpoints.values() if ep.next_probe_at <= now]
    results = await asyncio.gather(*(probe(ep, timeout_s, auth) for ep in due))
    for ep, ok in zip(due, results, strict=True):
        was = ep.healthy
        if ok:
            ep.mark_up(now, interval_s)
        else:
            ep.mark_down(now, interval_s)
        if was != ep.healthy:
            log.warning("endpoint %s is %s", ep.url, "up" if ep.healthy else "down")
