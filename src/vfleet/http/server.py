"""HTTP/1.1 server protocol: parses requests with httptools and writes responses.

Handlers receive a parsed `Request` and the `Connection`; they answer at once with `respond`, or
later (after engine steps or upstream I/O) with `respond`, or stream with `start_stream` /
`send` / `end_stream`. Keep-alive is the default, as in HTTP/1.1.

The client edge is bounded before any handler runs (`EdgeLimits`): the request line, each header
line and the whole head are counted as bytes arrive, a declared body over the limit is refused
before it is read, slow heads and bodies time out, idle connections close, and one `Edge` caps the
open connections of a server. Requests pipelined behind one being answered are held unparsed (up
to a bound; then reading pauses) and answered in order. A refusal is an OpenAI-shaped JSON error;
it never interrupts a response in progress: it waits for it, is sent, and the connection closes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, NoReturn, cast

import httptools

from vfleet.errors import error_json, for_status
from vfleet.http.limits import EdgeLimits, open_file_limit

_DEFAULT_LIMITS = EdgeLimits()
MAX_BODY_BYTES = _DEFAULT_LIMITS.max_body_bytes  # the default; larger bodies get 413 unread
MAX_HEADER_BYTES = _DEFAULT_LIMITS.max_header_bytes  # the default; larger heads get 431

# After a refusal the client may still be sending: its input is read and dropped for a while, so
# that it sees the response and then a clean end instead of a reset that can destroy the response.
LINGER_S: Final = 2.0
LINGER_BYTES: Final = 256 * 1024

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Large reads are parsed in slices of this size: pipelined requests behind one being answered
# stay unparsed bytes (bounded by pipeline_buffer_bytes) instead of queued request objects.
FEED_BYTES: Final = 16 * 1024

# Where the parser is in the current request.
_IDLE: Final = 0  # between requests
_HEAD: Final = 1  # request line and headers arriving
_BODY: Final = 2  # body arriving

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(slots=True, init=False)
class Request:
    method: str
    path: str
    query: str
    headers: dict[bytes, bytes]  # lower-case names, raw values
    body: bytes
    keep_alive: bool
    too_large: bool = False  # body over the limit; it was not read (the connection closes after)

    # One per request: a written __init__ is compiled by mypyc, the generated one is not (0.4 us
    # a request); tests/test_router_state.py checks it sets every field.
    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        too_large: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.too_large = too_large

    def header(self, name: bytes, default: str = "") -> str:
        """One header's value as text (`name` in lower case)."""
        value = self.headers.get(name)
        return default if value is None else value.decode("latin-1")


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
    # Flow control toward the client: the socket's send buffer is above its high-water mark. A
    # handler that sets `on_writable` is told False when it fills and True when it drains.
    write_paused: bool = False
    on_writable: Callable[[bool], None] | None = None

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
        self.on_writable = None
        self.on_done()  # the protocol closes the connection here unless it is kept alive


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def refusal(status: int, message: str) -> bytes:
    """A whole response refusing a request at the edge: an OpenAI-shaped error, then close."""
    body = error_json(for_status(status, message))
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s%s" % (
        status,
        _REASONS.get(status, b"Unknown"),
        len(body),
        b"connection: close\r\n\r\n",
        body,
    )


_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing this connection (already answered)."""


class Edge:
    """What the connections of one listening server share: the limits, the open connections
    (for the max-connections bound) and one sweeper that checks their deadlines.

    Deadlines are swept every `tick_s` instead of armed per request, so the hot path never touches
    a timer: a timeout fires between its limit and its limit plus two ticks."""

    def __init__(self, limits: EdgeLimits | None = None) -> None:
        limits = limits if limits is not None else _DEFAULT_LIMITS
        self.limits = limits
        self.max_url = limits.max_request_line_bytes
        self.max_line = limits.max_header_line_bytes
        self.max_head = limits.max_header_bytes
        self.max_count = limits.max_header_count
        self.max_body = limits.max_body_bytes
        self.header_timeout = limits.header_timeout_s
        self.body_timeout = limits.body_timeout_s
        self.keepalive = limits.keepalive_timeout_s
        self.pipeline_bytes = limits.pipeline_buffer_bytes
        self.max_connections = 0  # fixed at the first connection, when the fd limit is final
        shortest = min(self.header_timeout, self.body_timeout, self.keepalive, LINGER_S)
        self.tick_s = min(max(shortest / 4, 0.05), 1.0)
        self.conns: set[HttpProtocol] = set()
        self.refused = 0  # connections turned away by the max-connections bound
        # Shutting down: idle keep-alive connections are closed, and every response from now on
        # says `connection: close`, so clients reconnect to another replica instead of sending
        # more requests to one that is about to exit.
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def factory(self, handler: Handler) -> Callable[[], HttpProtocol]:
        """A protocol factory for `loop.create_server` whose connections share this edge."""

        def make() -> HttpProtocol:
            return HttpProtocol(handler, edge=self)

        return make

    def admit(self, proto: HttpProtocol) -> bool:
        if not self.max_connections:
            # Refuse with a clear answer before the process runs out of descriptors; a client
            # connection may need an upstream connection too, hence half the limit.
            cap = max(1, open_file_limit() // 2)
            self.max_connections = min(self.limits.max_connections, cap)
        if len(self.conns) >= self.max_connections:
            self.refused += 1
            return False
        self.conns.add(proto)
        if self._timer is None:
            self._loop = loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.tick_s, self._sweep)
        return True

    def drain(self) -> None:
        """Stop keeping connections alive: close the idle ones now, the others after the
        response in progress (or the request still arriving) is answered."""
        self.draining = True
        for proto in list(self.conns):
            proto.close_if_idle()

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        if not self.conns:
            self._timer = None
            return
        now = loop.time()
        for proto in list(self.conns):
            proto.expire(now)
        self._timer = loop.call_later(self.tick_s, self._sweep)


def protocol_factory(
    handler: Handler, limits: EdgeLimits | None = None
) -> Callable[[], HttpProtocol]:
    """The factory to pass to `loop.create_server`: one `Edge` for all its connections."""
    return Edge(limits).factory(handler)


class HttpProtocol(asyncio.Protocol):
    """asyncio protocol for one connection; `handler` is called once per complete request.

    Parsing state lives in flat attributes (not a per-message object) and headers stay bytes:
    this is the per-request hot path of the simulator and the router. Without an `edge`, the
    connection gets one of its own (limits apply, but no shared max-connections bound)."""

    __slots__ = (
        "_began",
        "_body",
        "_completed",
        "_conn",
        "_continue",
        "_count",
        "_deferred",
        "_dispatching",
        "_edge",
        "_feeding",
        "_first_line",
        "_halted",
        "_handler",
        "_head",
        "_headers",
        "_hosts",
        "_line",
        "_linger",
        "_mark",
        "_max_body",
        "_parser",
        "_paused",
        "_pending",
        "_phase",
        "_queue",
        "_seen",
        "_served",
        "_size",
        "_url",
    )

    def __init__(
        self,
        handler: Handler,
        max_body: int | None = None,
        limits: EdgeLimits | None = None,
        edge: Edge | None = None,
    ) -> None:
        self._handler = handler
        self._edge = edge if edge is not None else Edge(limits)
        self._max_body = self._edge.max_body if max_body is None else max_body
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._conn: Connection | None = None
        # the request being parsed
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0  # body bytes
        self._head = 0  # bytes of completed header lines
        self._count = 0  # header lines
        self._hosts = 0  # Host header lines
        self._phase = _IDLE
        # bytes of a head still arriving, counted per read (see _measure)
        self._seen = 0
        self._line = 0
        self._first_line = True
        self._began = False  # a request began during the current read
        self._completed = False  # a request completed during the current read
        # connection state
        self._mark = 0.0  # loop time the current phase was first seen by the sweeper; 0: not yet
        self._served = False
        self._pending = bytearray()  # input held unparsed while a response is in progress
        self._paused = False  # reading paused
        self._feeding = False
        self._dispatching = False
        self._halted = False  # no more parsing: what remains is refused or dropped
        self._deferred = b""  # a refusal waiting for the response in progress
        self._continue = False  # a 100 Continue waiting for the response in progress
        self._linger = -1  # >= 0: closing; input bytes still to drop before the socket closes

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        t = cast(asyncio.Transport, transport)
        if not self._edge.admit(self):
            t.write(refusal(503, "Too many open connections; retry later."))
            t.close()
            return
        self._conn = Connection(t, self._response_done)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._linger >= 0:
            self._linger -= len(data)
            if self._linger < 0:
                conn.transport.close()
            return
        if self._halted:  # waiting for the response in progress; then the connection closes
            self._pause()
            return
        if self._phase != _HEAD:
            self._mark = 0.0  # a body or an idle gap is timed from the last bytes received
        if conn.busy or self._queue or self._pending:
            pending = self._pending
            pending += data
            if len(pending) > self._edge.pipeline_bytes:
                self._pause()
            if not conn.busy and not self._queue:
                self._proceed()  # nothing in progress after all: parse what is held
            return
        self._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._edge.conns.discard(self)
        conn = self._conn
        if conn is None:
            return
        conn.closed = True
        self._queue.clear()
        self._pending.clear()
        cb, conn.on_close = conn.on_close, None
        if cb is not None:
            cb()

    def pause_writing(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.write_paused = True
            if conn.on_writable is not None:
                conn.on_writable(False)

    def resume_writing(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.write_paused = False
            if conn.on_writable is not None:
                conn.on_writable(True)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The phase's mark is 0 already: reset by data_received or on_message_complete.
        self._phase = _HEAD
        self._began = True

    def on_url(self, url: bytes) -> None:
        # llhttp hands the URL over in pieces (one per read): counted before it can pile up.
        url = self._url + url if self._url else url
        if len(url) > self._edge.max_url:
            self._stop(414, "The request URL is too long.")
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        edge = self._edge
        line = len(name) + len(value) + 4  # ": " and CRLF
        self._head += line
        self._count += 1
        if (
            line > edge.max_line
            or self._head + len(self._url) > edge.max_head
            or self._count > edge.max_count
        ):
            self._stop(431, "Request header fields too large.")
        low = name.lower()
        if low == b"host":
            self._hosts += 1
        self._headers[low] = value

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._mark = 0.0
        headers = self._headers
        if self._hosts != 1 and (self._hosts > 1 or self._parser.get_http_version() == "1.1"):
            # RFC 9112 section 3.2: exactly one Host in HTTP/1.1, never two in any version.
            self._stop(400, "A request must carry exactly one Host header.")
        length = headers.get(b"content-length")
        if length is not None and (len(length) > 18 or int(length) > self._max_body):
            self._too_large()
        expect = headers.get(b"expect")
        if expect is not None:
            self._expect(expect)

    def on_body(self, body: bytes) -> None:
        size = self._size + len(body)
        self._size = size
        if size > self._max_body:  # a chunked body grew past the limit
            self._too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._mark = 0.0
        self._completed = True
        if self._parser.should_upgrade():
            # No protocol switch (the router does not tunnel): a plain request is answered over
            # HTTP/1.1 and the connection closes, as the bytes after it are not HTTP/1.1.
            method = self._parser.get_method()
            if method == b"CONNECT" or self._declares_body():
                self._stop(400, "Protocol upgrades are not supported.")
            self._queue.append(self._request(False, False))
        else:
            self._queue.append(self._request(self._parser.should_keep_alive(), False))
        self._proceed()

    # -- requests ---------------------------------------------------------------------------

    def _request(self, keep_alive: bool, too_large: bool) -> Request:
        """The request parsed so far, as handlers see it; the parse state is reset for the next."""
        url = self._url
        if b"?" in url or not url.startswith(b"/"):
            # Any: httptools' stubs say bytes where it returns None (no query), and compiled
            # code checks the declared type.
            parsed: Any = httptools.parse_url(url)
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
            b"" if too_large else body[0] if len(body) == 1 else b"".join(body),
            keep_alive,
            too_large,
        )
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._head = 0
        self._count = 0
        self._hosts = 0
        return req

    def _declares_body(self) -> bool:
        length = self._headers.get(b"content-length")
        chunked = b"transfer-encoding" in self._headers
        return chunked or (length is not None and length.strip(b"0") != b"")

    def _too_large(self) -> NoReturn:
        """The body is over the limit: the handler answers now, without it; then close."""
        self._queue.append(self._request(False, True))
        self._halted = True
        self._proceed()
        raise _Stop

    def _expect(self, expect: bytes) -> None:
        """RFC 9110 section 10.1.1: 100-continue is answered before the body is read."""
        if expect.lower() != b"100-continue":
            self._stop(417, "Only the 100-continue expectation is supported.")
        if not self._declares_body() or self._parser.get_http_version() != "1.1":
            return
        conn = self._conn
        assert conn is not None
        if conn.busy or self._queue:
            self._continue = True  # after the response in progress, not inside it
        else:
            conn.transport.write(CONTINUE)

    # -- dispatch ---------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse `data` in slices; once a request is being answered, hold the rest unparsed, so
        one large read of pipelined requests queues at most a slice's worth of them."""
        n = len(data)
        if n <= FEED_BYTES:
            self._parse(data, data, 0, n)
            return
        conn = self._conn
        assert conn is not None
        view = memoryview(data)
        pos = 0
        while pos < n:
            end = min(pos + FEED_BYTES, n)
            self._parse(view[pos:end], data, pos, end)
            pos = end
            if self._halted or conn.busy or self._queue:
                break
        if pos < n and not self._halted:
            pending = self._pending
            pending += view[pos:]
            if len(pending) > self._edge.pipeline_bytes:
                self._pause()

    def _parse(self, chunk: bytes | memoryview, data: bytes, start: int, end: int) -> None:
        """Feed `chunk` (which is `data[start:end]`) to the parser."""
        self._began = False
        self._completed = False
        self._feeding = True
        try:
            self._parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            self._halted = True  # what follows an upgrade request is not HTTP/1.1
        except httptools.HttpParserError:
            if not self._halted:  # else a callback stopped the parser and answered already
                self._refuse(400, "Malformed HTTP request.")
        finally:
            self._feeding = False
        if self._halted:
            self._settle()
        elif self._phase == _HEAD:
            self._measure(data, start, end)

    def _measure(self, data: bytes, start: int, end: int) -> None:
        """A head is still arriving: bound what the parser holds of it before it piles up.

        llhttp keeps an unfinished header value in one growing string, which the protocol only
        sees when the line ends: so the bytes since the last line break are counted here."""
        if self._began:
            self._seen = 0
            self._line = 0
            self._first_line = True
            if self._completed:
                # This head began behind another request in the same slice: count it from the
                # next slice on (a slice is at most FEED_BYTES).
                return
        n = end - start
        self._seen += n
        nl = data.rfind(b"\n", start, end)
        if nl >= 0:
            self._line = end - nl - 1
            self._first_line = False
        else:
            self._line += n
        edge = self._edge
        if self._first_line:
            if self._line > edge.max_url + 64:  # the URL is counted exactly by on_url
                self._refuse(414, "The request URL is too long.")
        elif self._line > edge.max_line or self._seen > edge.max_head:
            self._refuse(431, "Request header fields too large.")

    def _proceed(self) -> None:
        """No response in progress: dispatch what waits, then refuse or close, or send a
        held-back 100 Continue, or parse the input held back while a response was sent."""
        conn = self._conn
        assert conn is not None
        if self._queue:
            self._next()
        if conn.busy or conn.closed or self._linger >= 0:
            return
        if self._halted:
            self._settle()
            return
        if self._continue:
            self._continue = False
            if self._phase == _BODY:
                conn.transport.write(CONTINUE)
        if self._pending and not self._feeding:
            data = bytes(self._pending)
            self._pending.clear()
            self._resume()
            self._feed(data)
        else:
            self._resume()

    def _next(self) -> None:
        conn = self._conn
        assert conn is not None
        self._dispatching = True
        try:
            while self._queue and not conn.busy and not conn.closed and self._linger < 0:
                req = self._queue.popleft()
                conn.busy = True
                conn.keep_alive = req.keep_alive and not self._edge.draining
                self._handler(req, conn)
        finally:
            self._dispatching = False

    def _response_done(self) -> None:
        conn = self._conn
        assert conn is not None
        self._mark = 0.0
        self._served = True
        if conn.closed or self._linger >= 0:
            return
        if not conn.keep_alive or self._edge.draining:
            self._close()
        elif not self._dispatching:  # else the dispatch loop goes on by itself
            self._proceed()

    # -- refusing and closing ---------------------------------------------------------------

    def _stop(self, status: int, message: str) -> NoReturn:
        self._refuse(status, message)
        raise _Stop

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` and close; after the response in progress, if there is one."""
        self._halted = True
        self._deferred = refusal(status, message)
        if not self._feeding:  # inside the parser, _feed settles when it returns
            self._settle()

    def _settle(self) -> None:
        """A halted connection: once no response is in progress or waiting, send the refusal
        that waits, if any, and close."""
        conn = self._conn
        if conn is None or conn.closed or self._linger >= 0 or conn.transport.is_closing():
            return
        if conn.busy or self._queue:
            self._pause()
            return
        if self._deferred:
            conn.transport.write(self._deferred)
            self._deferred = b""
        self._close()

    def _close(self) -> None:
        """Close after the last response. When unread input may follow (a refused or unfinished
        request), the write side closes first and input is drained for a while (lingering
        close, as nginx does), so the client reads the response rather than a reset."""
        conn = self._conn
        assert conn is not None
        t = conn.transport
        if self._linger >= 0 or t.is_closing():
            return
        self._queue.clear()
        if self._halted or self._phase != _IDLE or self._pending:
            self._halted = True
            self._linger = LINGER_BYTES
            self._mark = 0.0
            self._pending.clear()
            if t.can_write_eof():
                t.write_eof()
            self._resume()
        else:
            t.close()

    def _pause(self) -> None:
        if not self._paused and self._conn is not None and not self._conn.closed:
            self._paused = True
            self._conn.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._conn is not None and not self._conn.closed:
            self._paused = False
            self._conn.transport.resume_reading()

    def close_if_idle(self) -> None:
        """Close now when no request is being answered, queued or arriving (the edge drains)."""
        conn = self._conn
        if conn is None or conn.closed or self._linger >= 0:
            return
        if conn.busy or self._queue or self._pending or self._phase != _IDLE:
            return
        conn.transport.close()

    def expire(self, now: float) -> None:
        """Called by the edge's sweeper: enforce the deadline of the current phase."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        edge = self._edge
        if self._linger >= 0:
            limit = LINGER_S
        elif conn.busy or self._queue or self._halted:
            self._mark = 0.0  # a handler is answering: its own timeouts apply
            return
        elif self._phase == _HEAD:
            limit = edge.header_timeout
        elif self._phase == _BODY:
            limit = edge.body_timeout
        else:
            limit = edge.keepalive if self._served else edge.header_timeout
        if self._mark == 0.0:
            self._mark = now
            return
        if now - self._mark < limit:
            return
        if self._linger >= 0:
            conn.transport.abort()
        elif self._phase == _HEAD:
            self._refuse(408, "Timed out waiting for the request headers.")
        elif self._phase == _BODY:
            self._refuse(408, "Timed out waiting for the request body.")
        else:
            conn.transport.close()  # an idle keep-alive connection: closed quietly
