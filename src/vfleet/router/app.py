"""Starts the router: registry, probes, upstream pool and HTTP listener, in one or N processes.

With `workers > 1` the parent forks children that each bind the same port with SO_REUSEPORT and
run their own event loop; every routing input comes from the engines (probes, metrics), so the
workers agree without talking to each other. With Kubernetes discovery each worker runs its own
list+watch (one watch per worker on the API server), so no worker depends on another's view.
The parent supervises them: a worker that exits (killed, out of memory, crashed) before the
shutdown signal is forked again into its slot after a backoff (`wait_workers`, router.restarts).
With a KEDA port the scaler gets a process of its own (`ScalerProcess`), forked and supervised
like a worker and stopped after the workers: the parent stays single-threaded (grpc's threads
would make every later fork of a worker unsafe) and never loads grpc.

The endpoint set is the union of its sources (static backends, endpoints file, endpoints URL,
Kubernetes), each replaced as a whole whenever that source has news. The endpoints file is
checked every FILE_CHECK_S (a stat), so an engine the supervisor lists is known in milliseconds.

The demand table (router.demand) is created here, before the workers are forked, so they all
share it; `run()` has it in the parent too, for anything that reports demand (a scaler). The
metrics table (router.sharedmetrics) is made the same way: any worker's /metrics sums them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
import uvloop
import yaml

from vfleet.errors import Unauthorized, error_json
from vfleet.http import client
from vfleet.http.limits import raise_nofile_limit
from vfleet.http.server import Connection, Edge, Handler, Request
from vfleet.restarts import Slots
from vfleet.router import auth, filestamp
from vfleet.router.activator import Activator, HoldLimits
from vfleet.router.config import BackendSpec, RouterConfig, load_endpoints_file, parse_endpoints
from vfleet.router.demand import DemandRow, DemandTable
from vfleet.router.ejection import TICK_S as BREAKER_TICK_S
from vfleet.router.ejection import Ejector
from vfleet.router.endpoints import Registry
from vfleet.router.kvroute import FeedFactory, KvRouting
from vfleet.router.kvwire import Publisher
from vfleet.router.metrics import WORKER_GAUGES, RouterMetrics, ScalerMetrics
from vfleet.router.policies import KvAffinity, Policy, make_policy
from vfleet.router.probe import FastProber
from vfleet.router.prober import Prober
from vfleet.router.proxy import Limits, Router
from vfleet.router.sharedlimits import LimitRow, LimitTable
from vfleet.router.sharedmetrics import MetricsRow, MetricsTable
from vfleet.router.tenants import Defaults, Tenancy
from vfleet.router.tls import CertReloader
from vfleet.router.tracing import Tracer
from vfleet.router.ui import StatusPage
from vfleet.router.upstream import UpstreamPool

if TYPE_CHECKING:
    from vfleet.router.kubepods import PodEndpoint
    from vfleet.router.kubewatch import KubeTarget

log = logging.getLogger("vfleet.router")

# (url, static models, starting) as Registry.set_endpoints takes them
Listed = list[tuple[str, tuple[str, ...], bool]]
FIRST_LIST_WAIT_S = 5.0  # start-up waits this long at most for the first Kubernetes pod list
FILE_CHECK_S = 0.05  # seconds between checks of the endpoints file for changes
# Seconds between sweeps for departed endpoints' series and idle pools: at most this, and
# often enough for a short grace period to be kept (a sweep is a pass over this worker's series).
METRICS_SWEEP_S = 1.0
# With keys on, these need the admin key: they name engine URLs and the fleet's load (and what
# is under /ui/). KEDA peer routers and `vfleet up` read /vfleet/demand with an admin key.
# Peer routers read /vfleet/usage (per-key usage, router.peerpoll) the same way.
ADMIN_ROUTES = ("/metrics", "/ui", "/vfleet/demand", "/vfleet/usage")
ADMIN_CHALLENGE = b'www-authenticate: Bearer realm="vfleet-admin"\r\n'


@dataclass(slots=True)
class Feeds:
    """The registry's endpoints as the union of named sources, each replaced as a whole."""

    registry: Registry
    on_change: Callable[[], None] = lambda: None
    sources: dict[str, Listed] = field(default_factory=dict)
    # KV-event publishers each source names (url -> rank 0's ZMQ endpoint and the rank count),
    # for the kv policy.
    kv_sources: dict[str, dict[str, Publisher]] = field(default_factory=dict)

    def set(self, source: str, endpoints: Iterable[tuple[str, tuple[str, ...], bool]]) -> None:
        self.sources[source] = list(endpoints)
        self.registry.set_endpoints(ep for listed in self.sources.values() for ep in listed)
        self.on_change()

    def set_specs(self, source: str, specs: Iterable[BackendSpec]) -> None:
        specs = list(specs)
        self.kv_sources[source] = {
            b.url: Publisher(b.kv_events, b.kv_ranks) for b in specs if b.kv_events
        }
        self.set(source, ((b.url, b.models, b.starting) for b in specs))

    def set_pods(self, pods: Sequence[PodEndpoint]) -> None:
        self.kv_sources["kubernetes"] = {
            p.url: Publisher(p.kv_events, p.kv_ranks) for p in pods if p.kv_events
        }
        self.set("kubernetes", ((p.url, p.models, False) for p in pods))

    def publishers(self, named: Mapping[str, str]) -> dict[str, Publisher]:
        """The publisher of each listed engine that has one: its source's, else `named`'s."""
        out = {url: Publisher(named[url]) for url in self.registry.endpoints if url in named}
        for listed in self.kv_sources.values():
            out.update((u, e) for u, e in listed.items() if u in self.registry.endpoints)
        return out


def uses_kv(cfg: RouterConfig) -> bool:
    """Whether any model routes with the kv policy (then KV events are subscribed to)."""
    return cfg.policy == "kv" or "kv" in cfg.model_policies.values()


def hold_limits(cfg: RouterConfig) -> Callable[[str], HoldLimits]:
    """Each model's hold timeout and queue bound: its model_hold entry, else the defaults."""
    default = HoldLimits(cfg.hold_timeout_s, cfg.hold_max_queued)
    per_model = {
        model: HoldLimits(
            over.get("timeout_s", cfg.hold_timeout_s),
            int(over.get("max_queued", cfg.hold_max_queued)),
        )
        for model, over in cfg.model_hold.items()
    }
    return lambda model: per_model.get(model, default)


def admin_gate(
    handle: Handler, keyed: bool, admin_keys: tuple[bytes, ...], router: Router
) -> Handler:
    """`handle`, with ADMIN_ROUTES open only to an admin key once any key is configured.

    /metrics and /vfleet/demand name every engine URL, model and load figure: with client
    keys on they are not for clients. Without an admin key configured such routes answer 401
    to everyone. With no keys at all nothing changes (and `handle` is returned as it is, off
    the hot path)."""
    if not keyed and not admin_keys:
        return handle
    if admin_keys:
        message = "This route needs the admin key."
    else:
        message = (
            "This route needs the admin key, and the router has none: give it one "
            "(--admin-key-file or VFLEET_ADMIN_KEY)."
        )
    refusal = error_json(Unauthorized(message))

    def gated(req: Request, conn: Connection) -> None:
        path = req.path
        if path in ADMIN_ROUTES or path.startswith("/ui/"):
            header = req.headers.get(b"authorization", b"")
            if auth.verify(header, admin_keys) is None:
                router.metrics.rejected["admin_auth"] += 1
                conn.respond(401, refusal, extra_headers=ADMIN_CHALLENGE)
                return
        handle(req, conn)

    return gated


def build_router(
    cfg: RouterConfig,
    pool: UpstreamPool,
    demand: DemandRow,
    loop: asyncio.AbstractEventLoop,
    metrics: MetricsRow | None = None,
    limits: LimitRow | None = None,
    kv_feed: FeedFactory | None = None,
) -> Router:
    """The router of one worker; `metrics`, `limits`: its rows of the shared metrics and limit
    tables (tables of its own when None); `kv_feed`: makes the KV-event subscriptions of a kv
    policy (vfleet.kvsub.KvFeed, which `vfleet router` hands in; None: no events)."""
    registry = Registry(aliases=dict(cfg.aliases), known=cfg.models)
    registry.set_endpoints((b.url, b.models, b.starting) for b in cfg.backends)
    policies: dict[str, Policy] = {}

    kv = KvRouting(loop, kv_feed) if uses_kv(cfg) else None

    def policy_for(model: str) -> Policy:
        p = policies.get(model)
        if p is None:
            name = cfg.model_policies.get(model, cfg.policy)
            p = policies[model] = make_policy(name, kv.index if kv is not None else None)
            if isinstance(p, KvAffinity):
                p.observe = router_metrics.kv_decision
        return p

    auth = b""
    if cfg.backend_api_key:
        auth = b"authorization: Bearer %s\r\n" % cfg.backend_api_key.encode()
    router_metrics = RouterMetrics(metrics, demand.table)
    if kv is not None:
        kv.count = router_metrics.kv_chain
        kv.waited = router_metrics.kv_chain_wait
    router = Router(
        registry=registry,
        pool=pool,
        policy_for=policy_for,
        activator=Activator(loop.time, loop.call_later, hold_limits(cfg)),
        demand=demand,
        metrics=router_metrics,
        release_max_inflight=cfg.hold_release_max_inflight,
        limits=Limits(
            cfg.connect_timeout_s,
            cfg.first_byte_timeout_s,
            cfg.idle_timeout_s,
            cfg.attempts,
            cfg.retry_5xx,
        ),
        api_keys=tuple(k.encode() for k in cfg.api_keys),
        backend_auth=auth,
        known_models=frozenset(cfg.models),
        kv=kv,
        tenancy=tenancy(cfg, limits, router_metrics),
        model_limits={
            model: Limits(
                over.get("connect_timeout_s", cfg.connect_timeout_s),
                over.get("first_byte_timeout_s", cfg.first_byte_timeout_s),
                over.get("idle_timeout_s", cfg.idle_timeout_s),
                int(over.get("attempts", cfg.attempts)),
                cfg.retry_5xx,
            )
            for model, over in cfg.model_timeouts.items()
        },
    )
    breaker = cfg.breaker_policy()
    if breaker is not None:
        router.ejector = Ejector(
            registry,
            breaker,
            router_metrics.breaker_event,
            router.endpoint_up,
            router_metrics.breaker_state,
        )
    return router


def tenancy(cfg: RouterConfig, row: LimitRow | None, metrics: RouterMetrics) -> Tenancy | None:
    """Per-key identity, allowlists and budgets, when a tenants file or a limit is set (else
    None: the request path does not look for them)."""
    if not cfg.tenancy:
        return None

    def record(key: str, model: str, prompt: int, completion: int) -> None:
        if prompt:
            metrics.key_tokens.inc((key, model, "prompt"), prompt)
        if completion:
            metrics.key_tokens.inc((key, model, "completion"), completion)

    def count(key: str, model: str, code: int) -> None:
        metrics.key_requests.inc((key, model, code))

    return Tenancy(
        row if row is not None else LimitTable.create(1, peers=cfg.shares_limits).row(0),
        tuple(k.encode() for k in cfg.api_keys),
        cfg.tenants_file,
        Defaults(cfg.rate_limit_per_minute, cfg.token_limit_per_minute),
        record,
        count,
        peered=cfg.shares_limits,
    )


async def _watch_file(path: str, feeds: Feeds) -> None:
    """Re-read the endpoints file whenever it changes (checked every FILE_CHECK_S); until it is
    written, and if it goes away, the other sources are served."""
    await filestamp.watch(
        path,
        "endpoints file",
        lambda: feeds.set_specs("file", load_endpoints_file(path)),
        lambda: None,
        FILE_CHECK_S,
        (OSError, ValueError, yaml.YAMLError),
    )


async def _poll_feed(cfg: RouterConfig, url: str, feeds: Feeds) -> None:
    """Poll an HTTP feed of endpoints."""
    base, _, path = url.removeprefix("http://").partition("/")
    while True:
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            got = await client.get("http://" + base, "/" + path, cfg.health_timeout_s)
            if got.status == 200:
                feeds.set_specs("url", parse_endpoints(orjson.loads(got.body), url))
        await asyncio.sleep(min(0.5, cfg.health_interval_s))


async def serve(
    cfg: RouterConfig,
    sock: socket.socket | None = None,
    kube: KubeTarget | None = None,
    demand: DemandRow | None = None,
    metrics: MetricsRow | None = None,
    limits: LimitRow | None = None,
    kv_feed: FeedFactory | None = None,
    peer_kube: KubeTarget | None = None,
) -> None:
    """One worker: `demand`, `metrics` and `limits` are its rows of the shared tables (tables of
    its own when None); `kv_feed`: see `build_router`; `peer_kube`: Kubernetes discovery of the
    peer routers (worker 0 asks them for key usage, router.peerpoll)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = UpstreamPool(loop, cfg.connect_timeout_s)
    if metrics is None:
        metrics = MetricsTable.create(1).row(0, cfg.metrics_grace_s)
    router = build_router(
        cfg, pool, demand or DemandTable.create(1).row(0), loop, metrics, limits, kv_feed
    )
    for model in cfg.models:
        router.demand.model(model)  # listed (at zero) in /vfleet/demand from the start
    feeds = Feeds(router.registry, router.endpoints_changed)
    kv = router.kv
    if kv is not None:
        kv.backend_auth = router.backend_auth

        def changed() -> None:
            router.endpoints_changed()
            kv.set_publishers(feeds.publishers(cfg.kv_events))

        feeds.on_change = changed
    feeds.set_specs("static", cfg.backends)
    tasks = []
    if kube is not None:
        from vfleet.router.kubewatch import Discovery

        discovery = Discovery(kube, feeds.set_pods)
        tasks.append(loop.create_task(_guarded(discovery.run(), "kubernetes discovery")))
        # Serve knowing the pods when the API server answers; without it, serve what is known
        # (static backends) and keep trying in the background.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(discovery.listed.wait(), FIRST_LIST_WAIT_S)
    if cfg.endpoints_file:
        with contextlib.suppress(OSError, ValueError, yaml.YAMLError):
            feeds.set_specs("file", load_endpoints_file(cfg.endpoints_file))
        tasks.append(
            loop.create_task(
                _guarded(_watch_file(cfg.endpoints_file, feeds), "endpoints file watch")
            )
        )
    if cfg.autoscale_file:
        from vfleet.router.autoscaled import watch_desired

        def desired(counts: dict[str, int]) -> None:
            router.metrics.local_desired = counts

        watch = watch_desired(cfg.autoscale_file, desired)
        tasks.append(loop.create_task(_guarded(watch, "autoscale file watch")))
    if cfg.endpoints_url:
        tasks.append(
            loop.create_task(_guarded(_poll_feed(cfg, cfg.endpoints_url, feeds), "endpoints feed"))
        )
    # Endpoints are known before the port opens, and probed: the port opens once each model
    # has a ready engine (or every probe answered, or the probe timeout passed), so no request
    # meets an empty registry, and a hung engine delays neither the start nor its peers.
    prober = Prober(
        router.registry,
        cfg.health_interval_s,
        cfg.health_timeout_s,
        router.backend_auth,
        router.endpoint_up,
    )
    await prober.first_round()
    tasks.append(loop.create_task(_guarded(prober.run(), "health probes")))
    fast = FastProber(
        router.registry,
        cfg.health_interval_s,
        cfg.health_timeout_s,
        router.backend_auth,
        lambda: router.activator.queues,
        router.endpoint_up,
        prober.order,  # one order of results: a late answer never overwrites a newer one
    )
    tasks.append(loop.create_task(_guarded(fast.run(), "fast probes")))
    tasks.append(loop.create_task(_guarded(_sweep_departed(router, pool), "metrics sweep")))
    if router.ejector is not None:
        tasks.append(loop.create_task(_guarded(_breaker_ticks(router.ejector), "breakers")))
    if cfg.otlp_endpoint is not None:
        router.tracer = Tracer(cfg.otlp_endpoint, count=router.metrics.span_outcome)
        tasks.append(loop.create_task(_guarded(router.tracer.run(), "OTLP span export")))
    if router.tenancy is not None and cfg.tenants_file:
        tasks.append(loop.create_task(_guarded(router.tenancy.watch(), "tenants file watch")))
    if router.tenancy is not None and router.tenancy.peered and router.tenancy.row.index == 0:
        from vfleet.router.peerpoll import peer_polling

        poller, finding = peer_polling(cfg, router.tenancy, peer_kube)
        if finding is not None:
            tasks.append(loop.create_task(_guarded(finding, "peer router discovery")))
        await poller.poll()  # before the port opens: the peers' usage counts from the start
        tasks.append(loop.create_task(_guarded(poller.run(), "peer key usage polls")))
    tls = None
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        tls = CertReloader(cfg.tls_cert, cfg.tls_key)
        tasks.append(loop.create_task(_guarded(tls.run(cfg.tls_reload_s), "TLS reload")))
    # /ui is answered before the proxy (never forwarded), and behind the admin gate.
    page = StatusPage(router, lambda model: cfg.model_policies.get(model, cfg.policy))
    inner = page.wrap(router.handle)
    if router.tenancy is not None:
        from vfleet.router.peerpoll import usage_route

        inner = usage_route(router.tenancy, inner, time.monotonic)
    handle = admin_gate(
        inner,
        router.keyed,
        tuple(k.encode() for k in cfg.admin_keys),
        router,
    )
    # One factory per listening socket: the connection bound and deadline timers are shared.
    edge = Edge(cfg.edge_limits())
    factory = edge.factory(handle)
    context = tls.server if tls is not None else None
    # A handshake is bounded like a request head: a client that never finishes it is dropped.
    handshake_s = cfg.client_header_timeout_s if tls is not None else None
    if sock is None:
        server = await loop.create_server(
            factory,
            cfg.host,
            cfg.port,
            reuse_address=True,
            backlog=4096,
            ssl=context,
            ssl_handshake_timeout=handshake_s,
        )
    else:
        server = await loop.create_server(
            factory, sock=sock, backlog=4096, ssl=context, ssl_handshake_timeout=handshake_s
        )
    port = server.sockets[0].getsockname()[1]
    gc.freeze()
    healthy = sum(ep.healthy for ep in router.registry.endpoints.values())
    scheme = "https" if tls is not None else "http"
    # one write with its newline (stderr writes through): workers print at the same moment
    sys.stderr.write(
        f"vfleet router: {len(router.registry.endpoints)} endpoints ({healthy} "
        f"healthy), ready on {scheme}://{cfg.host}:{port}\n"
    )
    try:
        await stop.wait()
        server.close()  # stop accepting; requests already in flight (or held) finish first
        edge.drain()  # and idle keep-alive connections close: clients go elsewhere
        if router.polls is not None:
            router.polls.answer_all()
        await _drain(router, cfg.drain_timeout_s)
        router.give_up_held("The router is shutting down; retry shortly.")
        if router.tracer is not None:
            # The last spans, once; the export is bounded by its own timeout.
            await _guarded(router.tracer.flush(), "OTLP span export")
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pool.close()
        if kv is not None:
            await kv.close()


async def _sweep_departed(router: Router, pool: UpstreamPool) -> None:
    """Bound what departed endpoints leave behind: their metric series (after the grace
    period) and their idle upstream connections."""
    every_s = max(0.05, min(METRICS_SWEEP_S, router.metrics.row.grace_s / 4))
    while True:
        await asyncio.sleep(every_s)
        listed = router.registry.endpoints.keys()
        router.metrics.sweep(listed, time.monotonic())
        pool.retain(listed)


async def _breaker_ticks(ejector: Ejector) -> None:
    """Let endpoints whose breaker cool-down ended take a trial request (router.ejection)."""
    while True:
        await asyncio.sleep(BREAKER_TICK_S)
        ejector.tick(time.monotonic())


async def _drain(router: Router, timeout_s: float) -> None:
    """Wait (bounded) until no request is in flight to any engine or held for one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = any(ep.inflight for ep in router.registry.endpoints.values())
        if not busy and not router.activator.queues:
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


def run(cfg: RouterConfig, kv_feed: FeedFactory | None = None) -> None:
    """Serve until SIGTERM/SIGINT; KubeSettingsError (before serving) for unusable settings.
    `kv_feed`: see `build_router`."""
    # Before listening: the usual soft limit of 1024 lets a thousand idle clients lock out all.
    raise_nofile_limit()
    kube = None
    if cfg.k8s_selector is not None:
        from vfleet.router.kubewatch import load_target

        kube = load_target(cfg)
    peers = None
    # KEDA's external scaler (grpc is imported only then) and shared key budgets ask peers
    if cfg.keda_port is not None or cfg.shares_limits:
        from vfleet.router.keda.peers import load_peer_target

        peers = load_peer_target(cfg)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per API request is noise
    demand = DemandTable.create(cfg.workers)  # before any fork: shared by every worker
    # Likewise the metrics: the parent keeps the map, so an exited worker's counts stay summed.
    # One more row for the KEDA scaler's own values (its own process, or beside the only worker).
    metrics = MetricsTable.create(cfg.workers + (cfg.keda_port is not None))
    # per-key windows: every worker sees every charge (and the peer routers' usage)
    limits = LimitTable.create(cfg.workers, peers=cfg.shares_limits)
    peer_kube = peers if cfg.shares_limits else None
    if cfg.workers == 1:
        row = metrics.row(0, cfg.metrics_grace_s)
        serving = serve(
            cfg,
            kube=kube,
            demand=demand.row(0),
            metrics=row,
            limits=limits.row(0),
            kv_feed=kv_feed,
            peer_kube=peer_kube,
        )
        if cfg.keda_port is not None:
            from vfleet.router.keda.server import serve_with_scaler

            scaler_row = ScalerMetrics(metrics.row(cfg.workers))
            serving = serve_with_scaler(serving, cfg, demand.models, peers, scaler_row)
        uvloop.run(serving)
        return
    workers = Workers(cfg, kube, demand, metrics, limits, kv_feed, peer_kube)
    children = workers.start()
    if cfg.keda_port is None:
        wait_workers(children, demand, metrics, workers.fork)
        return
    # The scaler in a process of its own, forked like a worker: grpc's threads must never be in
    # the parent, which forks a worker again whenever one dies.
    scaler = ScalerProcess(cfg, demand, metrics, peers)
    try:
        children.append(scaler.start())
    except OSError:  # no scaler (its port is taken): no router either
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        wait_workers(children, demand, metrics)
        raise

    def fork(slot: int) -> int:
        return scaler.fork() if slot == cfg.workers else workers.fork(slot)

    wait_workers(children, demand, metrics, fork, last=1)


def fork_child(life: Callable[[], int], ignore_sigint: bool = False) -> int:
    """Fork a process that runs `life` and exits with what it returns; its pid. Signals are
    blocked across the fork: the child must not run the parent's handlers (they signal the
    children), and a shutdown signal reaches the parent's handler only once the new pid is
    known to it."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _worker_signals(held)
                if ignore_sigint:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                code = life()
            finally:
                os._exit(code)  # never back into the parent's code
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # the parent's (the child exited)
    return pid


@dataclass(slots=True)
class Workers:
    """Forks the serving processes. Worker i writes row i of each shared table whichever process
    runs it: the first one, or one forked again into its slot after it exited (router.restarts),
    so its counters carry on, and worker 0 takes up its duties again (peer polls)."""

    cfg: RouterConfig
    kube: KubeTarget | None
    demand: DemandTable
    metrics: MetricsTable
    limits: LimitTable
    kv_feed: FeedFactory | None = None
    peer_kube: KubeTarget | None = None
    port: int = 0  # the port every worker binds, known once the first socket is bound
    first: socket.socket | None = None  # worker 0's socket, while the first workers are forked

    def start(self) -> list[int]:
        """Fork `cfg.workers` workers; their pids, in order."""
        self.first = _reuseport_socket(self.cfg.host, self.cfg.port)
        self.port = self.first.getsockname()[1]  # a fixed port for every worker, even for 0
        try:
            return [self.fork(i) for i in range(self.cfg.workers)]
        finally:
            self.first.close()  # worker 0 has it; a socket nobody accepts on must not stay open
            self.first = None

    def fork(self, worker: int) -> int:
        """Fork worker `worker`; its pid."""
        return fork_child(lambda: self._serve(worker))

    def _serve(self, worker: int) -> int:
        """The worker process's life; its exit status."""
        sock = self.first if worker == 0 else None
        if self.first is not None and sock is None:
            # Worker 0's socket stays in the port's SO_REUSEPORT group while any process holds
            # it: once worker 0 is gone the kernel would keep handing it connections nobody takes.
            self.first.close()
        try:
            if sock is None:
                sock = _reuseport_socket(self.cfg.host, self.port)
            rows = (
                self.demand.row(worker),
                self.metrics.row(worker, self.cfg.metrics_grace_s),
                self.limits.row(worker),
            )
            serving = serve(self.cfg, sock, self.kube, *rows, self.kv_feed, self.peer_kube)
            uvloop.run(serving)
        except Exception:
            log.exception("router worker %d failed", worker)
            return 1
        return 0


SCALER_START_S = 30.0  # the scaler's process serves, or says why it cannot, within this
PORT_TAKEN = 3  # the scaler process's exit status when it cannot bind its port
REPORT_MAX = 512  # bytes of its report line (one pipe write: atomic)


@dataclass(slots=True)
class ScalerProcess:
    """Forks the KEDA scaler's process (router.keda.server's run_scaler), which reads the same
    shared tables as a scaler in the parent would: the demand, and its own row of the metrics
    table (row `cfg.workers`). It is supervised as a worker is (wait_workers), and stopped after
    the workers: KEDA still sees the requests a draining worker holds."""

    cfg: RouterConfig
    demand: DemandTable
    metrics: MetricsTable
    peer_target: KubeTarget | None  # settings only (no client, no connection): safe to fork

    def start(self) -> int:
        """Fork the scaler and wait until it serves; its pid. OSError (the process has exited)
        when it cannot bind its port or start at all. Once started, its port is the one a
        scaler forked again binds (with --keda-port 0 too: KEDA knows the first one)."""
        r, w = os.pipe()
        try:
            pid = self.fork(w)
        finally:
            os.close(w)  # the child's copy is the only writer left: EOF once it exits
        try:
            line = _read_report(r, SCALER_START_S)
        finally:
            os.close(r)
        kind, _, detail = line.partition(" ")
        if kind == "port":
            self.cfg = replace(self.cfg, keda_port=int(detail))
            return pid
        # it has said why it cannot serve, or exited, or been silent for SCALER_START_S (stuck)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)  # bounded: it was just killed if it had not exited
        raise OSError(detail or f"KEDA scaler {_how_it_ended(status)} before serving")

    def fork(self, report: int = -1) -> int:
        """Fork the scaler's process; its pid. `report`: a pipe for its one line (see start).
        Ctrl-C reaches the whole group: the scaler ignores it and stops on the parent's
        SIGTERM, after the workers, not at once with them."""
        return fork_child(lambda: self._serve(report), ignore_sigint=True)

    def _serve(self, report: int) -> int:
        """The scaler process's life; its exit status."""
        from vfleet.router.keda.server import run_scaler  # here only: grpc must not fork

        def serving(port: int) -> None:
            _report(report, f"port {port}")

        try:
            # the row made here, not in the parent: a scaler forked again adopts the series its
            # predecessor wrote in the row (sharedmetrics), as a worker does
            row = ScalerMetrics(self.metrics.row(self.cfg.workers))
            run_scaler(self.cfg, self.demand.models, self.peer_target, row, serving)
        except OSError as exc:  # its port: start_scaler's only OSError
            log.error("%s", exc)  # before the report: the parent starting it stops it then
            _report(report, f"error {exc}")
            return PORT_TAKEN
        except Exception as exc:
            log.exception("KEDA scaler failed")
            _report(report, f"error KEDA scaler failed: {exc!r}")
            return 1
        return 0


def _report(fd: int, line: str) -> None:
    """The scaler's one line to the parent starting it (none when forked again)."""
    if fd >= 0:
        with contextlib.suppress(OSError):  # the parent gave up waiting: nobody to tell
            os.write(fd, line.encode(errors="replace")[: REPORT_MAX - 1] + b"\n")


def _read_report(fd: int, timeout_s: float) -> str:
    """The line on pipe `fd`; "" at EOF (its writer exited) or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    got = b""
    readable = select.poll()
    readable.register(fd, select.POLLIN)
    while not got.endswith(b"\n") and len(got) < REPORT_MAX:
        left = deadline - time.monotonic()
        if left <= 0 or not readable.poll(left * 1000.0):
            return ""
        more = os.read(fd, REPORT_MAX - len(got))
        if not more:
            break
        got += more
    return got.decode(errors="replace").strip()


# Signals the parent handles (and blocks across a fork): shutdown, and a worker's exit.
WAKE_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})


def _worker_signals(mask: Iterable[int]) -> None:
    """A forked worker starts as the first ones did: default handlers (not the parent's, which
    signal the workers), no wake-up pipe, and the signal mask from before the fork."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def wait_workers(
    children: list[int],
    demand: DemandTable,
    metrics: MetricsTable | None = None,
    restart: Callable[[int], int] | None = None,
    last: int = 0,
) -> None:
    """Forward SIGTERM/SIGINT to the workers and wait for them all; the live demand of one
    that exits is cleared from the table, and its gauges (breakers it held open) from
    `metrics` (its counts stay: no counter goes backwards). With `restart` (forks worker i into
    its slot, returns the pid), a worker that exits before the shutdown signal is forked again,
    after a backoff by its consecutive failures (router.restarts); during shutdown none is.
    `last`: how many of `children`, at the end, are not workers but stopped after them (the
    KEDA scaler's process, slot `demand.workers`): SIGTERM once every worker has exited."""
    slots = Slots(children, time.monotonic(), restart=restart is not None, last=last)

    def forward(signum: int, _frame: object) -> None:
        slots.stop()
        for pid in slots.stopped_first():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # A signal handler's only effect on a waiting parent is a byte on this pipe, so one poll
    # waits for an exit, a shutdown signal or the next restart's time, whichever comes first.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    woken = select.poll()
    woken.register(wake_r, select.POLLIN)
    before = signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, _woken)  # SIG_DFL would not write to the pipe
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while True:
            _reap(slots, demand, metrics)
            for pid in slots.to_stop_last():  # the workers are gone: now the scaler
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            now = time.monotonic()
            if restart is not None:
                for worker in slots.due(now):
                    try:
                        slots.started(worker, restart(worker), now)
                    except OSError as exc:  # fork failed: try again later, still serving
                        delay = slots.not_forked(worker, now)
                        log.error(
                            "%s: %s; trying again in %.1fs", _name(demand, worker), exc, delay
                        )
            if slots.done():
                return
            wait_s = slots.wait_s(time.monotonic())
            woken.poll(None if wait_s is None else wait_s * 1000.0)
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):  # bounded: the pipe holds what signals wrote
                    pass
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(before)
        os.close(wake_r)
        os.close(wake_w)


def _woken(_signum: int, _frame: object) -> None:
    """SIGCHLD's handler: the wake-up pipe is what matters (the loop reaps)."""


def _name(demand: DemandTable, slot: int) -> str:
    return f"router worker {slot}" if slot < demand.workers else "KEDA scaler"


def _reap(slots: Slots, demand: DemandTable, metrics: MetricsTable | None) -> None:
    """Collect every child that has exited: clear what a worker had live, say when it comes
    back."""
    gone: list[tuple[int, int | None]]  # (pid, wait status)
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left, though some were thought running: gone too
            gone = [(pid, None) for pid in slots.pids()]
            if not gone:
                return
        else:
            if pid == 0:
                return
            gone = [(pid, status)]
        for pid, raw in gone:
            ended = slots.exited(pid, time.monotonic())
            if ended is None:
                continue  # not a worker
            if ended.worker < demand.workers:  # the scaler's row keeps its last answer
                demand.clear_row(ended.worker)
                if metrics is not None:
                    metrics.zero(ended.worker, WORKER_GAUGES)
            if ended.restart_in is not None:
                log.warning(
                    "%s (pid %d) %s after %.1fs; starting it again in %.1fs",
                    _name(demand, ended.worker),
                    pid,
                    _how_it_ended(raw),
                    ended.ran_s,
                    ended.restart_in,
                )


def _how_it_ended(status: int | None) -> str:
    if status is None:
        return "vanished"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
