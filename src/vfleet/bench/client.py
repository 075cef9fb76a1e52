"""The load generator's HTTP/1.1 client: keep-alive connections, streamed responses timed as
their bytes arrive.

Built on an asyncio Protocol and httptools rather than a general client so that the generator's
own cost per request stays small (the point of a benchmark is to measure the server): each
`data_received` is timestamped once (every event it carries gets that time), server-sent events
are split in place and each is decoded once, with orjson. Every exchange is bounded in time
(`timeout_s`) and size (`MAX_BODY` for a body, `MAX_EVENT` for one event); idle connections are
kept up to `max_idle`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson

from vfleet.http.client import split_url

MAX_BODY = 16 * 1024 * 1024
MAX_EVENT = 1024 * 1024
MAX_CHUNK_TIMES = 1_000_000  # per response; more chunks than this are counted, not timed


@dataclass(slots=True)
class Exchange:
    """What one request saw. Times are `time.perf_counter()` values."""

    sent: float = 0.0
    status: int = 0
    first_token: float | None = None
    done: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunks: int = 0
    usage: dict[str, Any] | None = None
    body: bytes = b""  # non-streamed answers and error bodies
    error: str = ""  # the stream's own error event, if any


class _Conn(asyncio.Protocol):
    """One keep-alive connection; `exchange` runs one request at a time on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        self.ex = Exchange()
        self.now = 0.0
        self.stream = False
        self.buf = bytearray()
        self.body = bytearray()
        # httptools answers should_keep_alive() only inside on_message_complete (after feed_data
        # returns it says False): taken there, or every request would open a new connection
        self.keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP answer: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("the connection closed before a complete answer")

    # httptools callbacks: they never raise, they record the failure
    def on_headers_complete(self) -> None:
        self.ex.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
            self.stream = True

    def on_body(self, data: bytes) -> None:
        if not self.stream or self.ex.status != 200:
            if len(self.body) + len(data) > MAX_BODY:
                self._fail(f"answer body over {MAX_BODY} bytes")
            else:
                self.body += data
            return
        self.buf += data
        start = 0
        while (end := self.buf.find(b"\n\n", start)) >= 0:
            self._event(bytes(self.buf[start:end]))
            start = end + 2
        del self.buf[:start]
        if len(self.buf) > MAX_EVENT:
            self._fail(f"a streamed event over {MAX_EVENT} bytes")

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.ex.done = self.now
        self.ex.body = bytes(self.body)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _event(self, event: bytes) -> None:
        if not event.startswith(b"data:"):
            return  # comments (keep-alive pings) and other fields
        payload = event[5:].lstrip(b" ")
        if payload == b"[DONE]":
            return
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        if "error" in msg:
            self.ex.error = str(msg["error"])[:500]
            return
        for choice in msg.get("choices") or ():
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                ex = self.ex
                if ex.first_token is None:
                    ex.first_token = self.now
                ex.chunks += 1
                if len(ex.chunk_times) < MAX_CHUNK_TIMES:
                    ex.chunk_times.append(self.now)
                break
        if msg.get("usage"):
            self.ex.usage = msg["usage"]

    def _fail(self, why: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    async def exchange(self, head: bytes, body: bytes, sent: float) -> Exchange:
        assert self.transport is not None
        self.ex = Exchange(sent)
        self.keep_alive = False
        self.stream = False
        self.buf.clear()
        self.body.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        await self.waiter
        return self.ex


class Client:
    """POSTs JSON to one base URL over a pool of keep-alive connections."""

    def __init__(self, url: str, api_key: str | None = None, max_idle: int = 4096) -> None:
        if not url.startswith("http://"):
            raise ValueError(f"{url!r}: only http:// URLs are supported")
        self.host, self.port, authority = split_url(url)
        self.prefix = "/" + url.removeprefix("http://").partition("/")[2].strip("/")
        self.prefix = self.prefix.rstrip("/")
        auth = f"authorization: Bearer {api_key}\r\n" if api_key else ""
        if any(c in auth for c in "\0") or auth.count("\r\n") > 1:
            raise ValueError("an API key cannot contain a line break")
        self._head = f"host: {authority}\r\ncontent-type: application/json\r\n{auth}"
        self._idle: list[_Conn] = []
        self._max_idle = max_idle

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> Exchange:
        """POST `body` to `path`; OSError (TimeoutError included) when there is no answer."""
        data = orjson.dumps(body)
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}content-length: {len(data)}\r\n\r\n"
        ).encode()
        # The clock starts before a connection is taken: a new connection's handshake is part
        # of what the user waits for, as in `vllm bench serve`.
        sent = time.perf_counter()
        async with asyncio.timeout(timeout_s):
            conn = await self._get()
            try:
                ex = await conn.exchange(head, data, sent)
            except BaseException:
                conn._fail("aborted")
                raise
        if not conn.closed and conn.keep_alive and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return ex

    async def _get(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.parser = httptools.HttpResponseParser(conn)
                return conn
        _, proto = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        return proto

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
