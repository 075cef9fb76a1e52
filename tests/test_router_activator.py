"""The router's activator, end to end: requests for a model with no ready engine are held in
arrival order and released once an engine answers /health, or answered 503 at their deadline,
429 on a full queue; a client that leaves while held is forgotten. Real router and sim
processes on 127.0.0.1, real HTTP, the official openai client where a user would use it."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from conftest import SimProcess
from httpclient import Client, free_port, http_request, metric_value, raw_socket, wait_for

Factory = Callable[..., SimProcess]
HOLD = {"model": "cold", "prompt": "hello", "max_tokens": 2}


def write_endpoints(path: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the endpoints file at once (write + rename), as the supervisor does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, path)


def demand(url: str) -> dict[str, Any]:
    resp = Client(url).get("/vfleet/demand")
    assert resp.status == 200, resp.body
    body: dict[str, Any] = resp.json()
    return body


def held(url: str, model: str = "cold") -> int:
    return int(demand(url)["models"].get(model, {}).get("held", 0))


def send_held(url: str, body: dict[str, Any] = HOLD) -> socket.socket:
    """Send a request on a raw socket and leave it waiting (the caller closes it)."""
    sock = raw_socket(url)
    sock.sendall(http_request("POST", "/v1/completions", body))
    return sock


def metrics(url: str) -> str:
    return Client(url).get("/metrics").body.decode()


def test_burst_at_zero_is_held_then_served_in_order_once_the_engine_is_ready(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    feed = tmp_path / "endpoints.json"
    write_endpoints(feed, [])
    router = router_factory(
        "--endpoints-file", str(feed), "--model", "cold", "--hold-timeout", "60"
    )
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    clients, steps = 100, 3
    got: dict[int, list[int]] = {}
    failed: list[BaseException] = []

    def one_client(i: int) -> None:
        try:
            tokens = []
            for step in range(steps):
                # Each request asks for its own length: the answers show which request each is.
                resp = client.completions.create(
                    model="cold",
                    prompt=f"client {i} step {step}",
                    max_tokens=1 + step,
                    extra_body={"ignore_eos": True},
                )
                assert resp.usage is not None
                tokens.append(resp.usage.completion_tokens)
            got[i] = tokens
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: held(router.url) == clients, timeout_s=20)
        # The engine is listed as starting before it is up, as the supervisor does on a wake.
        port = free_port()
        write_endpoints(
            feed, [{"url": f"http://127.0.0.1:{port}", "models": ["cold"], "state": "starting"}]
        )
        sim_factory(
            "--model", "cold", "--profile", "instant", "--port", str(port), "--startup-delay", "2"
        )
    finally:
        for t in threads:
            t.join(timeout=60)
        client.close()
    assert failed == []
    assert got == {i: [1, 2, 3] for i in range(clients)}
    text = metrics(router.url)
    assert metric_value(text, "vfleet_router_activations_total", model="cold") == 1
    assert metric_value(text, "vfleet_router_held_requests", model="cold") == 0
    assert metric_value(text, "vfleet_router_hold_seconds_count", model="cold") == clients
    assert 'status="503"' not in text
    assert demand(router.url)["models"]["cold"] == {
        "inflight": 0,
        "held": 0,
        "requests": clients * steps,
    }


def test_engine_listed_as_starting_is_not_served_before_its_health_answers(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    feed = tmp_path / "endpoints.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    write_endpoints(feed, [{"url": url, "models": ["cold"], "state": "starting"}])
    router = router_factory("--endpoints-file", str(feed), "--hold-timeout", "30")
    c = Client(router.url)
    assert c.get("/vfleet/demand").json()["endpoints"] == {url: 0}
    sock = send_held(router.url)  # a model only a starting engine serves: held, not refused
    try:
        assert wait_for(lambda: held(router.url) == 1)
        assert (
            metric_value(metrics(router.url), "vfleet_router_endpoint_healthy", upstream=url) == 0
        )
        sim_factory(
            "--model", "cold", "--profile", "instant", "--port", str(port), "--startup-delay", "1"
        )
        sock.settimeout(20)
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply
    finally:
        sock.close()
    assert held(router.url) == 0


def test_held_request_for_a_model_whose_engines_are_all_down_gets_503_at_its_deadline(
    router_factory: Factory,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory("--backend", f"{dead}=cold", "--hold-timeout", "0.3")
    resp = Client(router.url).post("/v1/completions", HOLD)
    assert resp.status == 503
    assert resp.headers["retry-after"] == "10"
    assert resp.error["type"] == "service_unavailable"
    text = metrics(router.url)
    assert metric_value(text, "vfleet_router_hold_timeouts_total", model="cold") == 1
    assert metric_value(text, "vfleet_router_hold_seconds_count", model="cold") == 1
    assert metric_value(text, "vfleet_router_held_requests", model="cold") == 0
    assert Client(router.url).post("/v1/completions", {**HOLD, "model": "nope"}).status == 404


def test_full_hold_queue_gives_429_with_retry_after(router_factory: Factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory(
        "--backend", dead, "--model", "cold", "--hold-max-queued", "2", "--hold-timeout", "30"
    )
    socks = [send_held(router.url) for _ in range(2)]
    try:
        assert wait_for(lambda: held(router.url) == 2)
        resp = Client(router.url).post("/v1/completions", HOLD)
        assert resp.status == 429
        assert resp.headers["retry-after"] == "2"
        assert resp.error["type"] == "rate_limit_error"
        text = metrics(router.url)
        assert metric_value(text, "vfleet_router_hold_rejected_total", model="cold") == 1
        assert metric_value(text, "vfleet_router_held_requests", model="cold") == 2
        assert metric_value(text, "vfleet_router_requests_total", model="cold", status="429") == 1
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: held(router.url) == 0)


def test_client_that_leaves_while_held_is_forgotten_and_counted_nowhere(
    router_factory: Factory,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory("--backend", dead, "--model", "cold", "--hold-timeout", "30")
    sock = send_held(router.url)
    assert wait_for(lambda: held(router.url) == 1)
    assert metric_value(metrics(router.url), "vfleet_router_held_requests", model="cold") == 1
    sock.close()
    assert wait_for(lambda: held(router.url) == 0)
    text = metrics(router.url)
    assert metric_value(text, "vfleet_router_held_requests", model="cold") == 0
    assert "vfleet_router_requests_total{" not in text  # neither answered nor refused
    assert "vfleet_router_hold_seconds_count" not in text
    assert demand(router.url)["models"]["cold"] == {"inflight": 0, "held": 0, "requests": 0}


def test_models_lists_a_known_model_at_zero(router_factory: Factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router = router_factory("--backend", f"{dead}=other", "--model", "cold")
    with openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0) as client:
        assert sorted(m.id for m in client.models.list().data) == ["cold", "other"]


def test_release_cap_lets_held_requests_through_as_engines_finish(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("hold_release_max_inflight: 1\nhold_timeout_s: 30\n")
    feed = tmp_path / "endpoints.json"
    write_endpoints(feed, [])
    router = router_factory(
        "--config", str(config), "--endpoints-file", str(feed), "--model", "cold"
    )
    socks = [send_held(router.url, {**HOLD, "max_tokens": 5, "ignore_eos": True}) for _ in range(5)]
    try:
        assert wait_for(lambda: held(router.url) == 5)
        sim = sim_factory("--model", "cold", "--profile", "instant", "--step-base-ms", "5")
        write_endpoints(feed, [{"url": sim.url, "models": ["cold"]}])
        replies = []
        for s in socks:  # one at a time on the engine, each released as the one before ends
            s.settimeout(20)
            replies.append(s.recv(65536))
        assert all(r.startswith(b"HTTP/1.1 200") for r in replies), replies
    finally:
        for s in socks:
            s.close()
    assert demand(router.url)["models"]["cold"] == {"inflight": 0, "held": 0, "requests": 5}


def test_endpoints_file_states() -> None:
    from vfleet.router.config import BackendSpec, parse_endpoints

    raw = [
        "http://a:1",
        {"url": "http://b:2/", "models": ["m"], "state": "starting"},
        {"url": "http://c:3", "state": "ready"},
    ]
    assert parse_endpoints(raw, "x") == [
        BackendSpec("http://a:1"),
        BackendSpec("http://b:2", ("m",), starting=True),
        BackendSpec("http://c:3"),
    ]
