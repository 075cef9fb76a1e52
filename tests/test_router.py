"""`vfleet router` end to end: real router processes in front of real `vfleet sim` engines.

Everything is observed from outside over 127.0.0.1 sockets: which engine served a request is read
from the engines' own `vllm:request_success_total` counters, the router's view from its /metrics.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import SimProcess, start_router, start_sim
from httpclient import (
    SSE,
    Client,
    Response,
    free_port,
    http_request,
    metric_value,
    raw_socket,
    wait_for,
)

Factory = Callable[..., SimProcess]

HEALTH = ("--health-interval", "0.2")
INSTANT = ("--profile", "instant")
COMPLETION = {"model": "demo", "prompt": "Hello, router.", "max_tokens": 4, "ignore_eos": True}
CHAT = {
    "model": "demo",
    "messages": [{"role": "user", "content": "Say something."}],
    "max_tokens": 4,
    "ignore_eos": True,
}


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_a() -> Iterator[SimProcess]:
    sp = start_sim("--model", "demo", *INSTANT)
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def sim_b() -> Iterator[SimProcess]:
    sp = start_sim("--model", "demo", *INSTANT)
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def emb() -> Iterator[SimProcess]:
    sp = start_sim("--model", "emb", "--task", "embed", *INSTANT, "--embedding-dim", "32")
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def router(sim_a: SimProcess, sim_b: SimProcess, emb: SimProcess) -> Iterator[SimProcess]:
    """Two engines serving `demo` and one serving `emb`, behind the default policy."""
    rp = start_router("--backend", sim_a.url, "--backend", sim_b.url, "--backend", emb.url, *HEALTH)
    yield rp
    rp.stop()


@pytest.fixture
def rc(router: SimProcess) -> Client:
    return Client(router.url)


def successes(sim: SimProcess) -> float:
    """Requests the engine has finished, whatever the reason."""
    text = Client(sim.url).get("/metrics").body.decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


def served(sims: list[SimProcess], send: Callable[[], Response], n: int = 1) -> list[float]:
    """Call `send` n times (each must answer 200); how many each engine finished meanwhile."""
    before = [successes(s) for s in sims]
    for _ in range(n):
        resp = send()
        assert resp.status == 200, resp.body
    after: list[float] = []

    def settled() -> bool:
        after[:] = [successes(s) for s in sims]
        return sum(after) - sum(before) >= n

    assert wait_for(settled, timeout_s=3)
    return [a - b for a, b in zip(after, before, strict=True)]


def served_by(sims: list[SimProcess], send: Callable[[], Response]) -> int:
    """The index of the engine that served one request."""
    delta = served(sims, send)
    assert sorted(delta) == [0.0] * (len(sims) - 1) + [1.0], delta
    return delta.index(1.0)


def router_metric(url: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` matching `labels` (0 when there is none)."""
    text = Client(url).get("/metrics").body.decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric == name and all(w in label_text for w in want):
            total += float(value)
    return total


def healthy(router_url: str, sim_url: str) -> float:
    return metric_value(
        Client(router_url).get("/metrics").body.decode(),
        "vfleet_router_endpoint_healthy",
        upstream=sim_url,
    )


def set_faults(sim: SimProcess, **faults: Any) -> None:
    assert Client(sim.url).post("/sim/faults", faults).status == 200


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys, list lengths and leaf types, no leaf values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def assert_openai_error(resp: Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert resp.status == status, resp.body
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    err = resp.error  # exactly {"error": {message, type, param, code}}, code == status
    assert isinstance(err["message"], str) and err["message"]
    if type_ is not None:
        assert err["type"] == type_, err
    return err


def read_events(sock: socket.socket, n: int) -> bytes:
    """Read a streamed answer until it holds `n` SSE events; the bytes so far."""
    got = b""
    while got.count(b"data: ") < n:
        chunk = sock.recv(4096)
        assert chunk, f"stream closed early: {got!r}"
        got += chunk
    return got


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- 1. surface -------------------------------------------------------------------------------


def test_models_are_aggregated_and_deduplicated(rc: Client) -> None:
    for path in ("/v1/models", "/models"):
        resp = rc.get(path)
        assert resp.status == 200, resp.body
        body = resp.json()
        assert body["object"] == "list"
        ids = [card["id"] for card in body["data"]]
        assert sorted(ids) == ["demo", "emb"], ids
        assert all(card["object"] == "model" for card in body["data"])


def test_lora_loaded_on_one_engine_is_listed_and_routed_only_there(
    sim_factory: Factory, router_factory: Factory
) -> None:
    x = sim_factory("--model", "demo", *INSTANT)
    y = sim_factory("--model", "demo", *INSTANT)
    rp = router_factory("--backend", x.url, "--backend", y.url, "--policy", "round_robin", *HEALTH)
    c = Client(rp.url)

    def listed() -> set[str]:
        return {card["id"] for card in c.get("/v1/models").json()["data"]}

    load = {"lora_name": "sql-lora", "lora_path": "/adapters/sql"}
    assert Client(x.url).post("/v1/load_lora_adapter", load).status == 200
    assert wait_for(lambda: listed() == {"demo", "sql-lora"}, timeout_s=3), listed()

    body = {**COMPLETION, "model": "sql-lora"}
    assert served([x, y], lambda: c.post("/v1/completions", body), n=6) == [6.0, 0.0]
    assert c.post("/v1/completions", body).json()["model"] == "sql-lora"
    # The base model still alternates over both engines.
    assert served([x, y], lambda: c.post("/v1/completions", COMPLETION), n=4) == [2.0, 2.0]

    assert Client(x.url).post("/v1/unload_lora_adapter", {"lora_name": "sql-lora"}).status == 200
    assert wait_for(lambda: listed() == {"demo"}, timeout_s=3), listed()
    assert_openai_error(c.post("/v1/completions", body), 404)


PASSTHROUGH = [
    pytest.param("/v1/chat/completions", CHAT, id="chat"),
    pytest.param("/v1/chat/completions", {**CHAT, "stream": True}, id="chat-stream"),
    pytest.param("/v1/completions", COMPLETION, id="completions"),
    pytest.param("/v1/completions", {**COMPLETION, "stream": True}, id="completions-stream"),
    pytest.param(
        "/v1/embeddings", {"model": "emb", "input": ["hello world", "bye"]}, id="embeddings"
    ),
    pytest.param(
        "/v1/rerank",
        {"model": "emb", "query": "a cat", "documents": ["cats purr", "the sky"]},
        id="rerank",
    ),
    pytest.param(
        "/v1/score",
        {"model": "emb", "text_1": "a cat", "text_2": ["cats purr", "the sky"]},
        id="score",
    ),
    pytest.param("/tokenize", {"model": "demo", "prompt": "hello tokenizer"}, id="tokenize"),
    pytest.param(
        "/detokenize", {"model": "demo", "tokens": [1819043176, 1864393583]}, id="detokenize"
    ),
]


@pytest.mark.parametrize(("path", "body"), PASSTHROUGH)
def test_routes_answer_as_the_engine_does(
    rc: Client, sim_a: SimProcess, emb: SimProcess, path: str, body: dict[str, Any]
) -> None:
    direct = Client(emb.url if body["model"] == "emb" else sim_a.url)
    if body.get("stream"):
        want, got = direct.sse(path, body), rc.sse(path, body)
        assert got.done_last and want.done_last
        assert [shape(e) for e in got.events] == [shape(e) for e in want.events]
        return
    want_resp, got_resp = direct.post(path, body), rc.post(path, body)
    assert got_resp.status == want_resp.status == 200, got_resp.body
    assert got_resp.headers["content-type"] == want_resp.headers["content-type"]
    want_json, got_json = want_resp.json(), got_resp.json()
    assert shape(got_json) == shape(want_json)
    if path in ("/tokenize", "/detokenize"):
        assert got_json == want_json
    if path == "/v1/embeddings":
        assert got_json["data"] == want_json["data"]


def test_alias_is_listed_and_rewritten(router_factory: Factory, sim_a: SimProcess) -> None:
    rp = router_factory("--backend", sim_a.url, "--alias", "fast=demo", *HEALTH)
    c = Client(rp.url)
    assert {card["id"] for card in c.get("/v1/models").json()["data"]} == {"demo", "fast"}
    resp = c.post("/v1/completions", {**COMPLETION, "model": "fast"})
    assert resp.status == 200, resp.body
    assert resp.json()["model"] == "demo"  # the engine was asked for the model it serves


def test_unprefixed_completions_route(rc: Client) -> None:
    resp = rc.post("/completions", COMPLETION)
    assert resp.status == 200, resp.body
    assert resp.json()["object"] == "text_completion"
    assert resp.json()["usage"]["completion_tokens"] == 4
    resp = rc.post("/chat/completions", CHAT)
    assert resp.status == 200, resp.body
    assert resp.json()["object"] == "chat.completion"


def test_health_and_ready(rc: Client) -> None:
    assert rc.get("/health").status == 200
    resp = rc.get("/ready")
    assert resp.status == 200, resp.body
    assert resp.json()["ready"] is True


def test_ready_is_503_while_a_model_has_no_healthy_endpoint(
    sim_factory: Factory, router_factory: Factory, sim_a: SimProcess
) -> None:
    x = sim_factory("--model", "solo", *INSTANT)
    rp = router_factory("--backend", sim_a.url, "--backend", x.url, *HEALTH)
    c = Client(rp.url)
    assert c.get("/ready").status == 200
    set_faults(x, health_failing=True)
    assert wait_for(lambda: c.get("/ready").status == 503, timeout_s=3)
    body = c.get("/ready").json()
    assert body["ready"] is False and body["unavailable"] == ["solo"]
    assert c.get("/health").status == 200  # liveness does not depend on the engines
    set_faults(x, health_failing=False)
    assert wait_for(lambda: c.get("/ready").status == 200, timeout_s=5)


def test_ready_is_503_with_no_engine_up(router_factory: Factory) -> None:
    rp = router_factory("--backend", f"http://127.0.0.1:{free_port()}", *HEALTH)
    assert Client(rp.url).get("/ready").status == 503


def test_metrics_names(rc: Client, router: SimProcess, sim_a: SimProcess) -> None:
    assert rc.post("/v1/completions", COMPLETION).status == 200
    resp = rc.get("/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.body.decode()
    for name in (
        "vfleet_router_requests_total",
        "vfleet_router_retries_total",
        "vfleet_router_rejected_total",
        "vfleet_router_endpoint_healthy",
        "vfleet_router_endpoint_inflight",
        "vfleet_router_time_to_first_byte_seconds",
        "vfleet_router_request_duration_seconds",
    ):
        assert f"# TYPE {name} " in text, name
    assert (
        router_metric(router.url, "vfleet_router_requests_total", model="demo", status="200") >= 1
    )
    assert metric_value(text, "vfleet_router_endpoint_healthy", upstream=sim_a.url) == 1
    assert metric_value(text, "vfleet_router_request_duration_seconds_count") >= 1


def test_unknown_route_is_404(rc: Client) -> None:
    assert_openai_error(rc.get("/nope"), 404, "not_found_error")
    assert_openai_error(rc.post("/v1/nope", {"model": "demo"}), 404, "not_found_error")


def test_invalid_json_is_400(rc: Client) -> None:
    for data in (b"{not json", b"[1, 2]"):
        resp = rc.post("/v1/completions", data=data)
        assert_openai_error(resp, 400, "invalid_request_error")


def test_missing_model_with_several_models_is_400(rc: Client) -> None:
    body = {k: v for k, v in COMPLETION.items() if k != "model"}
    err = assert_openai_error(rc.post("/v1/completions", body), 400, "invalid_request_error")
    assert err["param"] == "model"


def test_missing_model_with_one_model_uses_it(router_factory: Factory, sim_a: SimProcess) -> None:
    rp = router_factory("--backend", sim_a.url, *HEALTH)
    body = {k: v for k, v in COMPLETION.items() if k != "model"}
    resp = Client(rp.url).post("/v1/completions", body)
    assert resp.status == 200, resp.body


def test_unknown_model_is_404(rc: Client) -> None:
    err = assert_openai_error(rc.post("/v1/completions", {**COMPLETION, "model": "nope"}), 404)
    assert err["param"] == "model"
    assert "nope" in err["message"]


# -- engine responses the router must not misread ---------------------------------------------


class InterimEngine(BaseHTTPRequestHandler):
    """A minimal engine on http.server, which, like uvicorn (so vLLM), answers a request that
    carries `Expect: 100-continue` with an interim `100 Continue` before its real response."""

    protocol_version = "HTTP/1.1"
    models = json.dumps({"object": "list", "data": [{"id": "demo", "object": "model"}]})

    def do_GET(self) -> None:
        self._send(self.models.encode() if self.path == "/v1/models" else b"")

    def do_POST(self) -> None:
        prompt = json.loads(self.rfile.read(int(self.headers["content-length"])))["prompt"]
        time.sleep(0.3)  # generating
        self._send(json.dumps({"answer_to": prompt}).encode())

    def _send(self, body: bytes) -> None:
        with contextlib.suppress(OSError):  # the router may be gone by then
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_interim_100_continue_from_the_engine_is_not_the_answer() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), InterimEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rp = start_router("--backend", f"http://127.0.0.1:{server.server_address[1]}", *HEALTH)
    try:
        c = Client(rp.url)
        try:
            alice = c.post(
                "/v1/completions",
                {"model": "demo", "prompt": "alice's secret"},
                headers={"Expect": "100-continue"},
            )
        except http.client.HTTPException as exc:
            alice = Response(0, {}, repr(exc).encode())
        bob = c.post("/v1/completions", {"model": "demo", "prompt": "bob"})
        assert (bob.status, bob.body) == (200, b'{"answer_to": "bob"}')
        assert (alice.status, alice.body) == (200, b'{"answer_to": "alice\'s secret"}')
    finally:
        rp.stop()  # closes its connections, so the engine's handler threads end
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- 2. the official openai client ------------------------------------------------------------


def test_openai_client_through_the_router(router: SimProcess) -> None:
    with openai.OpenAI(
        base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=10
    ) as client:
        assert {m.id for m in client.models.list().data} == {"demo", "emb"}

        stream = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "Say something."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finals = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert text
        assert finals[-1] in ("stop", "length")
        usage = chunks[-1].usage
        assert usage is not None and 1 <= usage.completion_tokens <= 8

        res = client.embeddings.create(model="emb", input=["hello world", "bye"])
        assert [len(d.embedding) for d in res.data] == [32, 32]

        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="hi", max_tokens=2)


def test_openai_client_with_router_api_key(router_factory: Factory, sim_a: SimProcess) -> None:
    rp = router_factory("--backend", sim_a.url, "--api-key", "sk-router", *HEALTH)
    no_key = {"Authorization": openai.omit}  # the request carries no Authorization header
    with openai.OpenAI(
        base_url=rp.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=10
    ) as client:
        for headers in (no_key, None):
            with pytest.raises(openai.AuthenticationError):
                client.models.list(extra_headers=headers)
            with pytest.raises(openai.AuthenticationError):
                client.completions.create(
                    model="demo", prompt="hi", max_tokens=2, extra_headers=headers
                )
    with openai.OpenAI(
        base_url=rp.url + "/v1", api_key="sk-router", max_retries=0, timeout=10
    ) as client:
        assert [m.id for m in client.models.list().data] == ["demo"]
        out = client.completions.create(model="demo", prompt="hi", max_tokens=2)
        assert out.usage is not None and out.usage.completion_tokens >= 1


# -- 3. policies ------------------------------------------------------------------------------


def test_round_robin_splits_evenly(
    router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    rp = router_factory(
        "--backend", sim_a.url, "--backend", sim_b.url, "--policy", "round_robin", *HEALTH
    )
    c = Client(rp.url)
    assert served([sim_a, sim_b], lambda: c.post("/v1/completions", COMPLETION), n=10) == [5, 5]


def test_session_policy_keeps_a_user_on_one_engine(
    router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    rp = router_factory(
        "--backend", sim_a.url, "--backend", sim_b.url, "--policy", "session", *HEALTH
    )
    c = Client(rp.url)
    seen: dict[str, set[int]] = {}
    for _ in range(3):  # interleaved, so a rotating policy would move users
        for u in range(8):
            user = f"user-{u}"
            body = {**COMPLETION, "user": user}
            seen.setdefault(user, set()).add(
                served_by([sim_a, sim_b], lambda b=body: c.post("/v1/completions", b))
            )
    assert all(len(s) == 1 for s in seen.values()), seen


def test_least_load_prefers_the_idle_engine(sim_factory: Factory, router_factory: Factory) -> None:
    x = sim_factory("--model", "demo", "--profile", "small")
    y = sim_factory("--model", "demo", "--profile", "small")
    rp = router_factory("--backend", x.url, "--backend", y.url, "--policy", "least_load", *HEALTH)
    c = Client(rp.url)
    long = {**COMPLETION, "max_tokens": 3000, "stream": True}
    with raw_socket(rp.url) as sock:
        sock.sendall(http_request("POST", "/v1/completions", long))
        read_events(sock, 2)
        running = [
            metric_value(Client(s.url).get("/metrics").body.decode(), "vllm:num_requests_running")
            for s in (x, y)
        ]
        assert sorted(running) == [0, 1], running
        busy = running.index(1)
        delta = served([x, y], lambda: c.post("/v1/completions", COMPLETION), n=6)
        assert delta[busy] == 0 and delta[1 - busy] == 6, delta


def test_prefix_policy_keeps_identical_long_prompts_together(
    router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    rp = router_factory(
        "--backend", sim_a.url, "--backend", sim_b.url, "--policy", "prefix", *HEALTH
    )
    c = Client(rp.url)
    for topic in ("cats", "dogs"):
        body = {**COMPLETION, "prompt": f"You are an expert on {topic}. " * 40 + "Question?"}
        delta = served([sim_a, sim_b], lambda b=body: c.post("/v1/completions", b), n=6)
        assert sorted(delta) == [0, 6], (topic, delta)


# -- 4. failures ------------------------------------------------------------------------------


def test_dead_backend_is_ejected_and_traffic_flows(
    router_factory: Factory, sim_a: SimProcess
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    rp = router_factory(
        "--backend", dead, "--backend", sim_a.url, "--policy", "round_robin", *HEALTH
    )
    c = Client(rp.url)
    for _ in range(8):
        resp = c.post("/v1/completions", COMPLETION)
        assert resp.status == 200, resp.body
    assert healthy(rp.url, dead) == 0
    assert healthy(rp.url, sim_a.url) == 1


def test_engine_that_dies_is_ejected_and_requests_retry(
    sim_factory: Factory, router_factory: Factory, sim_a: SimProcess
) -> None:
    x = sim_factory("--model", "demo", *INSTANT)
    rp = router_factory(
        "--backend", x.url, "--backend", sim_a.url, "--policy", "round_robin", *HEALTH
    )
    c = Client(rp.url)
    assert served([x, sim_a], lambda: c.post("/v1/completions", COMPLETION), n=2) == [1, 1]
    assert x.stop() == 0
    for _ in range(8):
        resp = c.post("/v1/completions", COMPLETION)
        assert resp.status == 200, resp.body
    assert healthy(rp.url, x.url) == 0


def test_failing_health_ejects_within_a_second_and_recovery_restores(
    sim_factory: Factory, router_factory: Factory
) -> None:
    x = sim_factory("--model", "demo", *INSTANT)
    y = sim_factory("--model", "demo", *INSTANT)
    rp = router_factory("--backend", x.url, "--backend", y.url, "--policy", "round_robin", *HEALTH)
    c = Client(rp.url)
    t0 = time.monotonic()
    set_faults(x, health_failing=True)
    assert wait_for(lambda: healthy(rp.url, x.url) == 0, timeout_s=1.5)
    assert time.monotonic() - t0 < 1.5
    assert served([x, y], lambda: c.post("/v1/completions", COMPLETION), n=6) == [0, 6]
    set_faults(x, health_failing=False)
    assert wait_for(lambda: healthy(rp.url, x.url) == 1, timeout_s=5)
    assert served([x, y], lambda: c.post("/v1/completions", COMPLETION), n=4) == [2, 2]


def test_crashing_engine_requests_are_retried(
    sim_factory: Factory, router_factory: Factory, sim_a: SimProcess
) -> None:
    x = sim_factory("--model", "demo", *INSTANT, "--crash-after-requests", "2")
    rp = router_factory(
        "--backend", x.url, "--backend", sim_a.url, "--policy", "round_robin", *HEALTH
    )
    c = Client(rp.url)
    for _ in range(8):
        resp = c.post("/v1/completions", COMPLETION)
        assert resp.status == 200, resp.body
    assert x.wait_exit(5) == 1  # it did crash
    assert router_metric(rp.url, "vfleet_router_retries_total", model="demo") >= 1


def test_hanging_engine_times_out_and_requests_retry(
    sim_factory: Factory, router_factory: Factory, sim_a: SimProcess
) -> None:
    h = sim_factory("--model", "demo", *INSTANT, "--hang-rate", "1.0")
    rp = router_factory(
        "--backend",
        h.url,
        "--backend",
        sim_a.url,
        "--policy",
        "round_robin",
        "--first-byte-timeout",
        "0.5",
        *HEALTH,
    )
    c = Client(rp.url)
    for _ in range(4):
        t0 = time.monotonic()
        resp = c.post("/v1/completions", COMPLETION)
        assert resp.status == 200, resp.body
        assert time.monotonic() - t0 < 2.0
    assert router_metric(rp.url, "vfleet_router_retries_total", model="demo") >= 1


def test_only_a_hanging_engine_gives_504(sim_factory: Factory, router_factory: Factory) -> None:
    h = sim_factory("--model", "demo", *INSTANT, "--hang-rate", "1.0")
    rp = router_factory("--backend", h.url, "--first-byte-timeout", "0.5", *HEALTH)
    t0 = time.monotonic()
    resp = Client(rp.url).post("/v1/completions", COMPLETION)
    assert time.monotonic() - t0 < 3.0
    assert_openai_error(resp, 504)


def test_stream_broken_mid_way_ends_with_an_sse_error(
    sim_factory: Factory, router_factory: Factory
) -> None:
    x = sim_factory("--model", "demo", *INSTANT, "--drop-stream-after-chunks", "3")
    rp = router_factory("--backend", x.url, *HEALTH)
    body = {**COMPLETION, "max_tokens": 20, "stream": True}
    resp = Client(rp.url).post("/v1/completions", body)
    assert resp.status == 200, resp.body
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    sse = SSE.parse(resp.body)
    assert sse.done_last
    assert len(sse.events) == 4, sse.events
    assert all("choices" in e for e in sse.events[:3])
    error = sse.events[-1]
    assert set(error) == {"error"}, error
    assert list(error["error"]) == ["message", "type", "param", "code"]
    assert error["error"]["code"] == 502


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "full"])
def test_client_disconnect_aborts_the_engine_request(
    sim_factory: Factory, router_factory: Factory, stream: bool
) -> None:
    s = sim_factory("--model", "demo", *INSTANT, "--step-base-ms", "10")
    rp = router_factory("--backend", s.url, *HEALTH)
    sc = Client(s.url)
    aborted = sc.metric("vllm:request_success_total", finished_reason="abort")

    def inflight() -> float:
        return router_metric(rp.url, "vfleet_router_endpoint_inflight", upstream=s.url)

    body = {**COMPLETION, "max_tokens": 3000, "stream": stream}
    with raw_socket(rp.url) as sock:
        sock.sendall(http_request("POST", "/v1/completions", body))
        if stream:
            assert read_events(sock, 2).startswith(b"HTTP/1.1 200 ")
        assert wait_for(lambda: sc.metric("vllm:num_requests_running") == 1, timeout_s=3)
        assert inflight() == 1
    assert wait_for(
        lambda: sc.metric("vllm:request_success_total", finished_reason="abort") == aborted + 1,
        timeout_s=3,
    )
    assert wait_for(lambda: inflight() == 0, timeout_s=3)
    assert wait_for(lambda: sc.metric("vllm:num_requests_running") == 0, timeout_s=3)


# -- 5. limits and keys -----------------------------------------------------------------------


def test_router_api_key(router_factory: Factory, sim_a: SimProcess) -> None:
    rp = router_factory("--backend", sim_a.url, "--api-key", "k-one", *HEALTH)
    c = Client(rp.url)
    for headers in (None, bearer("wrong"), {"Authorization": "k-one"}, bearer("")):
        assert_openai_error(
            c.post("/v1/completions", COMPLETION, headers=headers), 401, "authentication_error"
        )
        assert_openai_error(c.get("/v1/models", headers=headers), 401, "authentication_error")
    assert c.post("/v1/completions", COMPLETION, headers=bearer("k-one")).status == 200
    assert c.get("/v1/models", headers=bearer("k-one")).status == 200
    assert c.get("/health").status == 200


def test_body_limit_is_413(router_factory: Factory, sim_a: SimProcess) -> None:
    rp = router_factory("--backend", sim_a.url, "--max-body-mb", "0.001", *HEALTH)
    c = Client(rp.url)
    big = {**COMPLETION, "prompt": "x" * 4000}
    assert_openai_error(c.post("/v1/completions", big), 413)
    assert c.post("/v1/completions", COMPLETION).status == 200


def test_api_keys_from_the_environment(router_factory: Factory, sim_a: SimProcess) -> None:
    rp = router_factory("--backend", sim_a.url, *HEALTH, env={"VFLEET_API_KEYS": "e-one,e-two"})
    c = Client(rp.url)
    assert_openai_error(c.post("/v1/completions", COMPLETION), 401, "authentication_error")
    for key in ("e-one", "e-two"):
        assert c.post("/v1/completions", COMPLETION, headers=bearer(key)).status == 200


def test_backend_api_key_is_sent_to_engines(sim_factory: Factory, router_factory: Factory) -> None:
    s = sim_factory("--model", "demo", *INSTANT, "--api-key", "engine-key")
    rp = router_factory(
        "--backend", s.url, "--api-key", "client-key", "--backend-api-key", "engine-key", *HEALTH
    )
    c = Client(rp.url)
    auth = bearer("client-key")
    assert [m["id"] for m in c.get("/v1/models", headers=auth).json()["data"]] == ["demo"]
    resp = c.post("/v1/completions", COMPLETION, headers=auth)
    assert resp.status == 200, resp.body
    resp = c.post("/v1/chat/completions", {**CHAT, "stream": True}, headers=auth)
    assert resp.status == 200, resp.body


# -- 6. workers -------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_two_workers_share_the_port_and_stop_on_sigterm(
    router_factory: Factory, sim_a: SimProcess
) -> None:
    rp = router_factory("--backend", sim_a.url, "--workers", "2", *HEALTH)
    assert wait_for(lambda: sum("ready on" in line for line in rp.log) == 2, timeout_s=10)
    assert len(child_pids(rp.proc.pid)) == 2
    c = Client(rp.url)
    n = 40
    for _ in range(n):  # each on a fresh connection, which the kernel spreads over workers
        assert c.post("/v1/completions", COMPLETION).status == 200
    # Whichever worker answers the scrape, it reports the whole router's count (shared table).
    counts = {router_metric(rp.url, "vfleet_router_requests_total") for _ in range(30)}
    assert counts == {n}, counts
    rp.proc.send_signal(signal.SIGTERM)
    assert rp.proc.wait(timeout=10) == 0


# -- 7. command-line errors -------------------------------------------------------------------


def run_router_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vfleet", "router", "--host", "127.0.0.1", "--port", "0", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"`vfleet router {' '.join(args)}` started instead of failing"
        ) from exc


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "no engines"),
        (("--backend", "http://127.0.0.1:8000", "--policy", "fastest"), "fastest"),
        (("--backend", "127.0.0.1:8000"), "127.0.0.1:8000"),
        (("--backend", "http://127.0.0.1:notaport"), "notaport"),
        (("--config", "/nonexistent/router.yaml"), "/nonexistent/router.yaml"),
    ],
    ids=["no-backends", "bad-policy", "no-scheme", "bad-port", "missing-config"],
)
def test_cli_errors_are_one_line(args: tuple[str, ...], needle: str) -> None:
    out = run_router_cli(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    assert needle in lines[0], lines


def test_rate_limit_per_key_answers_429_with_retry_after(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., Any], tmp_path: Path
) -> None:
    sim = sim_factory("--model", "demo", "--profile", "instant")
    keys = tmp_path / "keys.txt"
    keys.write_text("# clients\nkey-a\n\nkey-b\n")
    router = router_factory("--backend", sim.url, "--api-key-file", str(keys), "--rate-limit", "60")
    body = json.dumps({"model": "demo", "prompt": "x", "max_tokens": 1}).encode()

    def post(key: str) -> tuple[int, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
        try:
            conn.request(
                "POST",
                "/v1/completions",
                body=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            )
            resp = conn.getresponse()
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    statuses = [post("key-a")[0] for _ in range(6)]  # burst of 6 for 60/minute
    status, headers = post("key-a")
    assert statuses == [200] * 6
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert post("key-b")[0] == 200  # another key, another bucket
    assert post("nope")[0] == 401


def test_endpoints_url_feed_and_per_model_timeouts(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., Any], tmp_path: Path
) -> None:
    good = sim_factory("--model", "demo", "--profile", "instant")
    slow = sim_factory("--model", "slow", "--profile", "instant", "--hang-rate", "1.0")
    feed = json.dumps([good.url, {"url": slow.url, "models": ["slow"]}]).encode()

    class Feed(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(feed)))
            self.end_headers()
            self.wfile.write(feed)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Feed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "router.yaml"
    config.write_text(
        f"endpoints_url: http://127.0.0.1:{server.server_address[1]}/endpoints\n"
        "health_interval_s: 0.2\n"
        "model_timeouts:\n  slow: {first_byte_timeout_s: 0.3, attempts: 1}\n"
    )
    try:
        router = router_factory("--config", str(config))
        c = Client(router.url)
        assert wait_for(
            lambda: {m["id"] for m in c.get("/v1/models").json()["data"]} == {"demo", "slow"},
            timeout_s=5,
        )
        ok = c.post("/v1/completions", {"model": "demo", "prompt": "x", "max_tokens": 1})
        assert ok.status == 200
        start = time.monotonic()
        late = c.post("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 1})
        assert late.status == 504
        assert time.monotonic() - start < 3.0  # the model's 0.3 s, not the default 600 s
        assert late.json()["error"]["code"] == 504
    finally:
        server.shutdown()
        server.server_close()


def test_oversized_headers_get_431_and_streams_feed_the_gap_histogram(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., Any]
) -> None:
    sim = sim_factory("--model", "demo", "--profile", "small")  # tokens a step apart
    router = router_factory("--backend", sim.url)
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    assert reply.startswith(b"HTTP/1.1 431")
    c = Client(router.url)
    body = {"model": "demo", "prompt": "x", "max_tokens": 6, "ignore_eos": True, "stream": True}
    assert c.sse("/v1/completions", body).done_last
    text = c.get("/metrics").body.decode()
    count = metric_value(text, "vfleet_router_inter_chunk_latency_seconds_count")
    assert count >= 1


def test_token_limit_counts_prompt_and_max_tokens(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., Any]
) -> None:
    sim = sim_factory("--model", "demo", "--profile", "instant")
    router = router_factory("--backend", sim.url, "--api-key", "k", "--token-limit", "100")
    c = Client(router.url)
    auth = {"Authorization": "Bearer k"}
    small = {"model": "demo", "prompt": "x" * 40, "max_tokens": 20}  # 10 + 20 = 30 tokens
    codes = [c.post("/v1/completions", small, headers=auth).status for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # 90 of the minute's 100 spent, 30 more do not fit
    resp = c.post("/v1/completions", small, headers=auth)
    assert resp.status == 429
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in resp.headers


def test_malformed_http_gets_an_openai_shaped_400_and_the_router_keeps_serving(
    sim_a: SimProcess, router_factory: Callable[..., Any]
) -> None:
    router = router_factory("--backend", sim_a.url)
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == 400
    assert Client(router.url).get("/health").status == 200
