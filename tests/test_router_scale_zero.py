"""Models the router knows by name (--model) while no engine serves them: scaled to zero or
starting. Requests get 503 with Retry-After instead of 404 and are counted per model, which is
what an autoscaler reads to wake the model; once an engine appears, they are served."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import SimProcess
from httpclient import metric_value, request, wait_for

Factory = Callable[..., SimProcess]


def _chat(url: str, model: str) -> tuple[int, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return request(url, "POST", "/v1/chat/completions", body)


def test_known_model_without_engine_is_503_and_counted(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = router_factory("--backend", sim.url, "--model", "cold", "--model", "warm")
    status, body = _chat(router.url, "cold")
    assert status == 503
    err = json.loads(body)["error"]
    assert err["code"] == 503 and "no ready replica" in err["message"]
    status, _ = _chat(router.url, "nope")
    assert status == 404  # names the router was not told about stay unknown
    assert _chat(router.url, "warm")[0] == 200
    metrics = request(router.url, "GET", "/metrics")[1].decode()
    assert metric_value(metrics, "vfleet_router_requests_total",
                        model="cold", endpoint="-", status="503") == 1  # fmt: skip


def test_retry_after_header_is_sent(sim_factory: Factory, router_factory: Factory) -> None:
    import http.client

    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = router_factory("--backend", sim.url, "--model", "cold")
    host, port = router.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps({"model": "cold", "prompt": "x"}),
                     headers={"content-type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 503
        assert resp.getheader("retry-after") == "10"
    finally:
        conn.close()


def test_model_is_served_once_an_engine_appears(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    feed = tmp_path / "endpoints.json"
    feed.write_text("[]")
    router = router_factory("--endpoints-file", str(feed), "--model", "cold",
                            "--health-interval", "0.2")  # fmt: skip
    assert _chat(router.url, "cold")[0] == 503
    sim = sim_factory("--model", "cold", "--profile", "instant")
    feed.write_text(json.dumps([{"url": sim.url, "models": ["cold"]}]))
    assert wait_for(lambda: _chat(router.url, "cold")[0] == 200, timeout_s=10)
