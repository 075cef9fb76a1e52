"""Starts the router: registry, probes, upstream pool and HTTP listener, in one or N processes.

With `workers > 1` the parent forks children that each bind the same port with SO_REUSEPORT and
run their own event loop; every routing input comes from the engines (probes, metrics), so the
workers agree without talking to each other. With Kubernetes discovery each worker runs its own
list+watch (one watch per worker on the API server), so no worker depends on another's view.

The endpoint set is the union of its sources (static backends, endpoints file, endpoints URL,
Kubernetes), each replaced as a whole whenever that source has news.
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
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from vfleet.router.kubepods import PodEndpoint
    from vfleet.router.kubewatch import KubeTarget

log = logging.getLogger("vfleet.router")

Listed = list[tuple[str, tuple[str, ...]]]  # (url, static models) as Registry.set_endpoints takes
FIRST_LIST_WAIT_S = 5.0  # start-up waits this long at most for the first Kubernetes pod list


@dataclass(slots=True)
class Feeds:
    """The registry's endpoints as the union of named sources, each replaced as a whole."""

    registry: Registry
    sources: dict[str, Listed] = field(default_factory=dict)

    def set(self, source: str, endpoints: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        self.sources[source] = list(endpoints)
        self.registry.set_endpoints(ep for listed in self.sources.values() for ep in listed)

    def set_pods(self, pods: Sequence[PodEndpoint]) -> None:
        self.set("kubernetes", ((p.url, p.models) for p in pods))


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
        known_models=frozenset(cfg.models),
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


async def _probe_loop(cfg: RouterConfig, router: Router, feeds: Feeds) -> None:
    """Keep endpoint health and load current; re-read the endpoints file when it changes."""
    mtime = 0.0
    while True:
        if cfg.endpoints_file:
            with contextlib.suppress(OSError, ValueError):
                m = Path(cfg.endpoints_file).stat().st_mtime
                if m != mtime:
                    listed = load_endpoints_file(cfg.endpoints_file)
                    feeds.set("file", ((b.url, b.models) for b in listed))
                    mtime = m
        if cfg.endpoints_url:
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                base, _, path = cfg.endpoints_url.removeprefix("http://").partition("/")
                status, body = await http_get("http://" + base, "/" + path, cfg.health_timeout_s)
                if status == 200:
                    listed = parse_endpoints(orjson.loads(body), cfg.endpoints_url)
                    feeds.set("url", ((b.url, b.models) for b in listed))
        try:
            await probe_due(router.registry, time.monotonic(), cfg.health_interval_s,
                            cfg.health_timeout_s, router.backend_auth)  # fmt: skip
        except Exception:
            log.exception("health probe round failed")
        await asyncio.sleep(min(0.5, cfg.health_interval_s))


async def serve(
    cfg: RouterConfig, sock: socket.socket | None = None, kube: KubeTarget | None = None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = UpstreamPool(loop, cfg.connect_timeout_s)
    router = build_router(cfg, pool)
    feeds = Feeds(router.registry)
    feeds.set("static", ((b.url, b.models) for b in cfg.backends))
    tasks = []
    if kube is not None:
        from vfleet.router.kubewatch import Discovery

        discovery = Discovery(kube, feeds.set_pods)
        tasks.append(loop.create_task(_guarded(discovery.run(), "kubernetes discovery")))
        # Serve knowing the pods when the API server answers; without it, serve what is known
        # (static backends) and keep trying in the background.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(discovery.listed.wait(), FIRST_LIST_WAIT_S)
    # One probe round first, so the router starts knowing who is up.
    await probe_due(router.registry, time.monotonic(), cfg.health_interval_s,
                    cfg.health_timeout_s, router.backend_auth)  # fmt: skip
    tasks.append(loop.create_task(_probe_loop(cfg, router, feeds)))
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
        server.close()  # stop accepting; requests already in flight finish first
        await _drain(router, cfg.drain_timeout_s)
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pool.close()


async def _drain(router: Router, timeout_s: float) -> None:
    """Wait (bounded) until no request is in flight to any engine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(ep.inflight for ep in router.registry.endpoints.values()):
            return
        await asyncio.sleep(0.05)
    log.warning("drain: %.0fs passed with requests still in flight; stopping", timeout_s)


async def _guarded(work: Coroutine[Any, Any, None], what: str) -> None:
    """A background loop that must not die quietly: its end is logged loudly."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException:
        log.exception("%s stopped", what)
        raise
    log.error("%s stopped", what)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def run(cfg: RouterConfig) -> None:
    """Serve until SIGTERM/SIGINT; KubeSettingsError (before serving) for unusable settings."""
    kube = None
    if cfg.k8s_selector is not None:
        from vfleet.router.kubewatch import load_target

        kube = load_target(cfg)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per API request is noise
    if cfg.workers == 1:
        uvloop.run(serve(cfg, kube=kube))
        return
    first = _reuseport_socket(cfg.host, cfg.port)
    port = first.getsockname()[1]  # a fixed port for every worker, even when asked for 0
    children: list[int] = []
    for _ in range(cfg.workers):
        pid = os.fork()
        if pid == 0:
            sock = first if not children else _reuseport_socket(cfg.host, port)
            uvloop.run(serve(cfg, sock, kube))
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
