"""A worker forked again into its row (router.app's restarts) takes over the row: its series and
model slots carry their counts on in place, so restarts do not fill the shared tables."""

from __future__ import annotations

from test_router_metrics import A, req, samples
from vfleet.router.demand import DemandTable
from vfleet.router.endpoints import Registry
from vfleet.router.metrics import RouterMetrics
from vfleet.router.sharedmetrics import RETIRE_HOLD_S, MetricsTable


def test_a_restarted_worker_takes_over_its_rows() -> None:
    table = MetricsTable.create(1, slots=64)
    demand = DemandTable.create(1, slots=8)
    registry = Registry()
    registry.set_endpoints([(A, ("m",), False)])
    for life in range(20):  # twenty lives of worker 0, each counting, then "exiting"
        m = RouterMetrics(table.row(0, grace_s=0.0))
        m.requests[("m", A, 200)] += 1
        m.ttft.observe(0.003)
        row = demand.row(0)
        row.add(row.model("m"), 5, 1)  # REQUESTS
        row.set_endpoints([A])
        if life == 0:
            used = (table.words[0], demand.words[0])
        demand.clear_row(0)
    assert (table.words[0], demand.words[0]) == used  # no slot more than the first life's
    got = samples(RouterMetrics(table.row(0)).render(registry).decode())
    assert got[req("m", A, 200)] == 20
    assert got["vfleet_router_time_to_first_byte_seconds_count"] == 20
    assert demand.models()["m"].requests == 20


def test_series_a_dead_worker_retired_come_back_after_the_hold() -> None:
    table = MetricsTable.create(1, slots=64)
    registry = Registry()
    registry.set_endpoints([(A, ("m",), False)])
    m = RouterMetrics(table.row(0, grace_s=0.0))
    m.requests[("m", A, 200)] += 1
    m.sweep(set(), now=1.0)  # A left: retired, then the worker died before freeing the slot
    m = RouterMetrics(table.row(0, grace_s=0.0))  # forked again
    m.sweep({A}, now=100.0)
    m.sweep({A}, now=100.0 + RETIRE_HOLD_S)
    m.requests[("m", A, 200)] += 1  # A is back
    assert samples(m.render(registry).decode())[req("m", A, 200)] == 1
