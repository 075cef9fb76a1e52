"""The shared metrics table (router.sharedmetrics) and the scrape built on it (router.metrics):
rows written by separate processes are summed, counts of an exited worker stay (its open
breakers do not), departed endpoints' series retire after the grace period and their slots are
reused, the per-endpoint engine gauges, and the upstream pool forgetting departed engines."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from test_kvindex import stored  # a BlockStored event as the simulator sends it
from vfleet.errors import UpstreamError
from vfleet.router.demand import DemandTable
from vfleet.router.endpoints import Endpoint, Registry, parse_prefix_cache
from vfleet.router.kvindex import KvIndex
from vfleet.router.metrics import RouterMetrics
from vfleet.router.sharedmetrics import RETIRE_HOLD_S, MetricsTable
from vfleet.router.upstream import UpstreamPool

pytestmark = pytest.mark.timeout(30)

A = "http://10.0.0.1:8000"
B = "http://10.0.0.2:8000"


def samples(text: str) -> dict[str, float]:
    """series (name and labels, as written) -> value, for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def req(model: str, url: str, status: int) -> str:
    return f'vfleet_router_requests_total{{model="{model}",status="{status}",upstream="{url}"}}'


def test_rows_written_by_forked_workers_are_summed_and_outlive_them() -> None:
    table = MetricsTable.create(3, slots=64)
    registry = Registry()
    registry.set_endpoints([(A, ("m",), False)])
    for worker in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: writes its own row only, then exits
            try:
                m = RouterMetrics(table.row(worker))
                for _ in range(worker + 1):
                    m.requests[("m", A, 200)] += 1
                    m.ttft.observe(0.003)
                m.rejected["auth"] += 2
                m.observe_hold("m", 0.2)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
    # the parent (or any worker) sums every row, the exited workers' included
    got = samples(RouterMetrics(table.row(0)).render(registry).decode())
    assert got[req("m", A, 200)] == 6
    assert got['vfleet_router_rejected_total{reason="auth"}'] == 6
    assert got["vfleet_router_time_to_first_byte_seconds_count"] == 6
    assert got['vfleet_router_time_to_first_byte_seconds_bucket{le="0.0025"}'] == 0
    assert got['vfleet_router_time_to_first_byte_seconds_bucket{le="0.005"}'] == 6
    assert got["vfleet_router_time_to_first_byte_seconds_sum"] == pytest.approx(0.018)
    assert got['vfleet_router_hold_seconds_count{model="m"}'] == 3
    assert got['vfleet_router_hold_seconds_bucket{model="m",le="0.25"}'] == 3


def test_an_exited_workers_open_breakers_leave_the_gauge_and_its_counts_stay() -> None:
    """router.app's wait_workers as `--workers 2` runs it (a forked parent over forked workers):
    each worker opens its breaker of A and exits; the dead workers no longer count among those
    holding A open (vfleet_router_breaker_workers, /ui), while their breaker events stay."""
    from vfleet.router.app import wait_workers

    table = MetricsTable.create(2, slots=64)
    demand = DemandTable.create(2)
    registry = Registry()
    registry.set_endpoints([(A, ("m",), False)])
    parent = os.fork()
    if parent == 0:  # the router's parent process (its signal handlers stay in this process)
        code = 1
        try:
            children = []
            for worker in range(2):
                pid = os.fork()
                if pid == 0:
                    try:
                        m = RouterMetrics(table.row(worker))
                        m.breaker_event(A, "opened")
                        m.breaker_state(A, "open", 1)
                    finally:
                        os._exit(0)
                children.append(pid)
            wait_workers(children, demand, table)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(parent, 0)
    assert status == 0
    got = samples(RouterMetrics(table.row(0)).render(registry).decode())
    assert got[f'vfleet_router_breaker_events_total{{event="opened",upstream="{A}"}}'] == 2
    assert got[f'vfleet_router_breaker_workers{{state="open",upstream="{A}"}}'] == 0


def test_counter_reads_like_a_counter() -> None:
    m = RouterMetrics()
    m.retries["m"] += 1
    m.retries["m"] += 1
    m.requests.inc(("m", A, 200), 3)
    assert m.retries["m"] == 2
    assert m.retries["other"] == 0
    assert dict(m.requests.items()) == {("m", A, 200): 3}
    assert "m" in m.retries and len(m.retries) == 1


def test_departed_endpoint_series_retire_after_grace_and_slots_are_reused() -> None:
    table = MetricsTable.create(2, slots=16)
    rows = [table.row(i, grace_s=5.0) for i in range(2)]
    ms = [RouterMetrics(row) for row in rows]
    registry = Registry()
    for m in ms:
        m.requests[("m", A, 200)] += 1
        m.requests[("m", B, 200)] += 1
        m.requests[("m", "-", 503)] += 1
    used = table.words[0]  # worker 0's high-water mark
    ms[0].sweep({A}, now=100.0)  # B left: still inside the grace period
    assert samples(ms[0].render(registry).decode())[req("m", B, 200)] == 2
    ms[0].sweep({A}, now=105.0)  # worker 0 retires B; worker 1 has not noticed yet
    text = ms[1].render(registry).decode()
    assert req("m", B, 200) not in text  # hidden whole: never a partial (lower) sum
    assert samples(text)[req("m", A, 200)] == 2
    assert samples(text)[req("m", "-", 503)] == 2
    ms[1].sweep({A}, now=106.0)
    ms[1].sweep({A}, now=111.0)
    assert req("m", B, 200) not in ms[1].render(registry).decode()
    ms[0].sweep({A}, now=105.0 + RETIRE_HOLD_S)  # freed now, and reused first
    ms[0].requests[("m", "http://10.0.0.3:8000", 200)] += 1
    assert table.words[0] == used
    assert samples(ms[0].render(registry).decode())[req("m", "http://10.0.0.3:8000", 200)] == 1


def test_endpoint_back_within_grace_keeps_its_counts() -> None:
    m = RouterMetrics(MetricsTable.create(1, slots=8).row(0, grace_s=5.0))
    m.requests[("m", A, 200)] += 4
    m.sweep(set(), now=1.0)
    m.sweep({A}, now=4.0)  # back before the grace period ended
    m.sweep(set(), now=8.0)  # gone again: its grace starts over
    assert samples(m.render(Registry()).decode())[req("m", A, 200)] == 4


def test_full_row_counts_what_it_drops() -> None:
    m = RouterMetrics(MetricsTable.create(1, slots=5).row(0))  # 3 plain histograms + 2
    m.requests[("m", A, 200)] += 1
    m.requests[("m", B, 200)] += 1
    m.requests[("m", "http://10.0.0.3:8000", 200)] += 1  # no room: dropped, counted
    got = samples(m.render(Registry()).decode())
    assert got["vfleet_router_metrics_dropped_total"] == 1
    assert got[req("m", A, 200)] == 1


def test_inflight_and_held_gauges_sum_over_workers() -> None:
    demand = DemandTable.create(2, slots=8)
    rows = [demand.row(i) for i in range(2)]
    for row in rows:
        row.add(row.endpoint(A), 3, 2)  # INFLIGHT
        row.add(row.model("m"), 4, 1)  # HELD
    registry = Registry()
    registry.set_endpoints([(A, ("m",), False)])
    got = samples(RouterMetrics(demand=demand).render(registry, {"m": 1}).decode())
    assert got[f'vfleet_router_endpoint_inflight{{upstream="{A}"}}'] == 4
    assert got['vfleet_router_held_requests{model="m"}'] == 2


def test_engine_gauges_per_endpoint() -> None:
    registry = Registry()
    registry.set_endpoints([(A, ("m",), False)])
    ep = registry.endpoints[A]
    ep.running, ep.waiting, ep.kv_usage = 3, 2, 0.25
    ep.observe_prefix_cache(*parse_prefix_cache(_engine_metrics(hits=30, queries=100)))
    got = samples(RouterMetrics().render(registry).decode())
    assert got[f'vfleet_router_endpoint_running_requests{{upstream="{A}"}}'] == 3
    assert got[f'vfleet_router_endpoint_waiting_requests{{upstream="{A}"}}'] == 2
    assert got[f'vfleet_router_endpoint_kv_cache_usage_ratio{{upstream="{A}"}}'] == 0.25
    assert got[f'vfleet_router_endpoint_prefix_cache_hit_ratio{{upstream="{A}"}}'] == 0.3


def test_prefix_hit_ratio_covers_the_tokens_since_the_last_probe() -> None:
    ep = Endpoint(A)
    ep.observe_prefix_cache(30, 100)
    assert ep.prefix_hit_ratio == pytest.approx(0.3)
    ep.observe_prefix_cache(130, 200)  # 100 hits of the last 100 queried tokens
    assert ep.prefix_hit_ratio == pytest.approx(1.0)
    ep.observe_prefix_cache(130, 200)  # idle: the last ratio stays
    assert ep.prefix_hit_ratio == pytest.approx(1.0)
    ep.observe_prefix_cache(5, 50)  # the engine restarted: its counters began again
    assert ep.prefix_hit_ratio == pytest.approx(0.1)


def test_parse_prefix_cache_sums_engines_and_ignores_the_rest() -> None:
    text = _engine_metrics(hits=10, queries=40) + (
        'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 5.0\n'
        'vllm:prefix_cache_queries_total{engine="1",model_name="m"} 10.0\n'
        'vllm:prefix_cache_queries_created{engine="1",model_name="m"} 1.7e9\n'
    )
    assert parse_prefix_cache(text) == (15.0, 50.0)
    assert parse_prefix_cache("vllm:num_requests_running 1\n") == (0.0, 0.0)


class Done:
    """A Sink that records the end of one response."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.status = 0

    def on_head(
        self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool, length: int | None
    ) -> None:
        self.status = status

    def on_body(self, data: bytes) -> None:
        pass

    def on_end(self) -> None:
        self.ended.set()

    def on_error(self, err: UpstreamError) -> None:
        self.ended.set()


def test_upstream_pool_forgets_departed_engines() -> None:
    """Two real keep-alive servers on loopback: after a request each, the pool keeps an idle
    connection per engine; `retain` closes and forgets those of engines no longer listed."""

    async def run() -> None:
        closed: list[str] = []

        def server(name: str) -> Callable[..., Awaitable[None]]:
            async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while True:  # keep-alive: answer every request head until the peer closes
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()

            async def guarded(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    await answer(r, w)
                except (asyncio.IncompleteReadError, ConnectionError):
                    closed.append(name)  # the pool closed its idle connection
                finally:
                    w.close()

            return guarded

        servers = [await asyncio.start_server(server(n), "127.0.0.1", 0) for n in "ab"]
        urls = [f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}" for srv in servers]
        pool = UpstreamPool(asyncio.get_running_loop(), 2.0)
        try:
            for url in urls:
                sink = Done()
                pool.send(url, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", sink, 5.0, 5.0, lambda _: None)
                await asyncio.wait_for(sink.ended.wait(), 5.0)
                assert sink.status == 200
            assert pool.idle_pools() == 2
            pool.retain({urls[0]})
            assert pool.idle_pools() == 1
            for _ in range(100):  # bounded: the server sees the close within a few loop turns
                if closed:
                    break
                await asyncio.sleep(0.02)
            assert closed == ["b"]
            pool.retain(set())
            assert pool.idle_pools() == 0
        finally:
            pool.close()
            for srv in servers:
                srv.close()

    asyncio.run(run())


def _engine_metrics(hits: float, queries: float) -> str:
    return (
        "# TYPE vllm:prefix_cache_hits counter\n"
        f'vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {hits}\n'
        "# TYPE vllm:prefix_cache_queries counter\n"
        f'vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {queries}\n'
    )


def test_kv_blocks_lists_an_engine_whose_events_come_from_a_rank_other_than_0() -> None:
    registry = Registry()
    registry.set_endpoints([(A, ("m",), False), (B, ("m",), False)])
    index = KvIndex()
    index.apply(B, 0, [stored(list(range(8)))], rank=1)  # 2 blocks of 4 tokens, rank 1 only
    got = samples(RouterMetrics().render(registry, kv=index).decode())
    assert got[f'vfleet_router_kv_blocks{{upstream="{B}"}}'] == 2
    assert f'vfleet_router_kv_blocks{{upstream="{A}"}}' not in got  # no events: not listed
