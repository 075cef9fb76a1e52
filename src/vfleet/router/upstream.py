"""Keep-alive HTTP/1.1 connections from the router to engines.

`UpstreamPool.send()` writes one request on an idle pooled connection (or a new one) and reports
the response to a `Sink` as it arrives: head, body chunks (de-chunked by httptools, passed on as
they are, never parsed), end, or an error that says whether any byte of the response had
arrived. Timeouts: connect, first byte, and idle gap between body chunks.

Flow control: the sink may `pause()` a connection while its client cannot take more (reading from
the engine stops, so at most one read's worth is held per slow client) and `resume()` it later.
While paused, the idle deadline measures the client's stall instead of the engine's silence.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol, cast

import httptools

from vfleet.errors import UpstreamConnectError, UpstreamError, UpstreamReset, UpstreamTimeout

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"date",
        b"server",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


SWEEP_S = 0.1  # how often deadlines are checked; timeouts fire up to this late


class Sink(Protocol):
    def on_head(
        self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool, length: int | None
    ) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...

    def on_error(self, err: UpstreamError) -> None: ...


class UpstreamConn(asyncio.Protocol):
    """One connection to an engine; one request at a time."""

    __slots__ = (
        "_headers",
        "_interim",
        "_parser",
        "_paused",
        "_pool",
        "_started",
        "deadline",
        "key",
        "sink",
        "timeouts",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._started = False
        self._interim = False  # parsing a 1xx response, which is not the answer
        self._paused = False  # reading paused: the client's send buffer is full
        self.deadline = 0.0  # loop time by which the next byte must arrive; 0 = none
        self.timeouts = (0.0, 0.0)  # first byte, idle gap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes, sink: Sink, first_byte_s: float, idle_s: float) -> None:
        assert self.transport is not None
        self.sink = sink
        self._headers = []
        self._started = False
        self.timeouts = (first_byte_s, idle_s)
        # A deadline, not a timer per request: the pool's sweeper checks deadlines every tick.
        self.deadline = self._pool.loop.time() + first_byte_s if first_byte_s > 0 else 0.0
        self._pool.active.add(self)
        self.transport.write(data)

    def abort(self) -> None:
        """The client went away (or the answer is not wanted): drop this connection so the
        engine aborts the request."""
        self.sink = None
        self._pool.active.discard(self)
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        """Stop reading the response until `resume()` (the client's buffer is full)."""
        t = self.transport
        if not self._paused and t is not None and not t.is_closing():
            self._paused = True
            t.pause_reading()
            self._arm_idle()  # from now on it times the client's stall

    def resume(self) -> None:
        t = self.transport
        if self._paused and t is not None and not t.is_closing():
            self._paused = False
            t.resume_reading()
            self._arm_idle()

    # -- parsing ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamReset)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the answer follows.
            self._interim = True
            self._headers = []
            return
        self._started = True
        sink = self.sink
        if sink is None:
            return
        chunked = False
        length: int | None = None
        kept = []
        for name, value in self._headers:
            low = name.lower()
            if low == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif low == b"content-length" and value.isdigit():
                length = int(value)
            if low not in HOP_BY_HOP:
                kept.append((name, value))
        self._arm_idle()
        sink.on_head(status, kept, chunked, length)

    def on_body(self, body: bytes) -> None:
        self._arm_idle()
        if self.sink is not None and not self._interim:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._pool.active.discard(self)
        sink, self.sink = self.sink, None
        keep = self._parser.should_keep_alive()
        if sink is not None:
            sink.on_end()
        if keep and self.transport is not None and not self.transport.is_closing():
            if self._paused:  # paused by the last chunk's write: pooled, it must read again
                self._paused = False
                self.transport.resume_reading()
            self._pool.release(self)
        elif self.transport is not None:
            self.transport.close()

    # -- failures ---------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        self._pool.active.discard(self)
        if self.sink is not None:
            self._fail(UpstreamReset)

    def timeout(self) -> None:
        self._fail(UpstreamTimeout)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: type[UpstreamError]) -> None:
        self._pool.active.discard(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_error(error(f"{error.what} from {self.key}", self.key, self._started))

    def _arm_idle(self) -> None:
        idle = self.timeouts[1]
        self.deadline = self._pool.loop.time() + idle if idle > 0 else 0.0


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of `http://HOST[:PORT][/...]`; an IPv6 host is written in brackets."""
    rest = url.removeprefix("http://").partition("/")[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or host.startswith("[") != host.endswith("]"):
        host, port = rest, ""
    return host.strip("[]"), int(port or 80)


class UpstreamPool:
    """Idle keep-alive connections per engine (host:port), capped per engine."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_s: float, max_idle: int = 256):
        self.loop = loop
        self.connect_s = connect_s
        self.max_idle = max_idle
        self._idle: dict[str, deque[UpstreamConn]] = {}
        self.active: set[UpstreamConn] = set()  # connections with a request in flight
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Time out requests whose engine went quiet past their deadline."""
        now = self.loop.time()
        late = [up for up in self.active if 0.0 < up.deadline <= now]
        for up in late:
            up.timeout()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def send(
        self,
        url: str,
        data: bytes,
        sink: Sink,
        first_byte_s: float,
        idle_s: float,
        on_conn: Callable[[UpstreamConn], None],
    ) -> None:
        """Send `data` (a whole request) to `url`; `on_conn` gets the connection (for aborts)."""
        idle = self._idle.get(url)
        while idle:
            up = idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                on_conn(up)
                up.send(data, sink, first_byte_s, idle_s)
                return
        task = self.loop.create_task(self._connect(url))
        task.add_done_callback(
            lambda t: self._connected(t, url, data, sink, first_byte_s, idle_s, on_conn)
        )

    async def _connect(self, url: str) -> UpstreamConn:
        host, port = host_port(url)
        _, proto = await asyncio.wait_for(
            self.loop.create_connection(lambda: UpstreamConn(self, url), host, port),
            self.connect_s,
        )
        return proto

    def _connected(
        self,
        task: asyncio.Task[UpstreamConn],
        url: str,
        data: bytes,
        sink: Sink,
        first_byte_s: float,
        idle_s: float,
        on_conn: Callable[[UpstreamConn], None],
    ) -> None:
        if task.cancelled() or task.exception() is not None:
            sink.on_error(UpstreamConnectError(f"cannot connect to {url}", url))
            return
        up = task.result()
        on_conn(up)
        if up.transport is None or up.transport.is_closing():
            return  # the client left while this connection was opening
        up.send(data, sink, first_byte_s, idle_s)

    def release(self, up: UpstreamConn) -> None:
        idle = self._idle.setdefault(up.key, deque())
        if len(idle) < self.max_idle:
            idle.append(up)
        elif up.transport is not None:
            up.transport.close()

    def forget(self, up: UpstreamConn) -> None:
        idle = self._idle.get(up.key)
        if idle is not None and up in idle:
            idle.remove(up)

    def retain(self, listed: Collection[str]) -> None:
        """Close the idle connections of engines no longer listed and forget their pools: on
        Kubernetes every pod IP ever seen would otherwise keep an entry. Called periodically
        (not per request); a late release to a departed engine is swept on the next call."""
        for url in [u for u in self._idle if u not in listed]:
            for up in self._idle.pop(url):
                if up.transport is not None:
                    up.transport.close()

    def idle_pools(self) -> int:
        """Engines with an idle-connection pool (bounded by the endpoints listed)."""
        return len(self._idle)

    def close(self) -> None:
        self._sweeper.cancel()
        for idle in self._idle.values():
            for up in idle:
                if up.transport is not None:
                    up.transport.close()
        self._idle.clear()
