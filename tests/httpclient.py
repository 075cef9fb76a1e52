"""A small stdlib HTTP client for the end-to-end route tests.

Every call opens its own connection to 127.0.0.1 with a timeout, so a server that never answers
fails the test instead of hanging it. `Conn` keeps one connection open for keep-alive tests.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vfleet.local.gpus import free_ports

TIMEOUT_S = 10.0
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The `error` object of a vLLM error body."""
        body = self.json()
        assert set(body) == {"error"}, body
        err: dict[str, Any] = body["error"]
        assert list(err) == ["message", "type", "param", "code"], err
        assert err["code"] == self.status, err
        return err


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", url
    assert parts.port is not None, url
    return parts.hostname, parts.port


def _encode(json_body: Any, data: bytes | None) -> bytes | None:
    if json_body is not None:
        return json.dumps(json_body).encode()
    return data


def _read(resp: http.client.HTTPResponse) -> Response:
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    return Response(resp.status, headers, body)


def request(
    url: str, method: str, path: str, body: object = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body bytes)."""
    host, port = _address(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = JSON_HEADERS if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Conn:
    """One persistent HTTP/1.1 connection (keep-alive)."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        host, port = _address(url)
        self.http = http.client.HTTPConnection(host, port, timeout=timeout_s)

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = _encode(json_body, data)
        hdrs = {**(JSON_HEADERS if body is not None else {}), **(headers or {})}
        self.http.request(method, path, body=body, headers=hdrs)
        return _read(self.http.getresponse())

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Requests to one server, each on a fresh connection."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        with Conn(self.url, self.timeout_s) as c:
            return c.request(method, path, json_body, data, headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("GET", path, headers=headers)

    def post(
        self,
        path: str,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return self.request("POST", path, json_body, data, headers)

    def sse(self, path: str, json_body: Any, headers: dict[str, str] | None = None) -> SSE:
        """POST a streaming request and read the whole event stream."""
        resp = self.post(path, json_body, headers=headers)
        assert resp.status == 200, resp.body
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
        return SSE.parse(resp.body)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics, matched by name and a subset of its labels."""
        return metric_value(self.get("/metrics").body.decode(), name, **labels)


@dataclass
class SSE:
    events: list[Any]  # decoded JSON of every `data:` event before [DONE]
    done_last: bool  # `data: [DONE]` was the last event, and there was exactly one

    @staticmethod
    def parse(raw: bytes) -> SSE:
        text = raw.decode()
        assert text.endswith("\n\n"), text[-200:]
        blocks = text.split("\n\n")[:-1]
        payloads = []
        for block in blocks:
            lines = block.split("\n")
            assert len(lines) == 1 and lines[0].startswith("data: "), block
            payloads.append(lines[0][len("data: ") :])
        done = [i for i, p in enumerate(payloads) if p == "[DONE]"]
        events = [json.loads(p) for p in payloads if p != "[DONE]"]
        return SSE(events, done == [len(payloads) - 1])


def metric_value(text: str, name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric == name and all(w in label_text for w in want):
            return float(value)
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def wait_for(check: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """Poll `check` until it is true or `timeout_s` passes; returns its last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def free_port() -> int:
    """A loopback port free a moment ago, for a process that must be told its port up front
    (another process may take it in between; the tests that use it start at once)."""
    return free_ports(1)[0]


def raw_socket(url: str, timeout_s: float = TIMEOUT_S) -> socket.socket:
    return socket.create_connection(_address(url), timeout=timeout_s)


class RawReader:
    """Reads HTTP/1.1 responses (content-length or chunked) from a raw socket, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed mid-response")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, decoded body) of the next response."""
        status = int(self._line().split(b" ")[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            return status, headers, body
        return status, headers, self._take(int(headers["content-length"]))


def http_request(method: str, path: str, body: Any = None) -> bytes:
    """The bytes of one HTTP/1.1 request for a raw socket."""
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data
