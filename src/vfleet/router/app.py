"""Starts the router: registry, probes, upstream pool and HTTP listener, in one or N processes.

With `workers > 1` the parent forks children that each bind the same port with SO_REUSEPORT and
run their own event loop; every routing input comes from the engines (probes, metrics), so the
workers agree without talking to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import orjson
import uvloop

from vfleet.http.server import HttpProtocol
from vfleet.router.config import RouterConfig, load_endpoints_file, parse_endpoints
from vfleet.router.endpoints import Registry
from vfleet.router.policies import Policy, make_policy
from vfleet.router.probe import http_get, probe_due
from vfleet.router.proxy import Limits, Router
from vfleet.router.ratelimit import RateLimiter
from vfleet.router.upstream import UpstreamPool

log = logging.getLogger("vfleet.router")


def build_router(cfg: RouterConfig, pool: UpstreamPool) -> Router:
    registry = Registry(aliases=dict(cfg.aliases))
    registry.set_endpoints((b.url, b.models) for b in cfg.backends)
    policies: dict[str, Policy] = {}

    def policy_for(model: str) -> Policy:
        p = policies.get(model)
        if p is None:
            p = policies[model] = make_policy(cfg.model_policies.get(model, cfg.policy))
        return p

    auth = b""
    if cfg.backend_api_key:
        auth = b"authorization: Bearer %s\r\n" % cfg.backend_api_key.encode()
    return Router(
        registry=registry,
        pool=pool,
        policy_for=policy_for,
        limits=Limits(
            cfg.connect_timeout_s, cfg.first_byte_timeout_s, cfg.idle_timeout_s, cfg.attempts
        ),
        api_keys=tuple(k.encode() for k in cfg.api_keys),
        backend_auth=auth,
        rate_limit=RateLimiter(cfg.rate_limit_per_minute) if cfg.rate_limit_per_minute else None,
        token_limit=(
            RateLimiter(cfg.token_limit_per_minute, burst=cfg.token_limit_per_minute)
            if cfg.token_limit_per_minute
            else None
        ),
        model_limits={
            model: Limits(
                over.get("connect_timeout_s", cfg.connect_timeout_s),
                over.get("first_byte_timeout_s", cfg.first_byte_timeout_s),
                over.get("idle_timeout_s", cfg.idle_timeout_s),
                int(over.get("attempts", cfg.attempts)),
            )
            for model, over in cfg.model_timeouts.items()
        },
    )


async def _probe_loop(cfg: RouterConfig, router: Router) -> None:
    """Keep endpoint health and load current; re-read the endpoints file when it changes."""
    mtime = 0.0
    static = [(b.url, b.models) for b in cfg.backends]
    while True:
        if cfg.endpoints_file:
            with contextlib.suppress(OSError, ValueError):
                m = Path(cfg.endpoints_file).stat().st_mtime
                if m != mtime:
                    listed = load_endpoints_file(cfg.endpoints_file)
                    router.registry.set_endpoints(static + [(b.url, b.models) for b in listed])
                    mtime = m
        if cfg.endpoints_url:
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                base, _, path = cfg.endpoints_url.removeprefix("http://").partition("/")
                status, body = await http_get("http://" + base, "/" + path, cfg.health_timeout_s)
                if status == 200:
                    listed = parse_endpoints(orjson.loads(body), cfg.endpoints_url)
                    router.registry.set_endpoints(static + [(b.url, b.models) for b in listed])
        try:
            await probe_due(router.registry, time.monotonic(), cfg.health_interval_s,
                            cfg.health_timeout_s, router.backend_auth)  # fmt: skip
        except Exception:
            log.exception("health probe round failed")
        await asyncio.sleep(min(0.5, cfg.health_interval_s))


async def serve(cfg: RouterConfig, sock: socket.socket | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = UpstreamPool(loop, cfg.connect_timeout_s)
    router = build_router(cfg, pool)
    # One probe round first, so the router starts knowing who is up.
    await probe_due(router.registry, time.monotonic(), cfg.health_interval_s,
                    cfg.health_timeout_s, router.backend_auth)  # fmt: skip
    prober = loop.create_task(_probe_loop(cfg, router))
    max_body = cfg.max_body_bytes
    if sock is None:
        server = await loop.create_server(
            lambda: HttpProtocol(router.handle, max_body),
            cfg.host,
            cfg.port,
            reuse_address=True,
            backlog=4096,
        )
    else:
        server = await loop.create_server(
            lambda: HttpProtocol(router.handle, max_body), sock=sock, backlog=4096
        )
    port = server.sockets[0].getsockname()[1]
    gc.freeze()
    healthy = sum(ep.healthy for ep in router.registry.endpoints.values())
    print(f"vfleet router: {len(router.registry.endpoints)} endpoints ({healthy} healthy), "
          f"ready on http://{cfg.host}:{port}", file=sys.stderr, flush=True)  # fmt: skip
    try:
        await stop.wait()
    finally:
        server.close()
        prober.cancel()
        pool.close()


def _reuseport_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def run(cfg: RouterConfig) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if cfg.workers == 1:
        uvloop.run(serve(cfg))
        return
    first = _reuseport_socket(cfg.host, cfg.port)
    port = first.getsockname()[1]  # a fixed port for every worker, even when asked for 0
    children: list[int] = []
    for _ in range(cfg.workers):
        pid = os.fork()
        if pid == 0:
            sock = first if not children else _reuseport_socket(cfg.host, port)
            uvloop.run(serve(cfg, sock))
            os._exit(0)
        children.append(pid)
    first.close()

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
