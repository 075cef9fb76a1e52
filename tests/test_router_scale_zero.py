"""Models the router knows by name (--model) while no engine serves them: scaled to zero or
starting. Their requests are held until an engine is ready (the activator), answered 503 with
Retry-After when none is ready by the hold deadline, and counted per model, which is what an
autoscaler reads to wake the model; names the router was not told about stay 404."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from conftest import SimProcess
from httpclient import Client, metric_value, request, wait_for

Factory = Callable[..., SimProcess]


def _chat(url: str, model: str, timeout: float = 10.0) -> tuple[int, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return request(url, "POST", "/v1/chat/completions", body, timeout=timeout)


def test_known_model_without_engine_is_held_then_503_with_retry_after(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = router_factory(
        "--backend", sim.url, "--model", "cold", "--model", "warm", "--hold-timeout", "0.3"
    )
    resp = Client(router.url).post("/v1/chat/completions", {"model": "cold", "messages": []})
    assert resp.status == 503
    assert "no ready replica" in resp.error["message"]
    assert resp.headers["retry-after"] == "10"
    status, _ = _chat(router.url, "nope")
    assert status == 404  # names the router was not told about stay unknown
    assert _chat(router.url, "warm")[0] == 200
    metrics = request(router.url, "GET", "/metrics")[1].decode()
    assert (
        metric_value(
            metrics, "vfleet_router_requests_total", model="cold", upstream="-", status="503"
        )
        == 1
    )
    assert metric_value(metrics, "vfleet_router_hold_timeouts_total", model="cold") == 1


def test_holding_off_answers_503_at_once(sim_factory: Factory, router_factory: Factory) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = router_factory("--backend", sim.url, "--model", "cold", "--hold-timeout", "0")
    resp = Client(router.url).post("/v1/completions", {"model": "cold", "prompt": "x"})
    assert resp.status == 503
    assert resp.headers["retry-after"] == "10"
    assert "no ready replica" in resp.error["message"]


def test_held_request_is_served_once_an_engine_appears(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    feed = tmp_path / "endpoints.json"
    feed.write_text("[]")
    router = router_factory(
        "--endpoints-file", str(feed), "--model", "cold", "--health-interval", "0.2"
    )
    result: list[tuple[int, bytes]] = []
    t = threading.Thread(target=lambda: result.append(_chat(router.url, "cold", timeout=30)))
    t.start()
    c = Client(router.url)
    assert wait_for(lambda: c.get("/vfleet/demand").json()["models"]["cold"]["held"] == 1)
    sim = sim_factory("--model", "cold", "--profile", "instant")
    feed.write_text(json.dumps([{"url": sim.url, "models": ["cold"]}]))
    t.join(timeout=30)
    assert [status for status, _ in result] == [200]
    assert _chat(router.url, "cold")[0] == 200
