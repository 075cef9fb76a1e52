"""End-to-end tests of the admin and utility routes over HTTP.

Health, version, models, load, tokenize, LoRA adapters, sleep, API keys, client disconnects and
HTTP/1.1 connection handling, each against real `vfleet sim` processes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from conftest import SimProcess, start_sim
from httpclient import Client, Conn, RawReader, Response, http_request, raw_socket, wait_for

MAX_LEN = 512  # gen_sim's --max-model-len
PERMISSION_KEYS = [
    "id",
    "object",
    "created",
    "allow_create_engine",
    "allow_sampling",
    "allow_logprobs",
    "allow_search_indices",
    "allow_view",
    "allow_fine_tuning",
    "organization",
    "group",
    "is_blocking",
]
CARD_KEYS = ["id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"]
UNAUTHORIZED = {"error": "Unauthorized"}
NOT_FOUND = {"detail": "Not Found"}
MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gen(gen_sim: SimProcess) -> Client:
    return Client(gen_sim.url)


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimProcess]:
    """10 ms per engine step, so requests stay in flight long enough to observe."""
    sp = start_sim(
        "--model",
        "slow",
        "--profile",
        "instant",
        "--step-base-ms",
        "10",
        "--enable-server-load-tracking",
    )
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def static_sim() -> Iterator[SimProcess]:
    """Two served names and an adapter loaded at start; 5 ms steps; no load tracking."""
    sp = start_sim(
        "--model",
        "/models/base",
        "--served-model-name",
        "base",
        "--served-model-name",
        "alias",
        "--lora-modules",
        "sql=/adapters/sql",
        "--profile",
        "instant",
        "--step-base-ms",
        "5",
    )
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def auth_sim() -> Iterator[SimProcess]:
    sp = start_sim(
        "--model", "locked", "--profile", "instant", "--api-key", "key-one", "--api-key", "key-two"
    )
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        yield ex


def completion(c: Client, max_tokens: int, **body: Any) -> Response:
    return c.post(
        "/v1/completions",
        {"prompt": "in flight", "max_tokens": max_tokens, "ignore_eos": True, **body},
    )


def metric(c: Client, name: str, **labels: str) -> float:
    return c.metric(name, **labels)


def check_card(
    card: dict[str, Any], id_: str, root: str, parent: str | None, max_len: int | None
) -> None:
    assert list(card) == CARD_KEYS
    assert card["id"] == id_ and card["root"] == root and card["parent"] == parent
    assert card["max_model_len"] == max_len
    assert card["object"] == "model" and card["owned_by"] == "vllm"
    assert abs(card["created"] - time.time()) < 5
    [perm] = card["permission"]
    assert list(perm) == PERMISSION_KEYS
    assert re.fullmatch(r"modelperm-[0-9a-f]{32}", perm["id"])
    assert perm["object"] == "model_permission"
    assert perm["created"] == card["created"]
    assert (
        perm["allow_create_engine"],
        perm["allow_sampling"],
        perm["allow_logprobs"],
        perm["allow_search_indices"],
        perm["allow_view"],
        perm["allow_fine_tuning"],
    ) == (False, True, True, False, True, False)
    assert perm["organization"] == "*" and perm["group"] is None
    assert perm["is_blocking"] is False


# -- small routes -----------------------------------------------------------------------------


def test_health_is_200_with_empty_body(gen: Client) -> None:
    resp = gen.get("/health")
    assert (resp.status, resp.body) == (200, b"")
    assert gen.get("/health?probe=1").status == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_ping(gen: Client, method: str) -> None:
    resp = gen.request(method, "/ping")
    assert (resp.status, resp.body) == (200, b"")


def test_version(gen: Client) -> None:
    resp = gen.get("/version")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"version": "0.26.0"}


def test_models_card(gen: Client) -> None:
    resp = gen.get("/v1/models")
    assert resp.status == 200
    out = resp.json()
    assert list(out) == ["object", "data"] and out["object"] == "list"
    [card] = out["data"]
    check_card(card, "demo", "demo", None, MAX_LEN)


def test_models_permission_ids_are_fresh(gen: Client) -> None:
    a = gen.get("/v1/models").json()["data"][0]["permission"][0]["id"]
    b = gen.get("/v1/models").json()["data"][0]["permission"][0]["id"]
    assert a != b


def test_models_with_served_names_and_static_lora(static_sim: SimProcess) -> None:
    cards = Client(static_sim.url).get("/v1/models").json()["data"]
    assert [c["id"] for c in cards] == ["base", "alias", "sql"]
    check_card(cards[0], "base", "/models/base", None, 4096)
    check_card(cards[1], "alias", "/models/base", None, 4096)
    check_card(cards[2], "sql", "/adapters/sql", "base", None)


def test_static_lora_and_alias_serve_requests(static_sim: SimProcess) -> None:
    c = Client(static_sim.url)
    for model in ("base", "alias", "sql"):
        resp = completion(c, 2, model=model)
        assert resp.status == 200, (model, resp.body)
    assert completion(c, 2, model="sql").json()["model"] == "sql"


def test_metrics(gen: Client) -> None:
    resp = gen.get("/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert metric(gen, "vllm:num_requests_running", model_name="demo") == 0


def test_unknown_route_is_404(gen: Client) -> None:
    for method, path in (
        ("GET", "/nope"),
        ("POST", "/v1/nope"),
        ("GET", "/v1"),
        ("GET", "/v1/models/demo/extra"),
    ):
        resp = gen.request(method, path)
        assert resp.status == 404, path
        assert resp.json() == NOT_FOUND


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/completions"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/models"),
        ("DELETE", "/health"),
        ("POST", "/version"),
        ("GET", "/tokenize"),
        ("PUT", "/load"),
    ],
)
def test_wrong_method_is_405(gen: Client, method: str, path: str) -> None:
    resp = gen.request(method, path)
    assert resp.status == 405
    assert resp.json() == {"detail": "Method Not Allowed"}


def test_405_names_the_allowed_methods(gen: Client) -> None:
    # Starlette raises HTTPException(405, headers={"Allow": ...}); FastAPI's handler keeps them.
    resp = gen.request("POST", "/v1/models")
    assert resp.status == 405
    assert resp.headers.get("allow") == "GET"


# -- /load ------------------------------------------------------------------------------------


def test_load_is_zero_when_idle(gen: Client) -> None:
    resp = gen.get("/load")
    assert resp.status == 200
    assert resp.json() == {"server_load": 0}


def test_load_counts_in_flight_requests(slow_sim: SimProcess, pool: ThreadPoolExecutor) -> None:
    c = Client(slow_sim.url)
    assert c.get("/load").json() == {"server_load": 0}
    stream = {"prompt": "s", "max_tokens": 100, "ignore_eos": True, "stream": True}
    futures: list[Future[Any]] = [
        pool.submit(completion, c, 100),
        pool.submit(completion, c, 100),
        pool.submit(c.sse, "/v1/completions", stream),
    ]
    assert wait_for(lambda: c.get("/load").json()["server_load"] == 3, timeout_s=3)
    for f in futures:
        f.result(timeout=10)
    assert wait_for(lambda: c.get("/load").json()["server_load"] == 0, timeout_s=3)


def test_load_stays_zero_without_tracking(static_sim: SimProcess, pool: ThreadPoolExecutor) -> None:
    c = Client(static_sim.url)
    fut = pool.submit(completion, c, 200)
    assert wait_for(lambda: metric(c, "vllm:num_requests_running") == 1, timeout_s=3)
    assert c.get("/load").json() == {"server_load": 0}
    assert fut.result(timeout=10).status == 200


# -- tokenize / detokenize --------------------------------------------------------------------


def test_tokenize_prompt(gen: Client) -> None:
    resp = gen.post("/tokenize", {"prompt": "Hello, world"})
    assert resp.status == 200
    out = resp.json()
    assert list(out) == ["count", "max_model_len", "tokens", "token_strs"]
    assert out["count"] == len(out["tokens"]) > 0
    assert out["max_model_len"] == MAX_LEN
    assert all(isinstance(t, int) and t >= 0 for t in out["tokens"])
    assert out["token_strs"] is None


def test_tokenize_return_token_strs(gen: Client) -> None:
    out = gen.post("/tokenize", {"prompt": "Hello, world", "return_token_strs": True}).json()
    assert isinstance(out["token_strs"], list)
    assert len(out["token_strs"]) == out["count"]
    assert all(isinstance(s, str) and s for s in out["token_strs"])


def test_tokenize_messages(gen: Client) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plain = gen.post("/tokenize", {"prompt": "Hi"}).json()
    with_prompt = gen.post("/tokenize", {"messages": msgs}).json()
    without = gen.post("/tokenize", {"messages": msgs, "add_generation_prompt": False}).json()
    assert with_prompt["count"] > without["count"] > plain["count"]
    assert with_prompt["count"] == len(with_prompt["tokens"])
    assert with_prompt["max_model_len"] == MAX_LEN
    text = gen.post("/detokenize", {"tokens": with_prompt["tokens"]}).json()["prompt"]
    assert "Be brief." in text and "Hi" in text


def test_tokenize_chat_prompt_matches_chat_usage(gen: Client) -> None:
    count = gen.post("/tokenize", {"messages": MSGS}).json()["count"]
    resp = gen.post("/v1/chat/completions", {"messages": MSGS, "max_tokens": 1})
    assert resp.json()["usage"]["prompt_tokens"] == count


def test_tokenize_rejects_both_generation_flags(gen: Client) -> None:
    body = {"messages": MSGS, "add_generation_prompt": True, "continue_final_message": True}
    resp = gen.post("/tokenize", body)
    assert resp.status == 400
    assert resp.error["message"] == (
        "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    )


@pytest.mark.parametrize("text", ["Hello, world", "naïve café ☕ 日本語", "a", "  spaced  "])
def test_detokenize_round_trip(gen: Client, text: str) -> None:
    tokens = gen.post("/tokenize", {"prompt": text}).json()["tokens"]
    resp = gen.post("/detokenize", {"tokens": tokens})
    assert resp.status == 200
    assert resp.json() == {"prompt": text}


@pytest.mark.parametrize(
    "body",
    [
        {"tokens": [-1]},
        {"tokens": ["a"]},
        {"tokens": "abc"},
        {"tokens": [1.5]},
        {},
        {"tokens": [1, None]},
    ],
)
def test_detokenize_bad_tokens_are_400(gen: Client, body: dict[str, Any]) -> None:
    resp = gen.post("/detokenize", body)
    assert resp.status == 400, resp.body
    assert resp.error["type"] == "Bad Request"


@pytest.mark.parametrize("body", [{}, {"prompt": 5}, {"messages": "nope"}])
def test_tokenize_bad_bodies_are_400(gen: Client, body: dict[str, Any]) -> None:
    resp = gen.post("/tokenize", body)
    assert resp.status == 400, resp.body
    assert resp.error["type"] == "Bad Request"


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_tokenize_unknown_model_is_404(gen: Client, path: str) -> None:
    resp = gen.post(path, {"model": "who", "prompt": "x", "tokens": [1]})
    assert resp.status == 404
    assert resp.error == {
        "message": "The model `who` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_tokenize_invalid_json_is_400(gen: Client) -> None:
    resp = gen.post("/tokenize", data=b"{")
    assert resp.status == 400
    assert resp.error["type"] == "Bad Request"


# -- LoRA adapters ----------------------------------------------------------------------------


def test_lora_load_list_use_unload(gen: Client) -> None:
    resp = gen.post("/v1/load_lora_adapter", {"lora_name": "ad1", "lora_path": "/loras/ad1"})
    assert resp.status == 200
    assert resp.body == b"Success: LoRA adapter 'ad1' added successfully."
    try:
        cards = gen.get("/v1/models").json()["data"]
        assert [c["id"] for c in cards] == ["demo", "ad1"]
        check_card(cards[1], "ad1", "/loras/ad1", "demo", None)
        for path, body in (
            ("/v1/completions", {"prompt": "x"}),
            ("/v1/chat/completions", {"messages": MSGS}),
        ):
            resp = gen.post(path, {"model": "ad1", "max_tokens": 2, **body})
            assert resp.status == 200, resp.body
            assert resp.json()["model"] == "ad1"
        assert gen.post("/tokenize", {"model": "ad1", "prompt": "x"}).status == 200
    finally:
        resp = gen.post("/v1/unload_lora_adapter", {"lora_name": "ad1"})
    assert resp.status == 200
    assert resp.body == b"Success: LoRA adapter 'ad1' removed successfully."
    assert [c["id"] for c in gen.get("/v1/models").json()["data"]] == ["demo"]
    resp = gen.post("/v1/completions", {"model": "ad1", "prompt": "x", "max_tokens": 2})
    assert resp.status == 404
    assert resp.error["message"] == "The model `ad1` does not exist."


def test_lora_load_twice_is_400(gen: Client) -> None:
    body = {"lora_name": "twice", "lora_path": "/loras/t"}
    assert gen.post("/v1/load_lora_adapter", body).status == 200
    try:
        resp = gen.post("/v1/load_lora_adapter", body)
        assert resp.status == 400
        assert resp.error == {
            "message": "The lora adapter 'twice' has already been loaded. If you want to load "
            "the adapter in place, set 'load_inplace' to True.",
            "type": "InvalidUserInput",
            "param": None,
            "code": 400,
        }
        inplace = gen.post("/v1/load_lora_adapter", {**body, "load_inplace": True})
        assert inplace.status == 200
        assert sum(c["id"] == "twice" for c in gen.get("/v1/models").json()["data"]) == 1
    finally:
        gen.post("/v1/unload_lora_adapter", {"lora_name": "twice"})


def test_lora_unload_unknown_is_404(gen: Client) -> None:
    resp = gen.post("/v1/unload_lora_adapter", {"lora_name": "never-loaded"})
    assert resp.status == 404
    assert resp.error == {
        "message": "The lora adapter 'never-loaded' cannot be found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


@pytest.mark.parametrize(
    ("path", "body", "type_"),
    [
        ("/v1/load_lora_adapter", {"lora_name": "x"}, "Bad Request"),
        ("/v1/load_lora_adapter", {"lora_path": "/p"}, "Bad Request"),
        ("/v1/load_lora_adapter", {"lora_name": "", "lora_path": "/p"}, "InvalidUserInput"),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": 3}, "Bad Request"),
        ("/v1/unload_lora_adapter", {}, "Bad Request"),
        ("/v1/unload_lora_adapter", {"lora_name": ""}, "InvalidUserInput"),
    ],
)
def test_lora_bad_requests_are_400(
    gen: Client, path: str, body: dict[str, Any], type_: str
) -> None:
    resp = gen.post(path, body)
    assert resp.status == 400, resp.body
    assert resp.error["type"] == type_


# -- sleep ------------------------------------------------------------------------------------


def test_sleep_queues_requests_until_wake_up(
    slow_sim: SimProcess, pool: ThreadPoolExecutor
) -> None:
    c = Client(slow_sim.url)
    assert c.get("/is_sleeping").json() == {"is_sleeping": False}
    resp = c.post("/sleep?level=1")
    assert (resp.status, resp.body) == (200, b"")
    try:
        assert c.get("/is_sleeping").json() == {"is_sleeping": True}
        fut = pool.submit(completion, c, 3)
        assert wait_for(lambda: metric(c, "vllm:num_requests_waiting") == 1, timeout_s=3)
        time.sleep(0.3)  # several step times: nothing may be generated while asleep
        assert not fut.done()
        assert metric(c, "vllm:num_requests_running") == 0
    finally:
        woke = c.post("/wake_up")
    assert (woke.status, woke.body) == (200, b"")
    resp = fut.result(timeout=10)
    assert resp.status == 200, resp.body
    assert resp.json()["usage"]["completion_tokens"] == 3
    assert c.get("/is_sleeping").json() == {"is_sleeping": False}


@pytest.mark.parametrize("query", ["level=abc", "level=", "level=1&mode=sideways"])
def test_sleep_bad_arguments_are_400(slow_sim: SimProcess, query: str) -> None:
    c = Client(slow_sim.url)
    resp = c.post(f"/sleep?{query}")
    try:
        assert resp.status == 400, resp.body
        assert resp.error["code"] == 400
        assert c.get("/is_sleeping").json() == {"is_sleeping": False}
    finally:
        c.post("/wake_up")


def test_wake_up_when_awake_is_harmless(gen: Client) -> None:
    resp = gen.post("/wake_up?tags=weights&tags=kv_cache")
    assert (resp.status, resp.body) == (200, b"")
    assert gen.get("/is_sleeping").json() == {"is_sleeping": False}
    assert completion(gen, 2).status == 200


# -- client disconnect ------------------------------------------------------------------------


def test_disconnect_mid_stream_aborts_the_request(slow_sim: SimProcess) -> None:
    c = Client(slow_sim.url)
    aborted = metric(c, "vllm:request_success_total", finished_reason="abort")
    body = {"prompt": "a long stream", "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with raw_socket(slow_sim.url) as sock:
        sock.sendall(http_request("POST", "/v1/completions", body))
        got = b""
        while got.count(b"data: ") < 2:
            chunk = sock.recv(4096)
            assert chunk, "stream closed early"
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 ")
        assert metric(c, "vllm:num_requests_running") == 1
    assert wait_for(lambda: metric(c, "vllm:num_requests_running") == 0, timeout_s=3)
    assert wait_for(
        lambda: metric(c, "vllm:request_success_total", finished_reason="abort") == aborted + 1,
        timeout_s=3,
    )
    assert c.get("/load").json() == {"server_load": 0}
    assert completion(c, 2).status == 200


def test_disconnect_while_waiting_for_full_response(slow_sim: SimProcess) -> None:
    c = Client(slow_sim.url)
    aborted = metric(c, "vllm:request_success_total", finished_reason="abort")
    with raw_socket(slow_sim.url) as sock:
        body = {"prompt": "x", "max_tokens": 3000, "ignore_eos": True}
        sock.sendall(http_request("POST", "/v1/completions", body))
        assert wait_for(lambda: metric(c, "vllm:num_requests_running") == 1, timeout_s=3)
    assert wait_for(lambda: metric(c, "vllm:num_requests_running") == 0, timeout_s=3)
    assert wait_for(
        lambda: metric(c, "vllm:request_success_total", finished_reason="abort") == aborted + 1,
        timeout_s=3,
    )


# -- API keys ---------------------------------------------------------------------------------


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_api_key_guards_v1(auth_sim: SimProcess) -> None:
    c = Client(auth_sim.url)
    for headers in (
        None,
        bearer("wrong"),
        {"Authorization": "Basic key-one"},
        {"Authorization": "key-one"},
        bearer(""),
    ):
        resp = c.get("/v1/models", headers=headers)
        assert resp.status == 401, headers
        assert resp.json() == UNAUTHORIZED
        resp = c.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, headers=headers)
        assert resp.status == 401
        assert resp.json() == UNAUTHORIZED


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_any_configured_key_is_accepted(auth_sim: SimProcess, key: str) -> None:
    c = Client(auth_sim.url)
    assert c.get("/v1/models", headers=bearer(key)).status == 200
    resp = c.post("/v1/completions", {"prompt": "x", "max_tokens": 1}, headers=bearer(key))
    assert resp.status == 200, resp.body
    resp = c.get("/v1/models", headers={"Authorization": f"bEaReR {key}"})
    assert resp.status == 200


def test_lora_routes_are_guarded(auth_sim: SimProcess) -> None:
    c = Client(auth_sim.url)
    body = {"lora_name": "g", "lora_path": "/g"}
    resp = c.post("/v1/load_lora_adapter", body)
    assert resp.status == 401
    assert resp.json() == UNAUTHORIZED


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/health", None),
        ("GET", "/metrics", None),
        ("GET", "/version", None),
        ("GET", "/ping", None),
        ("GET", "/load", None),
        ("POST", "/tokenize", {"prompt": "x"}),
        ("POST", "/detokenize", {"tokens": [120]}),
        ("GET", "/is_sleeping", None),
    ],
)
def test_unguarded_routes_need_no_key(
    auth_sim: SimProcess, method: str, path: str, body: Any
) -> None:
    resp = Client(auth_sim.url).request(method, path, body)
    assert resp.status == 200, resp.body


def test_api_key_is_checked_before_routing(auth_sim: SimProcess) -> None:
    # vLLM's AuthenticationMiddleware runs before the router, so any /v1, /v2 or /inference path
    # without a valid key is 401, whether or not a route exists for it or its method.
    c = Client(auth_sim.url)
    guarded = [
        ("GET", "/v1/nope"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v2/rerank"),
        ("GET", "/v1/completions"),
        ("GET", "/inference/v1/generate"),
    ]
    for method, path in guarded:
        resp = c.request(method, path)
        assert resp.status == 401, (method, path, resp.body)
        assert resp.json() == UNAUTHORIZED
    assert c.get("/nope").status == 404  # unguarded prefix: plain 404


def test_api_key_token_is_compared_exactly(auth_sim: SimProcess) -> None:
    # The token is everything after the first space; vLLM does not strip it.
    resp = Client(auth_sim.url).get("/v1/models", headers={"Authorization": "Bearer  key-one"})
    assert resp.status == 401


def test_vllm_api_key_env(sim_factory: Callable[..., SimProcess]) -> None:
    sp = sim_factory(
        "--model", "envkeyed", "--profile", "instant", env={"VLLM_API_KEY": "from-env"}
    )
    c = Client(sp.url)
    assert c.get("/v1/models").status == 401
    assert c.get("/v1/models", headers=bearer("from-env")).status == 200
    assert c.get("/health").status == 200


def test_api_key_flag_overrides_env(sim_factory: Callable[..., SimProcess]) -> None:
    sp = sim_factory(
        "--model",
        "m",
        "--profile",
        "instant",
        "--api-key",
        "flag",
        env={"VLLM_API_KEY": "from-env"},
    )
    c = Client(sp.url)
    assert c.get("/v1/models", headers=bearer("flag")).status == 200
    assert c.get("/v1/models", headers=bearer("from-env")).status == 401


# -- HTTP/1.1 connection handling -------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(gen_sim: SimProcess) -> None:
    with Conn(gen_sim.url) as conn:
        first = conn.request("GET", "/health")
        sock = conn.http.sock
        assert first.status == 200 and sock is not None
        assert conn.request("GET", "/v1/models").status == 200
        out = conn.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 3})
        assert out.status == 200
        stream = conn.request(
            "POST", "/v1/completions", {"prompt": "x", "max_tokens": 3, "stream": True}
        )
        assert stream.body.endswith(b"data: [DONE]\n\n")
        assert conn.request("POST", "/v1/completions", data=b"{").status == 400
        assert conn.request("GET", "/nope").status == 404
        assert conn.request("POST", "/tokenize", {"prompt": "x"}).status == 200
        assert conn.http.sock is sock  # never reconnected


def test_pipelined_requests_are_answered_in_order(slow_sim: SimProcess) -> None:
    reqs = [
        http_request(
            "POST", "/v1/completions", {"prompt": "p", "max_tokens": 20, "ignore_eos": True}
        ),
        http_request("GET", "/version"),
        http_request(
            "POST",
            "/v1/completions",
            {"prompt": "p", "max_tokens": 5, "ignore_eos": True, "stream": True},
        ),
        http_request("POST", "/tokenize", {"prompt": "abcdefgh"}),
        http_request("GET", "/missing"),
    ]
    with raw_socket(slow_sim.url) as sock:
        sock.sendall(b"".join(reqs))
        reader = RawReader(sock)
        status, _, body = reader.response()
        assert status == 200
        assert b'"completion_tokens":20' in body
        assert reader.response()[::2] == (200, b'{"version":"0.26.0"}')
        status, headers, body = reader.response()
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert body.endswith(b"data: [DONE]\n\n")
        status, _, body = reader.response()
        assert status == 200 and b'"count":2' in body
        assert reader.response()[::2] == (404, b'{"detail":"Not Found"}')
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing more: exactly one response per request


def test_connection_close_is_honoured(gen_sim: SimProcess) -> None:
    with raw_socket(gen_sim.url) as sock:
        req = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(req)
        status, _, body = RawReader(sock).response()
        assert (status, body) == (200, b'{"version":"0.26.0"}')
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the server closed its side
