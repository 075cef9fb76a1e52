"""The router's request path: pick an engine for each request and relay the answer.

Only the fields routing needs are read from a body (model, user, the prompt for prefix routing);
the body goes upstream as it came (unless an alias must be rewritten), and the engine's response
body is relayed as it arrives, chunk by chunk, never parsed. A request that fails before any byte
of its answer is retried on another endpoint; a stream that breaks later ends with an SSE error
event; a client that leaves aborts the upstream request. In-flight counts are released on every
path.

A request for a model with no ready engine (scaled to zero, starting, or all down) is held by the
activator, in arrival order, until an engine is ready or its deadline passes; held and in-flight
requests are written to the demand table all workers share, which `GET /vfleet/demand` sums.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from vfleet.http.server import Connection, Request
from vfleet.router.activator import FULL, WOKE, Activator
from vfleet.router.demand import HELD, INFLIGHT, REQUESTS, DemandRow
from vfleet.router.endpoints import Endpoint, Registry
from vfleet.router.metrics import RouterMetrics
from vfleet.router.policies import Policy, prefix_hashes
from vfleet.router.ratelimit import RateLimiter
from vfleet.router.state import RouteKey
from vfleet.router.upstream import UpstreamError, UpstreamPool

# Routes relayed to an engine; vLLM's, plus the un-prefixed forms production-stack users call.
PROXIED = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/rerank",
    "/v2/rerank", "/v1/score", "/score", "/pooling", "/classify", "/tokenize", "/detokenize",
    "/v1/responses", "/completions", "/chat/completions", "/embeddings",
})  # fmt: skip
ALIASED_PATHS = {"/completions": "/v1/completions", "/chat/completions": "/v1/chat/completions",
                 "/embeddings": "/v1/embeddings"}  # fmt: skip
DROP_REQUEST_HEADERS = frozenset({
    b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
    b"authorization", b"te", b"upgrade", b"expect",
})  # fmt: skip
_FORM_MODEL = re.compile(rb'name="model"\r\n\r\n([^\r\n]+)')
RETRY_UNREADY = b"retry-after: 10\r\n"  # no ready engine yet (deadline passed, or no holding)
RETRY_FULL = b"retry-after: 2\r\n"  # the hold queue is full
MAX_WAIT_S = 30.0  # longest GET /vfleet/demand?wait_s= long-poll
MAX_POLLS = 64  # long-polls waiting at once per worker; more get 429
POLL_S = 0.01  # how often a long-poll reads the demand table


def error_body(status: int, message: str, type_: str, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": status}}
    )


@dataclass(frozen=True, slots=True)
class Limits:
    connect_s: float = 5.0  # seconds to open a connection to an engine
    first_byte_s: float = 600.0  # seconds until the engine's response head (long prefills)
    idle_s: float = 300.0  # seconds of silence allowed between body chunks
    attempts: int = 3  # endpoints tried for a request that fails before any byte


@dataclass(slots=True)
class Router:
    registry: Registry
    pool: UpstreamPool
    policy_for: Callable[[str], Policy]
    activator: Activator  # requests waiting for a ready engine, per model
    demand: DemandRow  # this worker's row of the demand table all workers share
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    limits: Limits = field(default_factory=Limits)
    model_limits: dict[str, Limits] = field(default_factory=dict)  # per-model overrides
    api_keys: tuple[bytes, ...] = ()
    backend_auth: bytes = b""  # an Authorization header line for engines, when they need one
    rate_limit: RateLimiter | None = None  # requests per API key (one shared bucket without keys)
    token_limit: RateLimiter | None = None  # tokens per API key, estimated before forwarding
    # Served names this router answers for even while no engine serves them (scaled to zero or
    # starting): their requests are held (not 404) and counted as demand, what wakes the model.
    known_models: frozenset[str] = frozenset()
    # Held requests are released while an engine has fewer in flight than this (0: no cap).
    release_max_inflight: int = 0
    polls: _Polls | None = None  # GET /vfleet/demand?wait_s= long-polls, made on first use

    def handle(self, req: Request, conn: Connection) -> None:
        path = req.path
        if path == "/health":
            conn.respond(200, b'{"status":"ok"}')
            return
        if path == "/metrics":
            text = self.metrics.render(self.registry, self._held_gauge())
            conn.respond(200, text, b"text/plain; version=0.0.4")
            return
        if path == "/ready":  # open, like /health: readiness probes carry no key
            self._ready(conn)
            return
        if self.api_keys and not self._authorized(req):
            self.metrics.rejected["auth"] += 1
            conn.respond(401, error_body(401, "Invalid API key.", "authentication_error"))
            return
        if path in ("/v1/models", "/models"):
            cards = self.registry.model_cards(int(time.time()))
            conn.respond(200, orjson.dumps({"object": "list", "data": cards}))
        elif path == "/vfleet/demand" and req.method == "GET":
            self._demand(req, conn)
        elif req.too_large:
            self.metrics.rejected["too_large"] += 1
            conn.keep_alive = False
            conn.respond(413, error_body(413, "Request body too large.", "invalid_request_error"))
        elif req.method == "POST" and (path in PROXIED or path.startswith("/v1/audio/")):
            if self.rate_limit is not None and not self._admit(
                req, conn, self.rate_limit, 1.0, "request"
            ):
                return
            self._forward(req, conn)
        else:
            conn.respond(404, error_body(404, f"Unknown route {req.method} {path}.",
                                         "invalid_request_error"))  # fmt: skip

    def _authorized(self, req: Request) -> bool:
        scheme, _, token = req.headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return any(hmac.compare_digest(token, key) for key in self.api_keys)

    def _admit(
        self, req: Request, conn: Connection, limiter: RateLimiter, cost: float, what: str
    ) -> bool:
        key = req.headers.get(b"authorization", b"") if self.api_keys else b""
        wait = limiter.take(key, time.monotonic(), cost)
        if wait <= 0.0:
            return True
        self.metrics.rejected[f"{what}_limit"] += 1
        retry = b"retry-after: %d\r\n" % max(1, math.ceil(wait))
        body = error_body(429, f"{what.capitalize()} rate limit reached for this API key.",
                          "rate_limit_exceeded")  # fmt: skip
        conn.respond(429, body, extra_headers=retry)
        return False

    def _ready(self, conn: Connection) -> None:
        models = self.registry.model_names()
        down = [m for m in models if not any(ep.healthy for ep in self.registry.serving(m))]
        ok = bool(models) and not down
        body = orjson.dumps({"ready": ok, "models": models, "unavailable": down})
        conn.respond(200 if ok else 503, body)

    # -- forwarding -------------------------------------------------------------------------

    def _forward(self, req: Request, conn: Connection) -> None:
        body = req.body
        fields: dict[str, Any] = {}
        if req.path.startswith("/v1/audio/"):
            m = _FORM_MODEL.search(body)
            model = m.group(1).decode(errors="replace").strip() if m else None
        else:
            try:
                parsed = orjson.loads(body) if body else {}
            except orjson.JSONDecodeError:
                conn.respond(400, error_body(400, "Request body is not valid JSON.",
                                             "invalid_request_error"))  # fmt: skip
                return
            if not isinstance(parsed, dict):
                conn.respond(400, error_body(400, "Request body must be a JSON object.",
                                             "invalid_request_error"))  # fmt: skip
                return
            fields = parsed
            raw_model = fields.get("model")
            model = raw_model if isinstance(raw_model, str) and raw_model else None
        if model is None:
            names = self.registry.model_names()
            if len(names) != 1:
                conn.respond(400, error_body(400, "The request names no model.",
                                             "invalid_request_error", "model"))  # fmt: skip
                return
            model = names[0]
        if self.token_limit is not None and not self._admit(
            req, conn, self.token_limit, _estimated_tokens(fields), "token"
        ):
            return
        target = self.registry.resolve(model)
        if target != model and fields:
            body = orjson.dumps({**fields, "model": target})
        if target not in self.known_models and not self.registry.serving(target):
            conn.respond(404, error_body(404, f"The model `{model}` does not exist.",
                                         "NotFoundError", "model"))  # fmt: skip
            return
        policy = self.policy_for(target).name
        key = RouteKey(
            target,
            _session(req, fields) if policy == "session" else None,
            _prefix(fields) if policy == "prefix" else (),
        )
        path = ALIASED_PATHS.get(req.path, req.path)
        head = self._request_head(req, path, len(body))
        fwd = _Forward(self, conn, target, key, head + body, time.monotonic())
        if target in self.activator.queues:
            self.hold(fwd)  # behind the requests already waiting for this model: arrival order
        else:
            fwd.start()  # held there when no engine is ready

    def _request_head(self, req: Request, path: str, length: int) -> bytes:
        target = (path + ("?" + req.query if req.query else "")).encode()
        lines = [b"%s %s HTTP/1.1\r\nhost: vfleet-router\r\n" % (req.method.encode(), target)]
        for name, value in req.headers.items():
            if name not in DROP_REQUEST_HEADERS:
                lines.append(b"%s: %s\r\n" % (name, value))
        if self.backend_auth:
            lines.append(self.backend_auth)
        elif not self.api_keys and b"authorization" in req.headers:
            lines.append(b"authorization: %s\r\n" % req.headers[b"authorization"])
        lines.append(b"content-length: %d\r\n\r\n" % length)
        return b"".join(lines)

    def choose(self, key: RouteKey, exclude: set[str]) -> Endpoint | None:
        eps = [ep for ep in self.registry.serving(key.model) if ep.url not in exclude]
        picked = self.policy_for(key.model).choose([ep.snapshot() for ep in eps], key)
        if picked is None:
            return None
        return self.registry.endpoints.get(picked.url)

    # -- the activator ----------------------------------------------------------------------

    def hold(self, fwd: _Forward) -> None:
        """Queue a request until an engine of its model is ready (or answer it at once: holding
        off, or the queue full)."""
        model = fwd.model
        if not self.activator.limits(model).enabled:
            fwd.give_up(f"The model `{model}` has no ready replica yet (it is scaled to zero or "
                        "starting); retry shortly.")  # fmt: skip
            return
        result = self.activator.hold(model, fwd)
        if result == FULL:
            self.metrics.hold_rejected[model] += 1
            fwd.refuse_full()
            return
        if result == WOKE:
            self.metrics.activations[model] += 1
        fwd.held_at = time.monotonic()
        fwd.conn.on_close = fwd.left_while_held
        self.demand.add(fwd.mslot, HELD, 1)
        if self.polls is not None:
            self.polls.answer_all()  # a long-poll waits for exactly this
        self.release(model)  # only waiting its turn behind others, with an engine ready

    def unhold(self, fwd: _Forward) -> None:
        """A held request leaves the queue (released, expired or refused)."""
        self.demand.add(fwd.mslot, HELD, -1)
        self.metrics.observe_hold(fwd.model, time.monotonic() - fwd.held_at)

    def release(self, model: str) -> None:
        """Forward the requests held for `model`, oldest first, as far as engines are ready."""
        if model not in self.activator.queues:
            return
        ready = self.registry.ready(model)
        if not ready:
            return
        cap = self.release_max_inflight
        limit = -1 if cap == 0 else sum(max(0, cap - ep.inflight) for ep in ready)
        if limit == 0:
            return  # each ready engine has its share; a request that ends releases the next
        for waiter in self.activator.take(model, limit):
            waiter.wake()

    def endpoints_changed(self) -> None:
        """The endpoint set changed: list it in the demand table, release what can go now."""
        self.demand.set_endpoints(self.registry.endpoints)
        for model in self.registry.model_names():
            self.demand.model(model)  # listed (at zero) in /vfleet/demand from now on
        for model in list(self.activator.queues):
            self.release(model)

    def endpoint_up(self, ep: Endpoint) -> None:
        for model in ep.models:
            self.release(model)

    def give_up_held(self, message: str) -> None:
        """Answer every held request 503 (shutting down)."""
        for waiter in self.activator.take_all():
            if isinstance(waiter, _Forward):
                waiter.give_up(message, held=True)

    def _held_gauge(self) -> dict[str, int]:
        models = {*self.known_models, *self.activator.queues, *self.metrics.hold_seconds}
        return {m: self.activator.held(m) for m in models}

    # -- demand -----------------------------------------------------------------------------

    def _demand(self, req: Request, conn: Connection) -> None:
        wait_s = 0.0
        for part in req.query.split("&"):
            name, _, value = part.partition("=")
            if name == "wait_s":
                try:
                    wait_s = float(value)
                except ValueError:
                    wait_s = -1.0
                if not 0.0 <= wait_s < math.inf:
                    conn.respond(400, error_body(400, "wait_s must be a number of seconds >= 0.",
                                                 "invalid_request_error", "wait_s"))  # fmt: skip
                    return
        table = self.demand.table
        if wait_s <= 0.0 or table.held() > 0:
            conn.respond(200, orjson.dumps(table.as_dict()))
            return
        if self.polls is None:
            self.polls = _Polls(self)
        if not self.polls.add(conn, min(wait_s, MAX_WAIT_S)):
            self.metrics.rejected["demand_polls"] += 1
            body = error_body(429, "Too many demand long-polls waiting.", "rate_limit_exceeded")
            conn.respond(429, body, extra_headers=RETRY_FULL)


def _estimated_tokens(fields: dict[str, Any]) -> float:
    """A request's token cost, charged before it runs: its prompt (about four characters a
    token) plus the output it asks for at most."""
    prompt = fields.get("prompt", fields.get("input", ""))
    messages = fields.get("messages")
    if isinstance(messages, list):
        prompt = [m.get("content", "") for m in messages if isinstance(m, dict)]
    chars = len(prompt) if isinstance(prompt, str) else len(str(prompt))
    out = fields.get("max_completion_tokens") or fields.get("max_tokens") or 0
    return math.ceil(chars / 4) + (out if isinstance(out, int) else 0)


def _session(req: Request, fields: dict[str, Any]) -> str | None:
    header = req.headers.get(b"x-session-id") or req.headers.get(b"x-user-id")
    if header:
        return header.decode(errors="replace")
    user = fields.get("user")
    return user if isinstance(user, str) and user else None


def _prefix(fields: dict[str, Any]) -> tuple[int, ...]:
    messages = fields.get("messages")
    if isinstance(messages, list):
        text = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    else:
        prompt = fields.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
    return prefix_hashes(text) if text else ()


class _Forward:
    """One client request on its way through the router (an upstream `Sink`)."""

    __slots__ = ("active", "conn", "counted", "data", "ep", "eslot", "gone", "held_at", "key",
                 "last", "model", "mslot", "reset_retried", "router", "sse", "started", "t0",
                 "tried", "upstream", "woken")  # fmt: skip

    def __init__(self, router: Router, conn: Connection, model: str, key: RouteKey, data: bytes,
                 t0: float) -> None:  # fmt: skip
        self.router = router
        self.conn = conn
        self.model = model
        self.key = key
        self.data = data
        self.t0 = t0
        self.tried: set[str] = set()
        self.ep: Endpoint | None = None
        self.upstream: Any = None
        self.started = False  # response head sent to the client
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
        ep = same or router.choose(self.key, self.tried)
        if ep is None:
            if not self.tried and not self.woken:
                router.hold(self)  # no engine ready yet: wait for one
                return
            router.metrics.rejected["no_endpoint"] += 1
            self._refuse(
                503, f"No healthy endpoint serves model `{self.model}`.", "ServiceUnavailable"
            )
            return
        if not self.active:
            self.active = True
            self._counted()
            router.demand.add(self.mslot, INFLIGHT, 1)
        self.ep = ep
        self.tried.add(ep.url)
        ep.inflight += 1
        self.eslot = router.demand.endpoint(ep.url)
        router.demand.add(self.eslot, INFLIGHT, 1)
        self.conn.on_close = self._client_left
        limits = router.model_limits.get(self.model, router.limits)
        router.pool.send(ep.url, self.data, self, limits.first_byte_s, limits.idle_s, self._attach)

    # -- Waiter (held by the activator) ------------------------------------------------------

    def wake(self) -> None:
        self.router.unhold(self)
        self.woken = True
        self.start()

    def expire(self) -> None:
        self.router.metrics.hold_timeouts[self.model] += 1
        message = (f"The model `{self.model}` has no ready replica yet (it is scaled to zero or "
                   "starting); it did not become ready in time. Retry shortly.")  # fmt: skip
        self.give_up(message, held=True)

    def give_up(self, message: str, held: bool = False) -> None:
        """503 + Retry-After: no engine ready (deadline passed, holding off, shutting down)."""
        if held:
            self.router.unhold(self)
        self._counted()
        self.router.metrics.requests[(self.model, "-", 503)] += 1
        self.conn.on_close = None
        self.conn.respond(503, error_body(503, message, "ServiceUnavailable"),
                          extra_headers=RETRY_UNREADY)  # fmt: skip

    def refuse_full(self) -> None:
        self._counted()
        self.router.metrics.requests[(self.model, "-", 429)] += 1
        self.conn.on_close = None
        body = error_body(429, f"Too many requests are waiting for model `{self.model}` to "
                          "become ready.", "rate_limit_exceeded")  # fmt: skip
        self.conn.respond(429, body, extra_headers=RETRY_FULL)

    def left_while_held(self) -> None:
        """The client left while held: out of the queue, counted nowhere."""
        router = self.router
        if router.activator.cancel(self.model, self):
            router.demand.add(self.mslot, HELD, -1)
        self.gone = True

    def _attach(self, upstream: Any) -> None:
        if self.gone:
            upstream.abort()
            return
        self.upstream = upstream

    # -- Sink -------------------------------------------------------------------------------

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool,
                length: int | None) -> None:  # fmt: skip
        self.started = True
        lines = []
        for name, value in headers:
            if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                self.sse = True
            lines.append(b"%s: %s\r\n" % (name, value))
        self._count(status)
        self.conn.start_response(status, b"".join(lines), None if chunked else length)

    def on_body(self, data: bytes) -> None:
        now = time.monotonic()
        if self.t0 > 0:
            self.router.metrics.ttft.observe(now - self.t0)
            self.t0 = -self.t0  # observed once; keep the start for the duration
        elif self.sse:
            self.router.metrics.itl.observe(now - self.last)
        self.last = now
        self.conn.write(data)

    def on_end(self) -> None:
        self._release()
        self._finish()
        self.router.metrics.duration.observe(time.monotonic() - abs(self.t0))
        self.conn.finish()

    def on_error(self, err: UpstreamError) -> None:
        router = self.router
        ep = self.ep
        if ep is not None and err.kind == "connect":
            # Eject at once: no more requests until a probe finds it healthy again.
            ep.mark_down(time.monotonic(), 1.0)
        self._release()
        if self.gone:
            return  # _client_left has finished it
        if not err.started and not self.started:
            if err.kind == "reset" and not self.reset_retried and ep is not None and ep.healthy:
                # Most often a pooled keep-alive connection the engine had just closed:
                # the same engine, on a fresh connection, once.
                self.reset_retried = True
                router.metrics.retries[self.model] += 1
                self.start(same=ep)
                return
            untried = any(
                e.healthy and e.url not in self.tried for e in router.registry.serving(self.model)
            )
            attempts = router.model_limits.get(self.model, router.limits).attempts
            if untried and len(self.tried) < attempts:
                router.metrics.retries[self.model] += 1
                self.start()
                return
            status, kind = (504, "timeout") if err.kind == "timeout" else (502, "BadGateway")
            self._count(status)
            self._refuse(
                status, f"Upstream {err.kind} from the engines serving `{self.model}`.", kind
            )
            return
        self._finish()
        if self.sse and self.conn.chunked:
            event = error_body(502, f"The engine stream broke ({err.kind}).", "BadGateway")
            self.conn.finish(b"data: " + event + b"\n\ndata: [DONE]\n\n")
        else:
            self.conn.close()  # a truncated body can only be signalled by closing

    # -- bookkeeping --------------------------------------------------------------------------

    def _client_left(self) -> None:
        self.gone = True
        if self.upstream is not None:
            self.upstream.abort()  # the engine sees the disconnect and aborts the request
        self._release()
        self._finish()

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

    def _counted(self) -> None:
        if not self.counted:
            self.counted = True
            self.router.demand.add(self.mslot, REQUESTS, 1)

    def _count(self, status: int) -> None:
        url = self.ep.url if self.ep is not None else "-"
        self.router.metrics.requests[(self.model, url, status)] += 1

    def _refuse(self, status: int, message: str, type_: str) -> None:
        if status == 503:
            self.router.metrics.requests[(self.model, "-", status)] += 1
        self._counted()
        self._finish()
        self.conn.on_close = None
        self.conn.respond(status, error_body(status, message, type_))


class _Polls:
    """GET /vfleet/demand?wait_s=S requests waiting until some worker holds a request: one
    task reads the shared table every POLL_S while any wait (a hold in this worker answers at
    once), and answers each at its deadline at the latest."""

    __slots__ = ("router", "task", "waiting")

    def __init__(self, router: Router) -> None:
        self.router = router
        self.waiting: dict[int, tuple[Connection, float]] = {}  # id(conn) -> (conn, deadline)
        self.task: asyncio.Task[None] | None = None

    def add(self, conn: Connection, wait_s: float) -> bool:
        if len(self.waiting) >= MAX_POLLS:
            return False
        key = id(conn)
        self.waiting[key] = (conn, time.monotonic() + wait_s)
        conn.on_close = lambda: self._left(key)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return True

    def answer_all(self) -> None:
        if self.waiting:
            self._answer(list(self.waiting))

    def _left(self, key: int) -> None:
        self.waiting.pop(key, None)

    async def _run(self) -> None:
        table = self.router.demand.table
        try:
            while self.waiting:
                await asyncio.sleep(POLL_S)
                if table.held() > 0:
                    self.answer_all()
                    continue
                now = time.monotonic()
                due = [key for key, (_, deadline) in self.waiting.items() if deadline <= now]
                if due:
                    self._answer(due)
        finally:
            self.task = None

    def _answer(self, keys: list[int]) -> None:
        body = orjson.dumps(self.router.demand.table.as_dict())
        for key in keys:
            entry = self.waiting.pop(key, None)
            if entry is not None:
                entry[0].on_close = None
                entry[0].respond(200, body)
