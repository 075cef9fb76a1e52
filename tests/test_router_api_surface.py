"""The router's API surface (issue 16, item 4): model retrieval, the Anthropic Messages routes,
stored responses that stay with the engine that made them, and the router's own refusals (405,
413, 415, field types), each in the one error vocabulary.

Pure checks of the routing tables and decisions first, then real routers on 127.0.0.1 in front
of small stdlib engines that answer like vLLM: each keeps its own `/v1/responses` store (ids
`resp_<hex>`) and answers 404 for a response it does not have, so a 200 proves the request
reached the engine that made the response.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from conftest import SimProcess, start_router
from httpclient import Client, RawReader, Response, raw_socket
from vfleet import errors
from vfleet.errors import BadRequest
from vfleet.http.client import Response as HttpAnswer
from vfleet.router import affinity, auth, routes
from vfleet.router.endpoints import Endpoint
from vfleet.router.inbound import check_fields
from vfleet.router.locator import LOOKUP_CONCURRENCY, Locator

HEALTH = ("--health-interval", "0.2")
KEYS = "sk-a,sk-b,sk-c"


# -- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/models/demo", "demo"),
        ("/v1/models/org%2Fname", "org/name"),
        ("/v1/models/org/name", "org/name"),
        ("/models/org%2fname", "org/name"),
        ("/v1/models/a%20b", "a b"),
    ],
)
def test_a_model_id_is_read_from_the_path_encoded_or_not(path: str, model: str) -> None:
    found = routes.match_param(path)
    assert found is not None
    assert found[0].kind == routes.MODEL and found[1] == model


def test_stored_response_paths_carry_their_id() -> None:
    for path, methods in [
        ("/v1/responses/resp_1", {"GET", "DELETE"}),
        ("/v1/responses/resp_1/cancel", {"POST"}),
    ]:
        found = routes.match_param(path)
        assert found is not None
        route, rid = found
        assert (route.kind, rid, route.methods) == (routes.STORED, "resp_1", methods)
    for path in ("/v1/models/", "/v1/responses/", "/v1/responses/resp_1/other", "/v1/other"):
        assert routes.match_param(path) is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"application/json", True),
        (b"application/json; charset=utf-8", True),
        (b"Application/JSON ;charset=UTF-8", True),
        (None, False),
        (b"", False),
        (b"text/plain", False),
        (b"application/x-www-form-urlencoded", False),
        (b"application/jsonx", False),
    ],
)
def test_what_counts_as_json(value: bytes | None, ok: bool) -> None:
    assert routes.is_json(value) is ok


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": 5}, "model"),
        ({"model": ["demo"]}, "model"),
        ({"stream": "maybe"}, "stream"),
        ({"stream": 2}, "stream"),
        ({"messages": "hi"}, "messages"),
        ({"prompt": {"text": "hi"}}, "prompt"),
        ({"input": 3}, "input"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"user": 1}, "user"),
        ({"previous_response_id": 7}, "previous_response_id"),
    ],
)
def test_a_routed_field_of_the_wrong_type_is_named(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_fields(fields)
    assert caught.value.param == param and f"`{param}`" in caught.value.message


def test_what_vllm_accepts_passes() -> None:
    # pydantic's lax reading, as vLLM's request models do it; null is "not given"
    for fields in (
        {"model": None, "stream": None, "messages": None, "max_tokens": None},
        {"stream": "true", "max_tokens": "16", "max_completion_tokens": 8.0},
        {"stream": 1, "prompt": [1, 2, 3], "input": "x", "user": "u"},
    ):
        check_fields(fields)


def test_anthropic_errors_map_the_one_vocabulary() -> None:
    expected = {
        errors.BadRequest: "invalid_request_error",
        errors.MethodNotAllowed: "invalid_request_error",
        errors.UnsupportedMediaType: "invalid_request_error",
        errors.PayloadTooLarge: "request_too_large",
        errors.Unauthorized: "authentication_error",
        errors.ModelNotFound: "not_found_error",
        errors.RateLimited: "rate_limit_error",
        errors.UpstreamError: "api_error",
        errors.UpstreamTimeout: "timeout_error",
        errors.NotReady: "overloaded_error",
    }
    for cls, kind in expected.items():
        body = json.loads(errors.anthropic_error_json(cls("why")))
        assert body == {"type": "error", "error": {"type": kind, "message": "why"}}


def test_x_api_key_verifies_to_the_same_identity_as_bearer() -> None:
    keys = (b"sk-a", b"sk-b")
    assert auth.verify_request({b"x-api-key": b"sk-b"}, keys) == 1
    assert auth.verify_request({b"x-api-key": b" sk-b "}, keys) == 1
    assert auth.verify_request({b"authorization": b"Bearer sk-b"}, keys) == 1
    # a wrong Bearer does not hide a right x-api-key, nor the other way round
    assert auth.verify_request({b"authorization": b"Bearer no", b"x-api-key": b"sk-a"}, keys) == 0
    assert auth.verify_request({b"authorization": b"Bearer sk-a", b"x-api-key": b"no"}, keys) == 0
    for headers in (
        {},
        {b"x-api-key": b""},
        {b"x-api-key": b"sk-c"},
        {b"x-api-key": b"Bearer sk-a"},
    ):
        assert auth.verify_request(headers, keys) is None
    assert (
        auth.request_limit_key({b"x-api-key": b"sk-b"}, keys)
        == auth.request_limit_key({b"authorization": b"bearer sk-b"}, keys)
        == auth.identity(1)
    )


def test_response_owners_are_a_bounded_lru() -> None:
    owners = affinity.Owners(capacity=3)
    for i in range(3):
        owners.learn(f"r{i}", f"http://e{i}")
    assert owners.get("r0") == "http://e0"  # now the most recent
    owners.learn("r3", "http://e3")  # evicts r1, the least recent
    assert len(owners) == 3
    assert owners.get("r1") is None
    assert [owners.get(r) for r in ("r0", "r2", "r3")] == ["http://e0", "http://e2", "http://e3"]


def test_the_owner_must_still_be_listed_and_candidates_are_healthy_servers() -> None:
    up = Endpoint("http://up", ("demo",), healthy=True)
    down = Endpoint("http://down", ("demo",), healthy=False)
    other = Endpoint("http://other", ("emb",), healthy=True)
    listed = {ep.url: ep for ep in (up, down, other)}
    owners = affinity.Owners()
    owners.learn("resp_a", "http://down")
    owners.learn("resp_b", "http://gone")
    assert affinity.owner(owners, "resp_a", listed) is down  # its state is there, and only there
    assert affinity.owner(owners, "resp_b", listed) is None
    assert affinity.owner(owners, "resp_c", listed) is None
    assert affinity.candidates(listed.values(), "demo") == ["http://up"]
    assert affinity.candidates(listed.values()) == ["http://up", "http://other"]


def test_the_id_is_found_in_a_body_or_a_stream() -> None:
    body = orjson.dumps({"id": "resp_abc", "object": "response", "output": [{"id": "msg_1"}]})
    assert affinity.find_id(body) == "resp_abc"
    event = {"type": "response.created", "response": {"id": "resp_def", "output": []}}
    stream = b"event: response.created\ndata: " + orjson.dumps(event) + b"\n\n"
    assert affinity.find_id(stream) == "resp_def"
    assert affinity.find_id(b'{"object": "response", "i') is None


def test_the_locator_takes_the_first_200_bounded_in_time_and_concurrency() -> None:
    live = peak = 0

    async def get(url: str, path: str, timeout_s: float, auth: bytes, cap: int) -> HttpAnswer:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            if url.endswith("hang"):
                await asyncio.sleep(3600)  # never answers: only the lookup's deadline ends it
            await asyncio.sleep(0)
            assert path in ("/v1/responses/resp_a%2Fb", "/v1/responses/resp_x") and auth == b"k"
            return HttpAnswer(200 if url.endswith("owner") else 404, b"{}")
        finally:
            live -= 1

    async def scenario() -> None:
        owners = affinity.Owners()
        loc = Locator(owners, timeout_s=0.5, get=get)
        urls = [f"http://e{i}" for i in range(100)] + ["http://owner", "http://hang"]
        first = loc.locate("resp_a/b", urls, b"k")
        assert loc.locate("resp_a/b", urls, b"k") is first  # one round of questions per id
        assert await first == "http://owner" and owners.get("resp_a/b") == "http://owner"
        assert peak <= LOOKUP_CONCURRENCY
        # nobody answers 200: None once the deadline passes, and nothing learned
        assert await loc.locate("resp_x", ["http://hang", "http://e1"], b"k") is None
        assert owners.get("resp_x") is None and live == 0

    asyncio.run(scenario())


# -- engines that answer like vLLM -------------------------------------------------------------


class Engine:
    """A stdlib HTTP engine serving `models`, with its own store of responses."""

    def __init__(self, name: str, models: tuple[str, ...] = ("demo",)) -> None:
        self.name = name
        self.models = models
        self.stored: dict[str, dict[str, Any]] = {}
        self.headers: list[dict[str, str]] = []  # of each /v1/messages request
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _not_found(rid: str) -> dict[str, Any]:
    message = f"Response with id '{rid}' not found."
    return {"error": {"message": message, "type": "NotFoundError", "param": None, "code": 404}}


def _handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode())

        def _stored_id(self) -> str:
            return unquote(self.path.partition("?")[0].removeprefix("/v1/responses/"))

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/health":
                self._send(200, b"")
            elif path == "/metrics":
                self._send(200, b"", "text/plain")
            elif path == "/v1/models":
                cards = [{"id": m, "object": "model", "owned_by": "vllm"} for m in engine.models]
                self._json(200, {"object": "list", "data": cards})
            elif path.startswith("/v1/responses/"):
                rid = self._stored_id()
                with engine.lock:
                    found = engine.stored.get(rid)
                self._json(200, found) if found else self._json(404, _not_found(rid))
            else:
                self._json(404, {"detail": "Not Found"})

        def do_DELETE(self) -> None:
            rid = self._stored_id()
            with engine.lock:
                found = engine.stored.pop(rid, None)
            if found:
                self._json(200, {"id": rid, "object": "response", "deleted": True})
            else:
                self._json(404, _not_found(rid))

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.partition("?")[0]
            if path == "/v1/responses":
                self._create(body)
            elif path == "/v1/messages":
                with engine.lock:
                    engine.headers.append({k.lower(): v for k, v in self.headers.items()})
                self._json(
                    200,
                    {
                        "id": "msg_" + uuid.uuid4().hex,
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [{"type": "text", "text": engine.name}],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": 3, "output_tokens": 1},
                    },
                )
            elif path == "/v1/messages/count_tokens":
                self._json(200, {"input_tokens": 3})
            elif path.endswith("/cancel"):
                rid = self._stored_id().removesuffix("/cancel")
                with engine.lock:
                    found = engine.stored.get(rid)
                self._json(200, found) if found else self._json(404, _not_found(rid))
            else:
                self._json(404, {"detail": "Not Found"})

        def _create(self, body: dict[str, Any]) -> None:
            previous = body.get("previous_response_id")
            with engine.lock:
                if previous is not None and previous not in engine.stored:
                    self._json(404, _not_found(previous))
                    return
                rid = "resp_" + uuid.uuid4().hex
                answer = {
                    "id": rid,
                    "object": "response",
                    "model": body["model"],
                    "status": "completed",
                    "previous_response_id": previous,
                    "output": [{"id": "msg_" + uuid.uuid4().hex, "type": "message"}],
                    "metadata": {"engine": engine.name},
                }
                engine.stored[rid] = answer
            if not body.get("stream"):
                self._json(200, answer)
                return
            created = {"type": "response.created", "sequence_number": 0, "response": answer}
            done = {"type": "response.completed", "sequence_number": 1, "response": answer}
            events = b"".join(
                b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode())
                for e in (created, done)
            )
            self._send(200, events, "text/event-stream")

    return Handler


@pytest.fixture(scope="module")
def engines() -> Iterator[list[Engine]]:
    made = [Engine("e0", ("demo", "org/name")), Engine("e1"), Engine("e2"), Engine("e3")]
    yield made
    for e in made:
        e.close()


def _router(engines: list[Engine], *args: str, env: dict[str, str] | None = None) -> SimProcess:
    backends = [a for e in engines for a in ("--backend", e.url)]
    return start_router(*backends, *HEALTH, *args, env=env)


@pytest.fixture(scope="module")
def router(engines: list[Engine]) -> Iterator[SimProcess]:
    """Round robin over the four engines: without affinity, follow-ups would wander."""
    rp = _router(engines, "--policy", "round_robin")
    yield rp
    rp.stop()


@pytest.fixture(scope="module")
def replica(engines: list[Engine]) -> Iterator[SimProcess]:
    """Another router, two workers, that never sees the answers `router` relays."""
    rp = _router(engines, "--policy", "round_robin", "--workers", "2")
    yield rp
    rp.stop()


@pytest.fixture(scope="module")
def keyed(engines: list[Engine]) -> Iterator[SimProcess]:
    """Client keys on, one request a minute per key."""
    rp = _router(engines, "--rate-limit", "1", env={"VFLEET_API_KEYS": KEYS})
    yield rp
    rp.stop()


def _openai_error(resp: Response, status: int, kind: str, param: str | None = None) -> str:
    err = resp.error  # asserts the OpenAI shape and code == status
    assert resp.status == status and err["type"] == kind and err["param"] == param, resp.body
    return str(err["message"])


def _anthropic_error(resp: Response, status: int, kind: str) -> str:
    body = resp.json()
    assert resp.status == status, resp.body
    assert list(body) == ["type", "error"] and body["type"] == "error", body
    assert list(body["error"]) == ["type", "message"] and body["error"]["type"] == kind, body
    return str(body["error"]["message"])


def _engine_of(resp: Response) -> str:
    assert resp.status == 200, resp.body
    return str(resp.json()["metadata"]["engine"])


def _create(c: Client, **extra: Any) -> Response:
    return c.post("/v1/responses", {"model": "demo", "input": "hi", **extra})


# -- models --------------------------------------------------------------------------------------


def test_a_model_is_retrieved_by_id_with_or_without_encoded_slashes(router: SimProcess) -> None:
    c = Client(router.url)
    assert c.get("/v1/models/demo").json()["id"] == "demo"
    for path in ("/v1/models/org%2Fname", "/v1/models/org/name", "/models/org%2Fname"):
        resp = c.get(path)
        assert resp.status == 200 and resp.json()["id"] == "org/name", (path, resp.body)
    message = _openai_error(c.get("/v1/models/org%2Fnope"), 404, "not_found_error", "model")
    assert "`org/nope`" in message


# -- refusals --------------------------------------------------------------------------------------


def test_a_wrong_method_on_a_known_route_is_405_with_allow(router: SimProcess) -> None:
    c = Client(router.url)
    for method, path, allow in [
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/demo", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/responses/resp_x", "DELETE, GET"),
        ("GET", "/v1/responses", "POST"),
        ("POST", "/health", "GET"),
    ]:
        resp = c.request(method, path)
        message = _openai_error(resp, 405, "invalid_request_error")
        assert resp.headers["allow"] == allow and method in message, (method, path)
    resp = c.get("/v1/messages")
    assert "GET" in _anthropic_error(resp, 405, "invalid_request_error")
    assert resp.headers["allow"] == "POST"
    # an unknown route stays 404
    _openai_error(c.request("PUT", "/v1/nothing"), 404, "not_found_error")


def test_a_body_that_is_not_declared_json_is_415(router: SimProcess) -> None:
    c = Client(router.url)
    data = json.dumps({"model": "demo", "input": "hi"}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {} if ctype is None else {"Content-Type": ctype}
        with raw_socket(router.url) as sock:
            head = f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            sock.sendall(head.encode() + b"\r\n" + data)
            status, _, body = RawReader(sock).response()
        resp = Response(status, {}, body)
        assert "application/json" in _openai_error(resp, 415, "invalid_request_error")
    for ctype in ("application/json; charset=utf-8", "Application/JSON"):
        resp = c.post("/v1/responses", data=data, headers={"Content-Type": ctype})
        assert resp.status == 200, (ctype, resp.body)
    resp = c.post("/v1/messages", data=data, headers={"Content-Type": "text/plain"})
    _anthropic_error(resp, 415, "invalid_request_error")


def test_a_declared_length_over_the_limit_is_413_before_the_body(engines: list[Engine]) -> None:
    rp = _router(engines[:1], "--max-body-mb", "1")
    try:
        for path, check in [
            ("/v1/responses", lambda r: _openai_error(r, 413, "invalid_request_error")),
            ("/v1/messages", lambda r: _anthropic_error(r, 413, "request_too_large")),
        ]:
            with raw_socket(rp.url) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 1000000000\r\n\r\n".encode()
                )  # and no body at all: the answer cannot wait for it
                status, _, body = RawReader(sock).response()
            check(Response(status, {}, body))
    finally:
        rp.stop()


def test_routed_fields_of_the_wrong_type_are_400_naming_the_field(router: SimProcess) -> None:
    c = Client(router.url)
    for path, body, param in [
        ("/v1/chat/completions", {"model": 7, "messages": []}, "model"),
        ("/v1/chat/completions", {"model": "demo", "messages": "hi"}, "messages"),
        ("/v1/completions", {"model": "demo", "prompt": "x", "stream": "maybe"}, "stream"),
        ("/v1/completions", {"model": "demo", "prompt": "x", "max_tokens": "lots"}, "max_tokens"),
        ("/v1/responses", {"model": "demo", "previous_response_id": 3}, "previous_response_id"),
    ]:
        message = _openai_error(c.post(path, body), 400, "invalid_request_error", param)
        assert f"`{param}`" in message
    resp = c.post("/v1/messages", {"model": "demo", "messages": {"role": "user"}})
    assert "`messages`" in _anthropic_error(resp, 400, "invalid_request_error")


# -- the Messages API ------------------------------------------------------------------------------


def test_messages_are_relayed_and_refused_in_anthropic_shape(router: SimProcess) -> None:
    c = Client(router.url)
    msg = {"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    resp = c.post("/v1/messages", msg)
    assert resp.status == 200 and resp.json()["type"] == "message", resp.body
    resp = c.post("/v1/messages/count_tokens", {k: msg[k] for k in ("model", "messages")})
    assert resp.status == 200 and resp.json() == {"input_tokens": 3}
    message = _anthropic_error(
        c.post("/v1/messages", {**msg, "model": "nope"}), 404, "not_found_error"
    )
    assert "`nope`" in message


def test_x_api_key_is_the_same_key_with_the_same_limit(
    keyed: SimProcess, engines: list[Engine]
) -> None:
    c = Client(keyed.url)
    msg = {"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    _anthropic_error(c.post("/v1/messages", msg), 401, "authentication_error")
    bad = c.post("/v1/messages", msg, headers={"x-api-key": "sk-wrong"})
    _anthropic_error(bad, 401, "authentication_error")
    _openai_error(c.get("/v1/models", {"x-api-key": "sk-wrong"}), 401, "authentication_error")
    assert c.get("/v1/models", {"x-api-key": "sk-a"}).status == 200

    before = [len(e.headers) for e in engines]
    ok = c.post(
        "/v1/messages", msg, headers={"x-api-key": "sk-a", "anthropic-version": "2023-06-01"}
    )
    assert ok.status == 200, ok.body
    seen = [h for e, n in zip(engines, before, strict=True) for h in e.headers[n:]]
    assert len(seen) == 1
    # the router's key stays at the router; the client's other headers go on
    assert "x-api-key" not in seen[0] and "authorization" not in seen[0]
    assert seen[0]["anthropic-version"] == "2023-06-01"

    # one key, either header: one bucket (a request a minute); another key has its own
    again = c.post("/v1/messages", msg, headers={"Authorization": "Bearer sk-a"})
    _anthropic_error(again, 429, "rate_limit_error")
    assert int(again.headers["retry-after"]) >= 1
    _openai_error(
        c.post("/v1/responses", {"model": "demo", "input": "x"}, headers={"x-api-key": "sk-a"}),
        429,
        "rate_limit_error",
    )
    other = c.post("/v1/responses", {"model": "demo", "input": "x"}, headers={"x-api-key": "sk-b"})
    assert other.status == 200, other.body


# -- stored responses ------------------------------------------------------------------------------


def test_a_conversation_stays_on_the_engine_that_stored_it(router: SimProcess) -> None:
    c = Client(router.url)
    first = _create(c)
    owner = _engine_of(first)
    rid = first.json()["id"]
    for _ in range(6):  # round robin would have sent these to every engine
        resp = _create(c, previous_response_id=rid)
        assert _engine_of(resp) == owner
        rid = resp.json()["id"]
    # fresh conversations still spread
    assert len({_engine_of(_create(c)) for _ in range(4)}) > 1


def test_a_streamed_answer_teaches_its_id_too(router: SimProcess) -> None:
    c = Client(router.url)
    sse = c.post("/v1/responses", {"model": "demo", "input": "hi", "stream": True})
    assert sse.status == 200 and sse.headers["content-type"].startswith("text/event-stream")
    first = json.loads(sse.body.split(b"data: ", 1)[1].split(b"\n", 1)[0])["response"]
    for _ in range(4):
        resp = _create(c, previous_response_id=first["id"])
        assert _engine_of(resp) == first["metadata"]["engine"]


def test_another_router_finds_the_engine_by_asking(router: SimProcess, replica: SimProcess) -> None:
    made = _create(Client(router.url))
    rid, owner = made.json()["id"], _engine_of(made)
    other = Client(replica.url)  # two workers, neither saw the answer
    for _ in range(4):  # new connections: both workers, each asks once, then knows
        assert _engine_of(_create(other, previous_response_id=rid)) == owner
    got = other.get(f"/v1/responses/{rid}")
    assert got.status == 200 and got.json()["id"] == rid
    assert other.post(f"/v1/responses/{rid}/cancel").status == 200
    assert other.request("DELETE", f"/v1/responses/{rid}").json()["deleted"] is True
    # deleted at its engine: the engine's own 404 comes back unchanged
    gone = other.get(f"/v1/responses/{rid}")
    assert gone.status == 404 and gone.json() == _not_found(rid)


def test_unknown_response_ids(router: SimProcess) -> None:
    c = Client(router.url)
    # nobody has it: the router says so, in the one vocabulary
    message = _openai_error(
        c.get("/v1/responses/resp_nobody"), 404, "not_found_error", "response_id"
    )
    assert "resp_nobody" in message
    _openai_error(
        c.request("DELETE", "/v1/responses/resp_nobody"), 404, "not_found_error", "response_id"
    )
    # a follow-up of an unknown id goes where the policy says; that engine's 404 passes through
    resp = _create(c, previous_response_id="resp_nobody")
    assert resp.status == 404 and resp.json() == _not_found("resp_nobody")
