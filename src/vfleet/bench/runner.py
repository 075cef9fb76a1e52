"""The load generator: sends a workload open-loop (Poisson at a rate, or a trace's own times) or
closed-loop (a fixed number of requests in flight), times every response, and reads the engines'
metrics before and after.

The generator measures itself too: `send_lag_s` is how late open-loop sends left against their
schedule, and `client_cpu_s` the process CPU time the run took; a run whose lag is large measured
the client, not the server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from vfleet.bench import promtext
from vfleet.bench.client import Client, Exchange
from vfleet.bench.stats import Record, Slo, distribution, summarize
from vfleet.bench.workloads import MAX_REQUESTS, BenchRequest, nth, poisson_offsets
from vfleet.http import client as http_client

METRICS_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Load:
    """How requests are sent: exactly one of `rate` (open-loop, requests/s), `concurrency`
    (closed-loop) or `replay` (the requests' own `at` offsets). The run ends after `requests`
    requests or `duration_s` seconds, whichever comes first (a duration-only run cycles the
    workload)."""

    rate: float | None = None
    concurrency: int | None = None
    replay: bool = False
    requests: int | None = None
    duration_s: float | None = None
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        modes = (self.rate is not None) + (self.concurrency is not None) + self.replay
        if modes != 1:
            raise ValueError("give exactly one of a rate, a concurrency or a trace replay")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.requests is None and self.duration_s is None:
            raise ValueError("give a number of requests or a duration")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration must be > 0")


@dataclass(slots=True)
class RunOutput:
    records: list[Record]
    summary: dict[str, Any]


def _record(req: BenchRequest, ex: Exchange | None, sent: float, err: str) -> Record:
    """The record of `req`; `sent`: seconds from the run's start; `ex` None: no answer (`err`)."""
    rec = Record(req.id, req.kind, sent)
    if ex is None:
        rec.error = err
        return rec
    rec.status = ex.status
    if ex.status != 200:
        rec.error = _error_message(ex.body)
        return rec
    if ex.error:
        rec.error = f"stream error: {ex.error}"
        return rec
    usage = ex.usage or _body_usage(ex.body)
    rec.input_tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
    rec.output_tokens = int(usage.get("completion_tokens") or 0)
    rec.chunks = ex.chunks
    assert ex.done is not None
    rec.e2e = ex.done - ex.sent
    if req.kind == "completion":
        if ex.first_token is None:
            rec.error = "no token streamed"
            return rec
        rec.ttft = ex.first_token - ex.sent
        times = ex.chunk_times
        rec.itl = [b - a for a, b in itertools.pairwise(times)]
    else:
        rec.ttft = rec.e2e  # a pooling answer arrives whole
    rec.ok = True
    return rec


def _error_message(body: bytes) -> str:
    try:
        msg = orjson.loads(body)["error"]["message"]
        return str(msg)[:500]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _body_usage(body: bytes) -> dict[str, Any]:
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return usage if isinstance(usage, dict) else {}


class _Run:
    def __init__(
        self,
        client: Client,
        model: str,
        workload: Sequence[BenchRequest],
        load: Load,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.client = client
        self.model = model
        self.workload = workload
        self.load = load
        self.progress = progress
        self.records: list[Record] = []
        self.finished: dict[str, asyncio.Event] = {}  # multi-round: ids others wait on
        self.lags: list[float] = []
        self.start = 0.0
        self.stop_at = float("inf")
        self.waiters = {r.after for r in workload if r.after}

    def _event(self, rid: str) -> asyncio.Event:
        ev = self.finished.get(rid)
        if ev is None:
            ev = self.finished[rid] = asyncio.Event()
        return ev

    async def one(self, req: BenchRequest) -> None:
        if req.after is not None:
            ev = self._event(req.after)
            try:
                async with asyncio.timeout(self.load.timeout_s):
                    await ev.wait()
            except TimeoutError:
                pass  # the earlier round never ended; send anyway, its own timeout bounds it
            self.finished.pop(req.after, None)
        ex: Exchange | None = None
        err = ""
        t0 = time.perf_counter()
        try:
            ex = await self.client.post(req.path, req.body(self.model), self.load.timeout_s)
        except TimeoutError:
            err = f"timeout: no complete answer in {self.load.timeout_s:g} s"
        except OSError as exc:
            err = f"connection: {exc}"
        sent = (ex.sent if ex is not None else t0) - self.start
        self.records.append(_record(req, ex, sent, err))
        if req.id.split("#")[0] in self.waiters:
            self._event(req.id).set()
        if self.progress is not None:
            self.progress(len(self.records))

    def count(self) -> int:
        # duration-bound runs end by the clock, and at MAX_REQUESTS at most (records are kept)
        return self.load.requests or MAX_REQUESTS

    async def open_loop(self) -> None:
        load = self.load
        n = self.count()
        tasks: set[asyncio.Task[None]] = set()
        if load.replay:
            offsets: Sequence[float] = [r.at or 0.0 for r in self.workload]
            n = min(n, len(self.workload))
        else:
            assert load.rate is not None
            if load.requests is None:
                assert load.duration_s is not None
                # enough to outlast the clock
                n = min(int(load.rate * load.duration_s * 1.5) + 16, MAX_REQUESTS)
            offsets = poisson_offsets(n, load.rate, load.seed)
        for i in range(n):
            due = self.start + offsets[i]
            if due > self.stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.lags.append(max(0.0, time.perf_counter() - due))
            task = asyncio.create_task(self.one(nth(self.workload, i)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def closed_loop(self) -> None:
        assert self.load.concurrency is not None
        n = self.count()
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            while next_i < n and time.perf_counter() < self.stop_at:
                i = next_i
                next_i += 1
                await self.one(nth(self.workload, i))

        await asyncio.gather(*(worker() for _ in range(self.load.concurrency)))


async def scrape(urls: Sequence[str], auth: bytes = b"") -> tuple[dict[str, float], list[str]]:
    """Summed engine metrics of `urls` and the URLs that did not answer."""
    total: dict[str, float] = {}
    missing: list[str] = []
    for url in urls:
        try:
            resp = await http_client.get(url, "/metrics", METRICS_TIMEOUT_S, auth)
        except (OSError, ValueError):
            missing.append(url)
            continue
        if resp.status != 200:
            missing.append(url)
            continue
        promtext.add(total, promtext.parse(resp.body.decode("utf-8", "replace")))
    return total, missing


async def run(
    url: str,
    model: str,
    workload: Sequence[BenchRequest],
    load: Load,
    slo: Slo,
    metrics_urls: Sequence[str] = (),
    api_key: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunOutput:
    """Send `workload` to `url` as `load` says and summarize what came back."""
    if not workload:
        raise ValueError("empty workload")
    client = Client(url, api_key)
    auth = http_client.bearer(api_key)
    before, _ = await scrape(metrics_urls, auth)
    r = _Run(client, model, workload, load, progress)
    cpu0 = time.process_time()
    r.start = time.perf_counter()
    if load.duration_s is not None:
        r.stop_at = r.start + load.duration_s
    try:
        if load.concurrency is not None:
            await r.closed_loop()
        else:
            await r.open_loop()
    finally:
        client.close()
    wall = time.perf_counter() - r.start
    cpu = time.process_time() - cpu0
    after, missing = await scrape(metrics_urls, auth)
    records = sorted(r.records, key=lambda rec: rec.sent)
    summary = summarize(records, wall, slo)
    summary["client"] = {"cpu_s": cpu, "send_lag_s": distribution(r.lags)}
    summary["engine_metrics"] = promtext.delta(before, after) if after else {}
    summary["metrics_unreachable"] = missing
    return RunOutput(records, summary)
