"""KEDA's external scaler gRPC service, served by the router (`vfleet router --keda-port P`).

KEDA's `external-push` trigger keeps a StreamIsActive call open to us: the moment a request for
a model at zero replicas is held by the router's activator, the stream says "active" and KEDA
scales the Deployment from 0 to 1 without waiting for a polling interval. GetMetricSpec and
GetMetrics feed the HPA KEDA makes (replicas = demand / target). Demand is this router's (all
worker processes, one shared table) plus every peer replica's; see `query` and `peers`.

grpcio is imported only by this module, and this module only when a KEDA port is set, so a
router without it does not pay for grpc's memory. With worker processes the scaler has a process
of its own (`run_scaler`), and grpc is loaded only there: never in the parent, which forks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import uvloop

from vfleet.router.keda import externalscaler_pb2 as pb
from vfleet.router.keda import externalscaler_pb2_grpc as pb_grpc
from vfleet.router.keda.peers import Peers, peers_from_config
from vfleet.router.keda.query import (
    MetadataError,
    RateWindow,
    Reading,
    ScalerQuery,
    demand,
    parse_metadata,
    requests_by_source,
    target_sizes,
)

if TYPE_CHECKING:
    from vfleet.router.config import RouterConfig
    from vfleet.router.kubewatch import KubeTarget
    from vfleet.router.metrics import ScalerMetrics

log = logging.getLogger("vfleet.router.keda")

STREAM_POLL_S = 0.025  # StreamIsActive looks at demand this often (a held request: < 100 ms)
MAX_RATE_WINDOWS = 256  # rps windows kept, one per scaled object; the oldest goes first
LOCAL = "local"  # this router's name among the demand sources

LocalDemand = Callable[[], Reading]  # this router's demand now, summed over its workers
Context = grpc.aio.ServicerContext[Any, Any]


class ExternalScaler:
    """The four RPCs KEDA calls (StreamMetricSpec, optional in KEDA, is declined)."""

    def __init__(
        self,
        local: LocalDemand,
        peers: Peers,
        poll_s: float = STREAM_POLL_S,
        clock: Callable[[], float] = time.monotonic,
        metrics: ScalerMetrics | None = None,
    ) -> None:
        self.local = local
        self.metrics = metrics  # the replicas each answer implies, for the router's /metrics
        self.peers = peers
        self.poll_s = poll_s
        self.clock = clock
        self._rates: OrderedDict[tuple[str, str, ScalerQuery], RateWindow] = OrderedDict()
        self._local: Reading = {}
        self._local_at = -math.inf

    async def IsActive(self, request: pb.ScaledObjectRef, context: Context) -> pb.IsActiveResponse:
        query = await _query(request.scalerMetadata, context)
        return pb.IsActiveResponse(result=demand(query.models, await self._readings()) > 0)

    async def StreamIsActive(
        self,
        request: pb.ScaledObjectRef,
        context: Context,
    ) -> AsyncIterator[pb.IsActiveResponse]:
        query = await _query(request.scalerMetadata, context)
        who = f"{request.namespace}/{request.name}"
        log.info("KEDA: %s follows the demand for %s", who, ",".join(query.models))
        async with self.peers.follow():
            last: bool | None = None
            while True:
                active = demand(query.models, [self._local_shared(), *self.peers.latest()]) > 0
                if active is not last:
                    if last is not None:
                        log.info("KEDA: %s is %s", who, "active" if active else "idle")
                    last = active
                    yield pb.IsActiveResponse(result=active)
                await asyncio.sleep(self.poll_s)

    async def GetMetricSpec(
        self,
        request: pb.ScaledObjectRef,
        context: Context,
    ) -> pb.GetMetricSpecResponse:
        query = await _query(request.scalerMetadata, context)
        size, size_float = target_sizes(query.target)
        spec = pb.MetricSpec(
            metricName=query.metric_name, targetSize=size, targetSizeFloat=size_float
        )
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(
        self,
        request: pb.GetMetricsRequest,
        context: Context,
    ) -> pb.GetMetricsResponse:
        ref = request.scaledObjectRef
        query = await _query(ref.scalerMetadata, context)
        value = 0.0
        if query.metric == "concurrency":
            value = float(demand(query.models, await self._readings()))
        elif query.metric == "rps":
            readings = {LOCAL: self.local(), **await self.peers.read_all()}
            window = self._rate_window((ref.namespace, ref.name, query))
            value = window.add(self.clock(), requests_by_source(query.models, readings))
        if self.metrics is not None and query.metric != "activation":
            # What KEDA's HPA makes of this answer, before the ScaledObject's min/max bounds.
            self.metrics.set_desired(query.models, math.ceil(value / query.target))
        metric = pb.MetricValue(
            metricName=request.metricName or query.metric_name,
            metricValue=round(value),
            metricValueFloat=value,
        )
        return pb.GetMetricsResponse(metricValues=[metric])

    async def StreamMetricSpec(self, request: pb.ScaledObjectRef, context: Context) -> None:
        # KEDA falls back to GetMetricSpec on UNIMPLEMENTED; our spec never changes by itself.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "metric specs are not streamed")

    def _local_shared(self) -> Reading:
        """This router's demand, read at most once per poll interval for all open streams
        (one per ScaledObject: reading the shared table for each would cost as many scans)."""
        now = self.clock()
        if now - self._local_at >= self.poll_s / 2:
            self._local, self._local_at = self.local(), now
        return self._local

    async def _readings(self) -> list[Reading]:
        return [self.local(), *(await self.peers.read_all()).values()]

    def _rate_window(self, key: tuple[str, str, ScalerQuery]) -> RateWindow:
        window = self._rates.get(key)
        if window is None:
            window = self._rates[key] = RateWindow(key[2].window_s)
            while len(self._rates) > MAX_RATE_WINDOWS:
                self._rates.popitem(last=False)
        self._rates.move_to_end(key)
        return window


async def _query(meta: Mapping[str, str], context: Context) -> ScalerQuery:
    try:
        return parse_metadata(meta)
    except MetadataError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


@dataclass(slots=True)
class ScalerServer:
    """A started scaler: its gRPC server and peer discovery, stopped together."""

    server: grpc.aio.Server
    port: int
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace_s: float = 1.0) -> None:
        # streams never end by themselves: the grace only lets unary calls finish
        await self.server.stop(grace_s)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def start_scaler(
    cfg: RouterConfig,
    local: LocalDemand,
    peer_target: KubeTarget | None = None,
    metrics: ScalerMetrics | None = None,
) -> ScalerServer:
    """Serve the scaler on cfg.host:cfg.keda_port in the running loop; OSError if it cannot."""
    assert cfg.keda_port is not None
    # Peers answer /vfleet/demand to an admin key when keys are on (a client key gets 401).
    if cfg.api_keys and not cfg.admin_keys and (cfg.peers or cfg.k8s_peer_selector):
        log.warning(
            "API keys are on and no admin key is set: peer routers will refuse to "
            "share their demand; give every router the same admin key"
        )
    peers = peers_from_config(cfg)
    server = grpc.aio.server()
    pb_grpc.add_ExternalScalerServicer_to_server(
        ExternalScaler(local, peers, metrics=metrics), server
    )
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    try:
        port = server.add_insecure_port(f"{host}:{cfg.keda_port}")
    except RuntimeError as exc:  # grpc's way of saying the address is taken or unusable
        raise OSError(f"KEDA scaler port {cfg.keda_port}: {exc}") from exc
    if port == 0:  # older grpcio releases answer 0 instead of raising
        raise OSError(f"KEDA scaler port {cfg.keda_port}: cannot bind {host}")
    await server.start()
    started = ScalerServer(server, port)
    if peer_target is not None:
        from vfleet.router.kubewatch import Discovery

        discovery = Discovery(peer_target, peers.set_pods)
        started.tasks.append(asyncio.get_running_loop().create_task(_guarded(discovery.run())))
    # one write with its newline: worker processes print their own lines at the same time
    sys.stderr.write(
        f"vfleet router: KEDA external scaler (gRPC) on {cfg.host}:{port}, "
        f"{len(cfg.peers)} static peers\n"
    )
    return started


async def serve_with_scaler(
    serving: Coroutine[Any, Any, None],
    cfg: RouterConfig,
    local: LocalDemand,
    peer_target: KubeTarget | None,
    metrics: ScalerMetrics | None = None,
) -> None:
    """One router process: the scaler in the same loop as `serving`, stopped after it (KEDA
    still sees the requests a draining router holds)."""
    try:
        scaler = await start_scaler(cfg, local, peer_target, metrics)
    except BaseException:
        serving.close()  # never started
        raise
    try:
        await serving
    finally:
        await scaler.stop()


PARENT_CHECK_S = 1.0  # a scaler process whose parent is gone stops within this


def run_scaler(
    cfg: RouterConfig,
    local: LocalDemand,
    peer_target: KubeTarget | None,
    metrics: ScalerMetrics | None,
    serving: Callable[[int], None],
) -> None:
    """The life of the scaler's own process, for a router with worker processes (forked by the
    parent like a worker, before grpc is loaded there: the parent stays single-threaded, so it
    can fork a worker again at any time). Serves until SIGTERM, or until its parent is gone;
    `serving(port)` once it serves; OSError when it cannot bind its port."""
    uvloop.run(_serve_process(cfg, local, peer_target, metrics, serving))


async def _serve_process(
    cfg: RouterConfig,
    local: LocalDemand,
    peer_target: KubeTarget | None,
    metrics: ScalerMetrics | None,
    serving: Callable[[int], None],
) -> None:
    parent = os.getppid()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    scaler = await start_scaler(cfg, local, peer_target, metrics)
    try:
        serving(scaler.port)
        # bounded waits: an orphan (its parent killed) must not keep the port and answer KEDA
        # from tables nobody writes any more
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
    finally:
        await scaler.stop()


async def _guarded(work: Any) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException:
        log.exception("peer router discovery stopped")
        raise
    log.error("peer router discovery stopped")
