"""Starts a simulated engine: builds the engine from a `SimConfig` and serves it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time

import uvloop

from vfleet.http.limits import raise_nofile_limit
from vfleet.http.server import protocol_factory
from vfleet.sim.config import SimConfig, with_environment
from vfleet.sim.engine import Engine
from vfleet.sim.gpushare import SharedGpu
from vfleet.sim.kvevents import ZmqPublisher
from vfleet.sim.metrics import EngineMetrics
from vfleet.sim.scheduler import Scheduler
from vfleet.sim.server import SimServer
from vfleet.sim.tokenizer import Pieces, PromptCodec


def build_engine(
    cfg: SimConfig, publisher: ZmqPublisher | None, gpu: SharedGpu | None = None
) -> Engine:
    return Engine(
        scheduler=Scheduler(cfg.scheduler, cfg.profile, record_events=publisher is not None),
        metrics=EngineMetrics(
            cfg.name,
            cfg.cache_info(),
            time.time(),
            max_model_len=cfg.scheduler.max_model_len,
            max_loras=cfg.max_loras if cfg.enable_lora else 0,
        ),
        time_scale=cfg.time_scale,
        publisher=publisher,
        wall_clock=time.time,
        gpu=gpu,
    )


async def serve(cfg: SimConfig, codec: PromptCodec) -> None:
    """Run until SIGINT/SIGTERM; prints one `ready` line with the bound address."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if cfg.faults.startup_delay_s:
        # vLLM opens its port only once the model is loaded; so do we.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), cfg.faults.startup_delay_s)
        if stop.is_set():
            return
    gpu = SharedGpu(cfg.shared_gpu) if cfg.shared_gpu else None
    publisher = ZmqPublisher(cfg.kv_events) if cfg.kv_events.active else None
    engine = build_engine(cfg, publisher, gpu)
    engine.start(loop)
    sim = SimServer(cfg, engine, codec)
    # The KV block table and other start-up objects live as long as the process: keep them out
    # of the cyclic collector's scans, which otherwise walk them again and again under load.
    gc.freeze()
    server = await loop.create_server(
        protocol_factory(sim.handle, cfg.edge),
        cfg.host,
        cfg.port,
        reuse_address=True,
        backlog=4096,
    )
    port = server.sockets[0].getsockname()[1]
    if cfg.faults.crash_after_s:
        loop.call_later(cfg.faults.crash_after_s, _crash)
    extra = f" kv-events {publisher.endpoint}" if publisher else ""
    print(
        f"vfleet sim: serving {cfg.name} ({cfg.task}, profile {cfg.profile.name}) "
        f"ready on http://{cfg.host}:{port}{extra}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        server.close()
        if publisher is not None:
            publisher.close()
        if gpu is not None:
            gpu.close()


def _crash() -> None:
    print("vfleet sim: crashing (fault injection)", file=sys.stderr, flush=True)
    os._exit(1)


def run(cfg: SimConfig) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = with_environment(cfg, os.environ)
    except ValueError as exc:
        raise SystemExit(f"vfleet sim: {exc}") from None
    # before the port opens, as vLLM loads its tokenizer before serving
    codec = prompt_codec(cfg)
    # Before listening: the default soft limit (often 1024) is a few idle clients away.
    raise_nofile_limit()
    uvloop.run(serve(cfg, codec))


def prompt_codec(cfg: SimConfig) -> PromptCodec:
    """The built-in pieces, or with `--tokenizer DIR` DIR's tokenizer (SystemExit if unreadable)."""
    if not cfg.tokenizer:
        return Pieces()
    # imported only here: a simulator without --tokenizer never loads jinja2 or tokenizers
    from vfleet.sim import hftok

    try:
        return hftok.load(cfg.tokenizer)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"vfleet sim: --tokenizer: {exc}") from None
