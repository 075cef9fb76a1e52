"""`vfleet_router_kv_chains_total` end to end: a router with `--policy kv` in front of a
simulator publishing KV events counts, per request, whether it routed with a KV-block chain
(`cached`, `computed`) or why it went without one (here `no_prompt`: a list of prompts), and
times in `vfleet_router_kv_chain_wait_seconds` the wait of those that waited for one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import SimProcess
from httpclient import Client
from test_router_kv import SYSTEM, chat, kv_sim, series, warm

Factory = Callable[..., SimProcess]
FAMILY = "vfleet_router_kv_chains_total"


@pytest.mark.timeout(90)
def test_each_request_is_counted_by_whether_it_had_a_chain(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim, endpoint = kv_sim(sim_factory)
    router = router_factory(
        "--policy", "kv", "--backend", sim.url, "--kv-events", f"{sim.url}={endpoint}"
    )
    client = Client(router.url)
    warm(client, "a warm-up prompt long enough to fill blocks " * 20)
    for i in range(3):
        chat(client, SYSTEM, f"question {i}")
    outcomes = series(client, FAMILY, "outcome")
    assert outcomes.get("cached", 0.0) + outcomes.get("computed", 0.0) > 0, outcomes
    assert "demo" in series(client, FAMILY, "model")
    assert outcomes.get("no_prompt", 0.0) == 0

    # Two prompts of token ids: no one prompt the router can chain.
    resp = client.post(
        "/v1/completions", {"model": "demo", "prompt": [[1, 2, 3], [4, 5, 6]], "max_tokens": 2}
    )
    assert resp.status == 200, resp.body
    after = series(client, FAMILY, "outcome")
    assert after.get("no_prompt", 0.0) == 1, after
    # Every request the policy prepared is counted once, under exactly one outcome.
    decisions = series(client, "vfleet_router_kv_decisions_total", "reason")
    assert sum(after.values()) == sum(decisions.values())

    # Each request that waited for its chain was timed once (cached and no_prompt went at once;
    # busy may have waited in the queue first, or not).
    wait = "vfleet_router_kv_chain_wait_seconds"
    timed = series(client, wait + "_count", "model").get("demo", 0.0)
    waited = sum(after.get(o, 0.0) for o in ("computed", "background", "timeout", "failed"))
    assert 0 < waited <= timed <= waited + after.get("busy", 0.0), (timed, after)
    assert series(client, wait + "_bucket", "le").get("+Inf") == timed
    assert 0 < series(client, wait + "_sum", "model")["demo"] < timed * 0.05  # mean under 50 ms
