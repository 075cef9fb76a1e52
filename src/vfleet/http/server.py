"""HTTP/1.1 server protocol: parses requests with httptools and writes responses.

Handlers receive a parsed `Request` and the `Connection`; they answer at once with `respond`, or
later (after engine steps or upstream I/O) with `respond`, or stream with `start_stream` /
`send` / `end_stream`. Requests that arrive pipelined behind an unfinished one wait their turn,
so responses keep request order. Keep-alive is the default, as in HTTP/1.1.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

MAX_BODY_BYTES = 64 * 1024 * 1024  # larger bodies get 413 without being read into memory
MAX_HEADER_BYTES = 64 * 1024  # larger request heads get 431 and the connection closed

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[bytes, bytes]  # lower-case names, raw values

    def header(self, name: bytes, default: str = "") -> str:
        """One header's value as text (`name` in lower case)."""
        value = self.headers.get(name)
        return default if value is None else value.decode("latin-1")

    body: bytes
    keep_alive: bool
    too_large: bool = False  # body over MAX_BODY_BYTES; it was discarded unread


Handler = Callable[[Request, "Connection"], None]


@dataclass(slots=True)
class Connection:
    """One client connection; at most one response in progress at a time."""

    transport: asyncio.Transport
    on_done: Callable[[], None]  # the protocol's hook to start the next pipelined request
    on_close: Callable[[], None] | None = None  # set by a handler to abort its work
    closed: bool = False
    busy: bool = False
    pending_head: bytes = b""  # a response head not yet written (see start_response)
    chunked: bool = False  # the response in progress uses chunked framing
    keep_alive: bool = True

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        extra_headers: bytes = b"",
    ) -> None:
        """Send a whole response; an empty `content_type` sends no content-type header."""
        if self.closed:
            self._done()
            return
        conn = b"" if self.keep_alive else b"connection: close\r\n"
        ctype = b"content-type: %s\r\n" % content_type if content_type else b""
        head = b"HTTP/1.1 %d %s\r\n%scontent-length: %d\r\n%s%s\r\n" % (
            status,
            _REASONS.get(status, b"Unknown"),
            ctype,
            len(body),
            conn,
            extra_headers,
        )
        self.transport.write(head + body)
        self._done()

    def start_stream(
        self,
        status: int = 200,
        content_type: bytes = b"text/event-stream; charset=utf-8",
        first: bytes = b"",
    ) -> None:
        if self.closed:
            return
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n%s\r\n" % (
            status,
            _REASONS.get(status, b"Unknown"),
            content_type,
            b"" if self.keep_alive else b"connection: close\r\n",
        )
        self.transport.write(head + _chunk(first) if first else head)

    def start_response(self, status: int, headers: bytes, length: int | None) -> None:
        """Head of a body that follows in pieces (`write`, then `finish`): framed by
        content-length when `length` is known, else chunked. `headers` are complete lines."""
        self.chunked = length is None
        if self.closed:
            return
        framing = (
            b"transfer-encoding: chunked\r\n"
            if length is None
            else b"content-length: %d\r\n" % length
        )
        conn = b"" if self.keep_alive else b"connection: close\r\n"
        # Held back and sent with the first body bytes: one write (one syscall) for both.
        self.pending_head = b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (
            status,
            _REASONS.get(status, b"Unknown"),
            headers,
            framing,
            conn,
        )

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        out = _chunk(data) if self.chunked and data else data
        if self.pending_head:
            out, self.pending_head = self.pending_head + out, b""
        if out:
            self.transport.write(out)

    def finish(self, last: bytes = b"") -> None:
        if self.chunked:
            self.end_stream(last)
        else:
            self.write(last)
            self._done()

    def send(self, data: bytes) -> None:
        if data and not self.closed:
            self.transport.write(_chunk(data))

    def end_stream(self, last: bytes = b"") -> None:
        if not self.closed:
            head, self.pending_head = self.pending_head, b""
            self.transport.write(head + (_chunk(last) if last else b"") + b"0\r\n\r\n")
        self._done()

    def close(self) -> None:
        """Close after sending what is buffered, leaving the response unfinished."""
        self.transport.close()

    def _done(self) -> None:
        self.busy = False
        self.on_close = None
        if not self.keep_alive and not self.closed:
            self.transport.close()
        self.on_done()


def _error(status: int, message: str) -> bytes:
    """An OpenAI-shaped error for failures found before any handler runs."""
    return b'{"error":{"message":"%s","type":"invalid_request_error","param":null,"code":%d}}' % (
        message.encode(),
        status,
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


class HttpProtocol(asyncio.Protocol):
    """asyncio protocol for one connection; `handler` is called once per complete request.

    Parsing state lives in flat attributes (not a per-message object) and headers stay bytes:
    this is the per-request hot path of the simulator and the router."""

    __slots__ = (
        "_body",
        "_conn",
        "_dispatching",
        "_handler",
        "_head_size",
        "_headers",
        "_max_body",
        "_parser",
        "_queue",
        "_size",
        "_too_large",
        "_url",
    )  # fmt: skip

    def __init__(self, handler: Handler, max_body: int = MAX_BODY_BYTES) -> None:
        self._handler = handler
        self._max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0
        self._too_large = False
        self._conn: Connection | None = None
        self._dispatching = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._conn = Connection(cast(asyncio.Transport, transport), self._response_done)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, _error(400, "Protocol upgrades are not supported."))
        except httptools.HttpParserError:
            if self._head_size > MAX_HEADER_BYTES:
                self._fail(431, _error(431, "Request headers too large."))
            else:
                self._fail(400, _error(400, "Malformed HTTP request."))

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self._conn
        if conn is None:
            return
        conn.closed = True
        self._queue.clear()
        cb, conn.on_close = conn.on_close, None
        if cb is not None:
            cb()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")  # _head_size says which
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._too_large = True
        if not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        if b"?" in url or not url.startswith(b"/"):
            parsed = httptools.parse_url(url)
            path, query = parsed.path.decode("latin-1"), (parsed.query or b"").decode("latin-1")
        else:
            path, query = url.decode("latin-1"), ""
        method = self._parser.get_method()
        body = self._body
        req = Request(
            _METHODS.get(method) or method.decode("latin-1"),
            path,
            query,
            self._headers,
            b"" if self._too_large else body[0] if len(body) == 1 else b"".join(body),
            self._parser.should_keep_alive(),
            self._too_large,
        )
        # Ready for the next message on this connection.
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._head_size = 0
        self._too_large = False
        self._queue.append(req)
        self._next()

    # -- dispatch ---------------------------------------------------------------------------

    def _next(self) -> None:
        conn = self._conn
        assert conn is not None
        self._dispatching = True
        try:
            while self._queue and not conn.busy and not conn.closed:
                req = self._queue.popleft()
                conn.busy = True
                conn.keep_alive = req.keep_alive
                self._handler(req, conn)
        finally:
            self._dispatching = False

    def _response_done(self) -> None:
        # Answered later than dispatch: resume requests that were pipelined behind it.
        if not self._dispatching and self._queue:
            self._next()

    def _fail(self, status: int, body: bytes) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.keep_alive = False
            conn.respond(status, body)
