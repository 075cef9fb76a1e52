"""Keep-alive HTTP/1.1 connections from the router to engines.

`UpstreamPool.send()` writes one request on an idle pooled connection (or a new one) and reports
the response to a `Sink` as it arrives: head, body chunks (de-chunked by httptools, passed on as
they are, never parsed), end, or an error that says whether any byte of the response had
arrived, which decides whether the router may retry. Timeouts: connect, first byte, and idle
gap between body chunks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools

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


class UpstreamError(Exception):
    """The engine failed this request; `started` when part of the response had arrived."""

    def __init__(self, kind: str, url: str, started: bool) -> None:
        super().__init__(f"{kind} from {url}")
        self.kind = kind  # "connect", "timeout", "reset"
        self.url = url
        self.started = started


class Sink(Protocol):
    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool,
                length: int | None) -> None: ...  # fmt: skip

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...

    def on_error(self, err: UpstreamError) -> None: ...


class _Upstream(asyncio.Protocol):
    """One connection to an engine; one request at a time."""

    __slots__ = ("_headers", "_interim", "_parser", "_pool", "_started", "deadline", "key",
                 "sink", "timeouts", "transport")  # fmt: skip

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._started = False
        self._interim = False  # parsing a 1xx response, which is not the answer
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
        """The client went away: drop this connection so the engine aborts the request."""
        self.sink = None
        self._pool.active.discard(self)
        if self.transport is not None:
            self.transport.abort()

    # -- parsing ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("reset")

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
            self._pool.release(self)
        elif self.transport is not None:
            self.transport.close()

    # -- failures ---------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        self._pool.active.discard(self)
        if self.sink is not None:
            self._fail("reset")

    def timeout(self) -> None:
        self._fail("timeout")
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, kind: str) -> None:
        self._pool.active.discard(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_error(UpstreamError(kind, self.key, self._started))

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
        self._idle: dict[str, deque[_Upstream]] = {}
        self.active: set[_Upstream] = set()  # connections with a request in flight
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Time out requests whose engine went quiet past their deadline."""
        now = self.loop.time()
        late = [up for up in self.active if 0.0 < up.deadline <= now]
        for up in late:
            up.timeout()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def send(self, url: str, data: bytes, sink: Sink, first_byte_s: float, idle_s: float,
             on_conn: Callable[[_Upstream], None]) -> None:  # fmt: skip
        """Send `data` (a whole request) to `url`; `on_conn` gets the connection (for aborts)."""
        idle = self._idle.get(url)
        while idle:
            up = idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                on_conn(up)
                up.send(data, sink, first_byte_s, idle_s)
                return
        task = self.loop.create_task(self._connect(url))
        task.add_done_callback(lambda t: self._connected(t, url, data, sink, first_byte_s, idle_s,
                                                          on_conn))  # fmt: skip

    async def _connect(self, url: str) -> _Upstream:
        host, port = host_port(url)
        _, proto = await asyncio.wait_for(
            self.loop.create_connection(lambda: _Upstream(self, url), host, port),
            self.connect_s,
        )
        return proto

    def _connected(self, task: asyncio.Task[_Upstream], url: str, data: bytes, sink: Sink,
                   first_byte_s: float, idle_s: float,
                   on_conn: Callable[[_Upstream], None]) -> None:  # fmt: skip
        if task.cancelled() or task.exception() is not None:
            sink.on_error(UpstreamError("connect", url, False))
            return
        up = task.result()
        on_conn(up)
        if up.transport is None or up.transport.is_closing():
            return  # the client left while this connection was opening
        up.send(data, sink, first_byte_s, idle_s)

    def release(self, up: _Upstream) -> None:
        idle = self._idle.setdefault(up.key, deque())
        if len(idle) < self.max_idle:
            idle.append(up)
        elif up.transport is not None:
            up.transport.close()

    def forget(self, up: _Upstream) -> None:
        idle = self._idle.get(up.key)
        if idle is not None and up in idle:
            idle.remove(up)

    def close(self) -> None:
        self._sweeper.cancel()
        for idle in self._idle.values():
            for up in idle:
                if up.transport is not None:
                    up.transport.close()
        self._idle.clear()
