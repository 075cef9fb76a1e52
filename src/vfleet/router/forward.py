"""One client request on its way through the router: attempts on engines, then the relay.

A request is *started* once the first byte of its answer is written to the client. Until then the
engine's response head is held back (vLLM sends a stream's head as soon as it admits a request,
long before the request leaves its queue), so an engine that fails before it (connect error,
reset, EOF, timeout, or a 502/503/504 answer) costs a retry on another engine, not an error to
the client, within the model's `attempts`. After it nothing is retried: a stream that breaks ends
with an SSE error event, any other body with a closed connection. A 500 is relayed as it is: it
may be the request's own doing, and a dying engine shows as a reset anyway (unless `retry_5xx`).

Each attempt's outcome feeds its engine's circuit breaker (router.ejection): engine failures
(connection errors, resets, timeouts, 5xx answers) count against it, client errors and clients
that leave do not.

The relay is flow-controlled: when the client's send buffer passes its high-water mark, reading
from the engine stops until it drains, so a slow client holds at most one buffer and one read of
memory; a client that stalls past the idle timeout is dropped, and a client that leaves aborts the
engine's request. In-flight counts are released on every path.

A request pinned to one engine (a stored response lives there: `router.affinity`) is never
retried elsewhere. When the kv policy names a data-parallel rank of the engine it chose (the
rank whose KV cache holds the prompt's prefix), the attempt carries vLLM's
`x-data-parallel-rank` header; other requests' bytes go as they were built. Errors are
written in the route's style (OpenAI's, or Anthropic's on the Messages routes). An answer to
POST /v1/responses is looked at up to its id, which is learned. A request of a tenancy carries
a meter (router.usage) that reads the answer's token usage as it is relayed and charges the key
when the request ends, on every path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from vfleet.errors import (
    NoHealthyEndpoint,
    NotReady,
    RateLimited,
    UpstreamConnectError,
    UpstreamError,
    UpstreamReset,
    UpstreamStatus,
    VfleetError,
)
from vfleet.http.server import Connection
from vfleet.router.activator import Activator
from vfleet.router.affinity import SNIFF_BYTES, Owners, find_id
from vfleet.router.breaker import HALF_OPEN
from vfleet.router.demand import HELD, INFLIGHT, REQUESTS, DemandRow
from vfleet.router.ejection import Ejector
from vfleet.router.endpoints import Endpoint, Registry
from vfleet.router.metrics import RouterMetrics
from vfleet.router.routes import OPENAI, ErrorStyle
from vfleet.router.state import RouteKey
from vfleet.router.tracing import Span
from vfleet.router.upstream import UpstreamConn, UpstreamPool
from vfleet.router.usage import Meter


class Router(Protocol):
    """What a request needs of the router (`proxy.Router`), stated here so that this module
    does not import the one that imports it."""

    @property
    def registry(self) -> Registry: ...

    @property
    def pool(self) -> UpstreamPool: ...

    @property
    def activator(self) -> Activator: ...

    @property
    def demand(self) -> DemandRow: ...

    @property
    def metrics(self) -> RouterMetrics: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def model_limits(self) -> Mapping[str, Limits]: ...

    @property
    def release_max_inflight(self) -> int: ...

    @property
    def ejector(self) -> Ejector | None: ...

    @property
    def dp_rank(self) -> int | None: ...

    def choose(self, key: RouteKey, exclude: tuple[str, ...]) -> Endpoint | None: ...

    def hold(self, fwd: Forward) -> None: ...

    def unhold(self, fwd: Forward) -> None: ...

    def release(self, model: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    connect_s: float = 5.0  # seconds to open a connection to an engine
    first_byte_s: float = 600.0  # seconds until the engine's response head (long prefills)
    idle_s: float = 300.0  # seconds of silence (or of a stalled client) between body chunks
    attempts: int = 3  # endpoints tried for a request that fails before any byte is relayed
    # Retry any 5xx answer (a 500 too) before a byte is relayed, not only 502/503/504.
    retry_5xx: bool = False


# No ready engine yet (deadline passed, or no holding).
RETRY_UNREADY: Final = b"retry-after: 10\r\n"
RETRY_FULL: Final = b"retry-after: 2\r\n"  # the hold queue is full
# An engine's answers that mean "not me, not now": retried elsewhere while nothing was relayed.
RETRY_STATUSES: Final = frozenset({502, 503, 504})
_SSE: Final = b"text/event-stream"
# vLLM's API server sends a request with this header to that data-parallel rank's engine core
# (an int in range; anything else it ignores), as the kv policy pins a rank holding the prefix.
DP_RANK_HEADER: Final = b"x-data-parallel-rank: %d\r\n"
# A span's status when the client left before its answer ended (nginx's 499).
CLIENT_CLOSED: Final = 499


class Forward:
    """One client request (an upstream `Sink`, and an activator `Waiter` while held)."""

    __slots__ = (
        "active",
        "conn",
        "counted",
        "data",
        "ep",
        "eslot",
        "gone",
        "head",
        "held_at",
        "key",
        "last",
        "learn",
        "length",
        "meter",
        "model",
        "mslot",
        "pin",
        "rank",
        "relayed",
        "reset_retried",
        "router",
        "sniffed",
        "span",
        "sse",
        "status",
        "style",
        "t0",
        "tried",
        "upstream",
        "woken",
    )

    def __init__(
        self,
        router: Router,
        conn: Connection,
        model: str,
        key: RouteKey,
        data: bytes,
        t0: float,
        style: ErrorStyle = OPENAI,
    ) -> None:
        self.router = router
        self.style = style
        self.pin: Endpoint | None = None  # the one engine this request may go to
        self.rank: int | None = None  # the data-parallel rank pinned on this attempt's engine
        self.learn: Owners | None = None  # where the answer's response id is learned
        self.meter: Meter | None = None  # the key's token usage, read from the answer (tenancy)
        self.sniffed = b""  # the answer's first bytes, while its id is not found yet
        self.span: Span | None = None  # its trace span (router.tracing); None: not traced
        self.conn = conn
        self.model = model
        self.key = key
        self.data = data
        self.t0 = t0
        # Engines tried, in order: a tuple, made once per attempt (a set per request cost more than
        # the few membership tests on retry save).
        self.tried: tuple[str, ...] = ()
        self.ep: Endpoint | None = None
        self.upstream: UpstreamConn | None = None
        # The engine's response head, held until the first body byte: status (0: none yet),
        # header lines, content-length (None: chunked).
        self.status = 0
        self.head = b""
        self.length: int | None = None
        self.relayed = False  # a byte of the answer reached the client: no retry from now on
        self.sse = False
        self.gone = False  # the client disconnected
        self.reset_retried = False
        self.last = t0  # when the last body chunk was relayed
        # Demand bookkeeping: the model's slot in this worker's row, the endpoint's slot while
        # a request is in flight to it; counted (in `requests`) once answered or forwarded;
        # active while counted in flight; held since; woken from the activator's queue.
        self.mslot = router.demand.model(model)
        self.eslot = -1
        self.counted = False
        self.active = False
        self.held_at = 0.0
        self.woken = False

    def start(self, same: Endpoint | None = None) -> None:
        router = self.router
        ep = same or self.pin or router.choose(self.key, self.tried)
        if ep is None:
            if not self.tried and not self.woken:
                router.hold(self)  # no engine ready yet: wait for one
                return
            router.metrics.rejected["no_endpoint"] += 1
            self._refuse(NoHealthyEndpoint(f"No healthy endpoint serves model `{self.model}`."))
            return
        if not self.active:
            self.active = True
            self._counted()
            router.demand.add(self.mslot, INFLIGHT, 1)
        if same is None:  # a retry on the same engine keeps its rank
            self.rank = None if self.pin is not None else router.dp_rank
        self.ep = ep
        tried = self.tried
        self.tried = (*tried, ep.url) if tried else (ep.url,)
        ep.inflight += 1
        self.eslot = router.demand.endpoint(ep.url)
        router.demand.add(self.eslot, INFLIGHT, 1)
        ejector = router.ejector
        if ejector is not None and ep.breaker.state == HALF_OPEN:
            ejector.chosen(ep, time.monotonic())  # this request is its trial
        self.status = 0  # a head held from a failed attempt is not this one's
        self.sse = False
        self.conn.on_close = self._client_left
        limits = router.model_limits.get(self.model, router.limits)
        data = self.data if self.rank is None else with_rank(self.data, self.rank)
        router.pool.send(ep.url, data, self, limits.first_byte_s, limits.idle_s, self._attach)

    # -- Waiter (held by the activator) ------------------------------------------------------

    def wake(self) -> None:
        self.router.unhold(self)
        self.woken = True
        self.start()

    def expire(self) -> None:
        self.router.metrics.hold_timeouts[self.model] += 1
        message = (
            f"The model `{self.model}` has no ready replica yet (it is scaled to zero or "
            "starting); it did not become ready in time. Retry shortly."
        )
        self.give_up(message, held=True)

    def give_up(self, message: str, held: bool = False) -> None:
        """503 + Retry-After: no engine ready (deadline passed, holding off, shutting down)."""
        if held:
            self.router.unhold(self)
        self._counted()
        self._settle(503)
        self.router.metrics.requests[(self.model, "-", 503)] += 1
        self.conn.on_close = None
        err = NotReady(message)
        self._trace(err.status, err.type)
        self.conn.respond(err.status, self.style.render(err), extra_headers=RETRY_UNREADY)

    def refuse_full(self) -> None:
        self._counted()
        self._settle(429)
        self.router.metrics.requests[(self.model, "-", 429)] += 1
        self.conn.on_close = None
        err = RateLimited(
            f"Too many requests are waiting for model `{self.model}` to become ready."
        )
        self._trace(err.status, err.type)
        self.conn.respond(err.status, self.style.render(err), extra_headers=RETRY_FULL)

    def left_while_held(self) -> None:
        """The client left while held: out of the queue, counted nowhere."""
        router = self.router
        if router.activator.cancel(self.model, self):
            router.demand.add(self.mslot, HELD, -1)
        self.gone = True
        self._trace(CLIENT_CLOSED, "client_closed")
        self._settle()

    def _attach(self, upstream: UpstreamConn) -> None:
        if self.gone:
            upstream.abort()
            return
        self.upstream = upstream

    # -- Sink -------------------------------------------------------------------------------

    def on_head(
        self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool, length: int | None
    ) -> None:
        if status >= 500 and self._retried_status(status) and self._can_retry():
            # The engine says it cannot serve now: drop its answer unread, try another.
            up = self.upstream
            if up is not None:
                up.abort()
            ep = self.ep
            url = ep.url if ep is not None else ""
            self._failed(UpstreamStatus(f"status {status} from {url}", url, True))
            return
        lines = []
        for name, value in headers:
            if name.lower() == b"content-type" and value.startswith(_SSE):
                self.sse = True
            lines.append(b"%s: %s\r\n" % (name, value))
        self.status = status
        self.head = b"".join(lines)
        self.length = None if chunked else length

    def on_body(self, data: bytes) -> None:
        meter = self.meter
        if meter is not None:
            data = meter.feed(data)  # the same bytes, less a usage event the router asked for
            if not data:
                return
        now = time.monotonic()
        if not self.relayed:
            self._commit()
        if self.t0 > 0:
            self.router.metrics.ttft.observe(now - self.t0)
            span = self.span
            if span is not None:
                span.ttft_s = now - self.t0
            self.t0 = -self.t0  # observed once; keep the start for the duration
        elif self.sse:
            self.router.metrics.itl.observe(now - self.last)
        self.last = now
        if self.learn is not None:
            self._sniff(data)
        conn = self.conn
        conn.write(data)
        if conn.write_paused:
            # The client's buffer is full: stop reading the engine until it drains
            # (`_writable`), so this request holds at most a buffer and one read.
            up = self.upstream
            if up is not None:
                up.pause()
                conn.on_writable = self._writable  # set only now: no allocation for fast clients

    def _sniff(self, data: bytes) -> None:
        """Learn which engine made this response, from the id in the answer's first bytes."""
        ep = self.ep
        owners = self.learn
        if owners is None or ep is None or self.status != 200:
            self.learn = None
            return
        seen = self.sniffed + data if self.sniffed else data
        rid = find_id(seen[:SNIFF_BYTES])
        if rid is not None:
            owners.learn(rid, ep.url, self.model)  # the model: for a key's allowlist later
        if rid is not None or len(seen) >= SNIFF_BYTES:
            self.learn = None
            self.sniffed = b""
        else:
            self.sniffed = seen

    def on_end(self) -> None:
        if not self.relayed:
            self._commit()  # an answer without a body
        if self.meter is not None and self.meter.held:
            self.conn.write(self.meter.release())  # an unfinished last event, as it came
        if self.router.ejector is not None:
            self._judge(self.status < 500)
        self._release()
        self._finish()
        self.router.metrics.duration.observe(time.monotonic() - abs(self.t0))
        if self.span is not None:
            self._trace(self.status)
        self.conn.finish()

    def on_error(self, err: UpstreamError) -> None:
        if isinstance(err, UpstreamConnectError) and self.ep is not None:
            # Eject at once: no more requests until a probe finds it healthy again.
            self.ep.mark_down(time.monotonic(), 1.0)
        self._failed(err)

    def _commit(self) -> None:
        """The first byte of the answer goes out: send the held head with it; from now on the
        request has started and the relay follows the client's pace."""
        self.relayed = True
        self._count(self.status)
        conn = self.conn
        conn.start_response(self.status, self.head, self.length)
        self.head = b""

    def _writable(self, ok: bool) -> None:
        up = self.upstream
        if up is not None:
            if ok:
                up.resume()
            else:
                up.pause()

    # -- failures ---------------------------------------------------------------------------

    def _retried_status(self, status: int) -> bool:
        """Whether a 5xx answer is retried elsewhere (if it can be)."""
        if status in RETRY_STATUSES:
            return True
        router = self.router
        return router.model_limits.get(self.model, router.limits).retry_5xx

    def _judge(self, ok: bool) -> None:
        """This attempt's outcome, for its engine's circuit breaker (router.ejection)."""
        ejector = self.router.ejector
        ep = self.ep
        # a success of a serving engine is one addition (Breaker.ok): no clock read, no window
        if ejector is not None and ep is not None and not (ok and ep.breaker.ok()):
            ejector.judge(ep, ok, time.monotonic())

    def _can_retry(self) -> bool:
        """Another engine may still take this request: nothing relayed, one untried healthy
        endpoint left (not ejected by its breaker), and attempts left."""
        if self.relayed or self.gone or self.pin is not None:
            return False
        router = self.router
        if len(self.tried) >= router.model_limits.get(self.model, router.limits).attempts:
            return False
        tried = self.tried
        return any(
            e.healthy and not e.ejected and e.url not in tried
            for e in router.registry.serving(self.model)
        )

    def _failed(self, err: UpstreamError) -> None:
        """This attempt failed: retry if nothing reached the client, else end the answer."""
        router = self.router
        ep = self.ep
        # A reset before any answer, the first time: most often a pooled keep-alive connection
        # the engine had just closed, not the engine's fault (retried on it below).
        stale = (
            not self.relayed
            and isinstance(err, UpstreamReset)
            and not err.started
            and not self.reset_retried
            and ep is not None
            and ep.healthy
        )
        if not (stale or self.gone or self.conn.write_paused):
            self._judge(False)  # a stalled client's timeout is its own doing, not the engine's
        self._release()
        if self.gone:
            return  # _client_left has finished it
        if not self.relayed:
            if stale and ep is not None:
                # The same engine, on a fresh connection, once.
                self.reset_retried = True
                router.metrics.retries[self.model] += 1
                self.start(same=ep)
                return
            if self._can_retry():
                router.metrics.retries[self.model] += 1
                self.start()
                return
            self._refuse(type(err)(f"Upstream {err.what} from the engines serving `{self.model}`."))
            return
        self._finish()
        self._trace(self.status, err.what)
        conn = self.conn
        if conn.write_paused:
            # The client stalled past the idle timeout with its buffer full: it would never
            # read an error event, and a graceful close would wait for it to drain.
            conn.transport.abort()
        elif self.sse and conn.chunked:
            event = self.style.render(type(err)(f"The engine stream broke ({err.what})."))
            conn.finish(self.style.stream_end(event))
        else:
            conn.close()  # a truncated body can only be signalled by closing

    # -- bookkeeping --------------------------------------------------------------------------

    def _client_left(self) -> None:
        self.gone = True
        if self.upstream is not None:
            self.upstream.abort()  # the engine sees the disconnect and aborts the request
        self._release()
        self._finish()
        self._trace(CLIENT_CLOSED, "client_closed")

    def _release(self) -> None:
        """This attempt is over: the endpoint's in-flight count goes back."""
        ep = self.ep
        if ep is not None:
            ep.inflight -= 1
            self.ep = None
            router = self.router
            router.demand.endpoint_done(self.eslot)
            self.eslot = -1
            if router.release_max_inflight and self.model in router.activator.queues:
                router.release(self.model)  # room on an engine for the next held request
        self.upstream = None
        self.conn.on_close = None

    def _finish(self) -> None:
        """The request is over: no longer in flight for its model."""
        if self.active:
            self.active = False
            self.router.demand.add(self.mslot, INFLIGHT, -1)
        if self.meter is not None:
            self._settle()

    def _settle(self, code: int = 0) -> None:
        """A metered request is over: its key is charged what it used (once); `code`: the
        status the router answered itself, if it did (for the key's request counter)."""
        meter = self.meter
        if meter is not None:
            self.meter = None
            meter.settle(self.status, self.relayed, code)

    def _trace(self, status: int, error: str = "") -> None:
        """The request is over: its span (if traced) goes to the exporter, once."""
        span = self.span
        if span is not None:
            self.span = None
            tried = self.tried
            duration = time.monotonic() - abs(self.t0)
            span.finish(self.model, tried[-1] if tried else "", len(tried), status, duration, error)

    def _counted(self) -> None:
        if not self.counted:
            self.counted = True
            self.router.demand.add(self.mslot, REQUESTS, 1)

    def _count(self, status: int) -> None:
        url = self.ep.url if self.ep is not None else "-"
        self.router.metrics.requests.inc((self.model, url, status))

    def _refuse(self, err: VfleetError) -> None:
        self.router.metrics.requests[(self.model, "-", err.status)] += 1
        self._counted()
        self._settle(err.status)
        self._finish()
        self._trace(err.status, err.type)
        self.conn.on_close = None
        self.conn.respond(err.status, self.style.render(err))


def with_rank(data: bytes, rank: int) -> bytes:
    """The request `data` (head and body) with vLLM's data-parallel rank header first after its
    request line: a header the client sent too comes later, and vLLM reads the first."""
    end = data.index(b"\r\n") + 2
    return b"".join((data[:end], DP_RANK_HEADER % rank, data[end:]))
