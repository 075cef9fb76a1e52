"""One error vocabulary (issue 15, item 3): every error the router or its HTTP edge answers itself
is `{"error": {"message", "type", "param", "code"}}` with `code` the HTTP status and `type` taken
from one table, whichever path produced it.

The unit tests check `vfleet.errors`; the end-to-end tests provoke each status from a real router
(in front of real sims and two small misbehaving engines) and check the body against the table
written out here, independently of the module.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import SimProcess, start_router, start_sim
from httpclient import Client, free_port, http_request, request, wait_for
from vfleet import errors

# The vocabulary as documented in vfleet/errors.py, by HTTP status.
VOCABULARY = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    415: "invalid_request_error",
    417: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}


def _leaves(cls: type[errors.VfleetError]) -> Iterator[type[errors.VfleetError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _leaves(sub)


ALL_ERRORS = sorted(set(_leaves(errors.VfleetError)), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_class_speaks_the_one_vocabulary(cls: type[errors.VfleetError]) -> None:
    assert cls.type == VOCABULARY[cls.status]
    body = json.loads(errors.error_json(cls('a "quoted" message\n')))
    assert body == {
        "error": {
            "message": 'a "quoted" message\n',
            "type": cls.type,
            "param": None,
            "code": cls.status,
        }
    }


@pytest.mark.parametrize("status", sorted(VOCABULARY))
def test_for_status_gives_an_error_of_that_status(status: int) -> None:
    err = errors.for_status(status, "why")
    assert (err.status, err.type, err.message) == (status, VOCABULARY[status], "why")


def test_upstream_errors_carry_where_and_whether_started() -> None:
    err = errors.UpstreamTimeout("timeout from x", "http://x", True)
    assert (err.url, err.started, err.status) == ("http://x", True, 504)
    assert isinstance(err, errors.UpstreamError) and isinstance(err, errors.ServerError)


# -- end to end ------------------------------------------------------------------------------


class _Resetting(BaseHTTPRequestHandler):
    """An engine that passes its probes and drops every inference request unanswered."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        data = b'{"object":"list","data":[]}'
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.close_connection = True  # closes without a response

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def routers() -> Iterator[tuple[str, str]]:
    """(a router with every kind of engine, a router with an API key and a rate limit)."""
    resetting = ThreadingHTTPServer(("127.0.0.1", 0), _Resetting)
    thread = threading.Thread(target=resetting.serve_forever, daemon=True)
    thread.start()
    ok = start_sim("--model", "demo", "--profile", "instant")
    hang = start_sim("--model", "hang", "--profile", "instant", "--hang-rate", "1.0")
    procs: list[SimProcess] = [ok, hang]
    try:
        main = start_router(
            "--backend",
            ok.url,
            "--backend",
            hang.url,
            "--backend",
            f"http://127.0.0.1:{resetting.server_address[1]}=reset",
            "--backend",
            f"http://127.0.0.1:{free_port()}=dead",
            "--model-hold",
            "dead=0",
            "--first-byte-timeout",
            "0.5",
            "--max-body-mb",
            "0.01",
            "--health-interval",
            "0.2",
        )
        procs.append(main)
        keyed = start_router(
            "--backend",
            ok.url,
            "--rate-limit",
            "1",
            "--health-interval",
            "0.2",
            env={"VFLEET_API_KEYS": "sesame"},
        )
        procs.append(keyed)
        c = Client(main.url)
        assert wait_for(lambda: c.get("/v1/models").status == 200, timeout_s=10)
        assert wait_for(
            lambda: request(main.url, "POST", "/v1/completions", _body("demo"))[0] == 200,
            timeout_s=10,
        )
        yield main.url, keyed.url
    finally:
        for p in procs:
            p.stop()
        resetting.shutdown()
        resetting.server_close()
        thread.join(timeout=10)


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "hi", "max_tokens": 2}


def _raw(url: str, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes; (status, body) of the answer, read until the server closes."""
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while part := sock.recv(65536):
            out += part
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def _post(url: str, data: bytes, key: str | None = None) -> tuple[int, bytes]:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return _raw(url, head.encode() + data)


def _rate_limited(url: str) -> tuple[int, bytes]:
    for _ in range(10):  # one request a minute: the second is refused
        status, body = _post(url, json.dumps(_body("demo")).encode(), "sesame")
        if status == 429:
            break
    return status, body


Case = Callable[[str, str], tuple[int, bytes]]
CASES: dict[str, tuple[int, Case]] = {
    "invalid-json": (400, lambda m, k: _post(m, b"{")),
    "not-an-object": (400, lambda m, k: _post(m, b"[1]")),
    "no-model": (400, lambda m, k: _post(m, b'{"prompt": "hi"}')),
    "malformed-http": (400, lambda m, k: _raw(m, b"GET / HTTP/1.1\r\nHost x\r\n\r\n")),
    "bad-key": (401, lambda m, k: _post(k, json.dumps(_body("demo")).encode(), "wrong")),
    "unknown-route": (
        404,
        lambda m, k: _raw(m, http_request("GET", "/nope")[:-2] + b"Connection: close\r\n\r\n"),
    ),
    "unknown-model": (404, lambda m, k: _post(m, json.dumps(_body("nope")).encode())),
    "body-too-large": (413, lambda m, k: _post(m, b'{"prompt": "' + b"x" * 20000 + b'"}')),
    "url-too-long": (414, lambda m, k: _raw(m, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")),
    "header-too-large": (
        431,
        lambda m, k: _raw(m, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n"),
    ),
    "rate-limited": (429, lambda m, k: _rate_limited(k)),
    "engine-resets": (502, lambda m, k: _post(m, json.dumps(_body("reset")).encode())),
    "no-engine-ready": (503, lambda m, k: _post(m, json.dumps(_body("dead")).encode())),
    "engine-times-out": (504, lambda m, k: _post(m, json.dumps(_body("hang")).encode())),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_error_path_answers_the_one_vocabulary(routers: tuple[str, str], case: str) -> None:
    status, provoke = CASES[case]
    got, body = provoke(*routers)
    assert got == status, body
    payload = json.loads(body)
    assert list(payload) == ["error"]
    err = payload["error"]
    assert list(err) == ["message", "type", "param", "code"], err
    assert (err["type"], err["code"]) == (VOCABULARY[status], status), err
    assert isinstance(err["message"], str) and err["message"]
