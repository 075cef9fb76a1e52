"""The router's request path: admit each request, pick an engine for it, and hold what has none.

`Router.handle` looks the route up once (`routes`), answers the router's own routes and admits
proxied ones (API key, method, media type, rate limits), reads only what routing needs
(`inbound`), and hands the request to a `Forward`, which tries engines and relays the answer
(`forward`). A request that follows a stored response goes to the engine that has it
(`affinity`, asking the engines through `locator` when this process has not seen it). A request
for a model with no ready engine (scaled to zero, starting, or all down) is held by the activator,
in arrival order, until an engine is ready or its deadline passes; held and in-flight requests are
written to the demand table all workers share, which `GET /vfleet/demand` sums. Every error
answered here is a `vfleet.errors` error, in the route's shape (OpenAI's, or Anthropic's on the
Messages routes).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from vfleet.errors import (
    BadRequest,
    ClientError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    VfleetError,
)
from vfleet.http.server import Connection, Request
from vfleet.router import affinity, auth
from vfleet.router.activator import FULL, WOKE, Activator
from vfleet.router.affinity import Owners
from vfleet.router.demand import HELD, DemandRow
from vfleet.router.ejection import Ejector
from vfleet.router.endpoints import Endpoint, Registry
from vfleet.router.forward import RETRY_FULL, Forward, Limits
from vfleet.router.inbound import estimated_tokens, read_body, route_key
from vfleet.router.kvroute import KvRouting
from vfleet.router.locator import Locator
from vfleet.router.metrics import RouterMetrics
from vfleet.router.policies import Field, KvAffinity, Policy
from vfleet.router.polls import Polls
from vfleet.router.routes import (
    DEMAND,
    HEALTH,
    METRICS,
    MODELS,
    OPENAI,
    READY,
    RELAY,
    RESPONSES,
    ROUTES,
    STORED,
    ErrorStyle,
    Route,
    is_json,
    match_param,
)
from vfleet.router.state import RouteKey
from vfleet.router.tenants import NO_MODEL, Tenancy, Tenant
from vfleet.router.tracing import REPLACED, REPLACED_ROOT, Span, Tracer
from vfleet.router.upstream import UpstreamPool
from vfleet.router.usage import Meter, ask_usage

__all__ = ["Limits", "Router", "respond_error"]

DROP_REQUEST_HEADERS: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"authorization",
        b"te",
        b"upgrade",
        b"expect",
    }
)


# With router keys on, a client's key (in either header) is the router's, not the engines'.
DROP_WITH_KEYS: Final = DROP_REQUEST_HEADERS | {b"x-api-key"}


def respond_error(
    conn: Connection, err: VfleetError, extra_headers: bytes = b"", style: ErrorStyle = OPENAI
) -> None:
    conn.respond(err.status, style.render(err), extra_headers=extra_headers)


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
    # Per-key identity, model allowlists, request and token budgets shared by every worker, and
    # per-key usage (router.tenants); None (no tenants file, no limits): none of it is looked at.
    tenancy: Tenancy | None = None
    keyed: bool = False  # clients must send a key (plain keys or a tenants file)
    # Served names this router answers for even while no engine serves them (scaled to zero or
    # starting): their requests are held (not 404) and counted as demand, what wakes the model.
    known_models: frozenset[str] = frozenset()
    # Held requests are released while an engine has fewer in flight than this (0: no cap).
    release_max_inflight: int = 0
    polls: Polls | None = None  # GET /vfleet/demand?wait_s= long-polls, made on first use
    owners: Owners = field(default_factory=Owners)  # response id -> engine, learned here
    locator: Locator | None = None  # asks engines for a response id, made on first use
    drop_headers: frozenset[bytes] = DROP_REQUEST_HEADERS  # request headers engines never see
    kv: KvRouting | None = None  # KV events and request chains, when a kv policy is configured
    tracer: Tracer | None = None  # OTLP spans of proxied requests (router.tracing); None: off
    ejector: Ejector | None = None  # the circuit breakers on engine errors; None: off
    # The data-parallel rank the last `choose` pins on its engine (the kv policy's decision, sent
    # as vLLM's `X-data-parallel-rank`); None: no pin. Read by the Forward right after `choose`.
    dp_rank: int | None = None

    def __post_init__(self) -> None:
        self.keyed = bool(self.api_keys) or (self.tenancy is not None and self.tenancy.keyed)
        if self.keyed:
            self.drop_headers = DROP_WITH_KEYS

    def handle(self, req: Request, conn: Connection) -> None:
        path = req.path
        route = ROUTES.get(path)  # every hot route is a fixed path: one lookup
        param = ""
        if route is None:
            found = match_param(path)
            if found is not None:
                route, param = found
        elif route.kind <= DEMAND:  # open routes: no client key
            self._open(route, req, conn)
            return
        style = OPENAI if route is None else route.style
        tenant: Tenant | None = None
        if self.tenancy is not None:
            tenant = self.tenancy.identify(req.headers)
            known = tenant is not None
        else:
            known = not self.api_keys or auth.verify_request(req.headers, self.api_keys) is not None
        if not known:
            self.metrics.rejected["auth"] += 1
            respond_error(conn, Unauthorized("Invalid API key."), style=style)
            return
        if route is None:
            respond_error(conn, NotFound(f"Unknown route {req.method} {path}."))
            return
        if req.method not in route.methods:
            err = MethodNotAllowed(f"Method {req.method} is not allowed on {path}.")
            respond_error(conn, err, route.allow(), style)
            return
        if req.too_large:
            self.metrics.rejected["too_large"] += 1
            conn.keep_alive = False
            respond_error(conn, PayloadTooLarge("Request body too large."), style=style)
            return
        if route.json and not is_json(req.headers.get(b"content-type")):
            given = req.header(b"content-type") or "none"
            media = UnsupportedMediaType(
                f"Unsupported Media Type: this route takes application/json (given: {given})."
            )
            respond_error(conn, media, style=style)
            return
        kind = route.kind
        if kind >= RELAY:  # to an engine
            if tenant is not None and self.tenancy is not None and tenant.requests is not None:
                wait = self.tenancy.admit(tenant, time.monotonic())
                if wait > 0.0:
                    self.tenancy.refused(tenant, NO_MODEL, 429)  # its body is not read
                    self._limited(conn, wait, "request", style)
                    return
            try:
                if kind == STORED:
                    self._stored(req, conn, route, param, tenant)
                else:
                    self._forward(req, conn, route, tenant)
            except ClientError as err:
                respond_error(conn, err, style=style)
        elif kind == MODELS:
            cards = self.registry.model_cards(int(time.time()))
            if tenant is not None and tenant.models is not None:
                cards = [c for c in cards if self._allowed(tenant, str(c.get("id")))]
            conn.respond(200, orjson.dumps({"object": "list", "data": cards}))
        else:
            self._model_card(conn, param, tenant)

    def _open(self, route: Route, req: Request, conn: Connection) -> None:
        """/health, /ready, /metrics, /vfleet/demand: no client key (readiness probes carry
        none; with keys on, the admin gate in router.app lets only the admin key reach
        /metrics and /vfleet/demand)."""
        if req.method not in route.methods:
            err = MethodNotAllowed(f"Method {req.method} is not allowed on {req.path}.")
            respond_error(conn, err, route.allow())
            return
        kind = route.kind
        if kind == HEALTH:
            conn.respond(200, b'{"status":"ok"}')
        elif kind == READY:
            self._ready(conn)
        elif kind == METRICS:
            kv = self.kv.index if self.kv is not None else None
            text = self.metrics.render(self.registry, self._held_gauge(), kv)
            conn.respond(200, text, b"text/plain; version=0.0.4")
        else:
            self._demand(req, conn)

    def _model_card(self, conn: Connection, model: str, tenant: Tenant | None = None) -> None:
        """GET /v1/models/{id}: the card /v1/models lists for `model` (an alias included)."""
        allowed = tenant is None or self._allowed(tenant, model)
        for card in self.registry.model_cards(int(time.time())) if allowed else ():
            if card.get("id") == model:
                conn.respond(200, orjson.dumps(card))
                return
        respond_error(conn, ModelNotFound(f"The model `{model}` does not exist.", "model"))

    def _allowed(self, tenant: Tenant, model: str) -> bool:
        """Whether a key's allowlist (if any) names `model` or the model an alias names."""
        allow = tenant.models
        return allow is None or model in allow or self.registry.resolve(model) in allow

    def _limited(self, conn: Connection, wait: float, what: str, style: ErrorStyle) -> None:
        """429 + Retry-After: a key's request or token budget is spent for now."""
        self.metrics.rejected[f"{what}_limit"] += 1
        retry = b"retry-after: %d\r\n" % max(1, math.ceil(wait))
        err = RateLimited(f"{what.capitalize()} rate limit reached for this API key.")
        respond_error(conn, err, retry, style)

    def _ready(self, conn: Connection) -> None:
        models = self.registry.model_names()
        down = [m for m in models if not any(ep.healthy for ep in self.registry.serving(m))]
        ok = bool(models) and not down
        body = orjson.dumps({"ready": ok, "models": models, "unavailable": down})
        conn.respond(200 if ok else 503, body)

    # -- forwarding -------------------------------------------------------------------------

    def _forward(
        self, req: Request, conn: Connection, route: Route, tenant: Tenant | None = None
    ) -> None:
        """Read what routing needs and start the request (ClientError: answered by `handle`)."""
        model, fields = read_body(req)
        if model is None:
            names = self.registry.model_names()
            if len(names) != 1:
                raise BadRequest("The request names no model.", "model")
            model = names[0]
        body = req.body
        target = self.registry.resolve(model)
        if tenant is not None and not self._allowed(tenant, model):
            if self.tenancy is not None:
                self.tenancy.refused(tenant, NO_MODEL, 404)  # not the client's name: bounded
            # Answered as for a model that does not exist: a key learns nothing of the others'.
            raise ModelNotFound(f"The model `{model}` does not exist.", "model")
        if target not in self.known_models and not self.registry.serving(target):
            raise ModelNotFound(f"The model `{model}` does not exist.", "model")
        path = route.upstream or req.path
        meter = None
        if tenant is not None and self.tenancy is not None:
            asked = ask_usage(path, fields)  # a stream's usage, when the client did not ask
            metered = self._meter(self.tenancy, tenant, target, req, fields, asked is not None)
            if not isinstance(metered, Meter):
                self.tenancy.refused(tenant, target, 429)
                self._limited(conn, metered, "token", route.style)  # over its token budget
                return
            meter = metered
            if asked is not None:
                fields = asked
        if (target != model or (meter is not None and meter.strip)) and fields:
            body = orjson.dumps({**fields, "model": target})
        policy = self.policy_for(target)
        key = route_key(policy, target, req, fields)
        span = None
        if self.tracer is not None:
            span = self.tracer.begin(req.headers, req.method, req.path)
        head = self._request_head(req, path, len(body), span)
        fwd = Forward(self, conn, target, key, head + body, time.monotonic(), route.style)
        fwd.span = span
        if meter is not None:
            fwd.meter = meter
            # A client that leaves before its request starts (while its engine is looked up)
            # gets its reservation back; start() and hold() set their own handlers.
            conn.on_close = fwd.left_while_held
        if self.kv is not None and Field.CHAIN in policy.needs:
            # The prompt's KV blocks: at once when cached, else after a pool thread (bounded).
            def then(key: RouteKey) -> None:
                fwd.key = key
                self._route(req, fwd, route, fields)

            self.kv.prepare(key, fields, self.registry.serving(target), then)
            return
        self._route(req, fwd, route, fields)

    def _route(self, req: Request, fwd: Forward, route: Route, fields: dict[str, Any]) -> None:
        """Send a request whose routing key is complete (or follow its stored response)."""
        if route.kind == RESPONSES:
            fwd.learn = self.owners  # the answer's id is learned: what follows it comes back here
            previous = fields.get("previous_response_id")
            if previous:
                self._follow(req, fwd, previous)
                return
        self._dispatch(fwd)

    def _meter(
        self,
        tenancy: Tenancy,
        tenant: Tenant,
        model: str,
        req: Request,
        fields: dict[str, Any],
        strip: bool,
    ) -> Meter | float:
        """The request's meter, its estimated tokens reserved against the key's token budget;
        when they do not fit, the seconds until they would."""
        reserved = 0
        if tenant.metered:
            reserved = int(estimated_tokens(fields))
            wait = tenancy.reserve(tenant, reserved, time.monotonic())
            if wait > 0.0:
                return wait
        # The prompt's size, should the answer not report it: the body at four bytes a token.
        return Meter(tenancy, tenant, model, reserved, len(req.body) // 4, strip)

    def _dispatch(self, fwd: Forward) -> None:
        if fwd.model in self.activator.queues:
            self.hold(fwd)  # behind the requests already waiting for this model: arrival order
        else:
            fwd.start()  # held there when no engine is ready

    # -- stored responses (router.affinity) -------------------------------------------------

    def _follow(self, req: Request, fwd: Forward, rid: str) -> None:
        """POST /v1/responses with a previous_response_id: to the engine that has it. When no
        engine says it has, the policy picks one, which answers its own 404."""
        ep = affinity.owner(self.owners, rid, self.registry.endpoints)
        if ep is not None:
            fwd.pin = ep
            fwd.start()
            return
        urls = affinity.candidates(self.registry.serving(fwd.model), fwd.model)
        if not urls:
            self._dispatch(fwd)  # no engine up to ask: held for one like any request
            return

        def found(url: str | None) -> None:
            owner = self.registry.endpoints.get(url) if url is not None else None
            if owner is None:
                self._dispatch(fwd)
            else:
                fwd.pin = owner
                fwd.start()

        self._locate(req, fwd.conn, rid, urls, found)

    def _stored(
        self, req: Request, conn: Connection, route: Route, rid: str, tenant: Tenant | None = None
    ) -> None:
        """GET/DELETE /v1/responses/{id} (and its cancel): to the engine that has the response;
        404 when none says it has, or when its model is not on the key's allowlist (the same
        answer: a key learns nothing of the others' responses)."""

        def relay(url: str | None) -> None:
            ep = self.registry.endpoints.get(url) if url is not None else None
            made_by = self.owners.model(rid)  # learned from its answer, or the engine's GET
            if ep is None or not ep.models or not self._may_see(tenant, made_by, ep.models):
                err = NotFound(f"No engine has a stored response `{rid}`.", "response_id")
                respond_error(conn, err, style=route.style)
                return
            model = made_by or ep.models[0]  # for the books: the request names none
            head = self._request_head(req, req.path, len(req.body))
            data = head + req.body
            fwd = Forward(self, conn, model, RouteKey(model), data, time.monotonic(), route.style)
            fwd.pin = ep
            fwd.start()

        ep = affinity.owner(self.owners, rid, self.registry.endpoints)
        if ep is not None:
            relay(ep.url)
            return
        urls = affinity.candidates(self.registry.endpoints.values())
        if not urls:
            relay(None)
            return
        self._locate(req, conn, rid, urls, relay)

    def _may_see(self, tenant: Tenant | None, model: str, serves: Sequence[str]) -> bool:
        """Whether a key may read or delete a stored response made by `model`; when the model
        is not known (the engine's answer named none), by the models its engine serves."""
        if tenant is None or tenant.models is None:
            return True
        if model:
            return self._allowed(tenant, model)
        return any(self._allowed(tenant, m) for m in serves)

    def _locate(
        self,
        req: Request,
        conn: Connection,
        rid: str,
        urls: list[str],
        then: Callable[[str | None], None],
    ) -> None:
        """Ask the engines for `rid`, then call `then` with the one that has it (or None),
        unless the client left meanwhile."""
        if self.locator is None:
            self.locator = Locator(self.owners)
        task = self.locator.locate(rid, urls, self._engine_auth(req))

        def done(task: asyncio.Task[str | None]) -> None:
            if conn.closed:
                return
            failed = task.cancelled() or task.exception() is not None
            then(None if failed else task.result())

        task.add_done_callback(done)

    # -- what engines are sent --------------------------------------------------------------

    def _engine_auth(self, req: Request) -> bytes:
        """The Authorization line engines get: the router's backend key; else, when the router
        checks no keys itself, the client's own."""
        if self.backend_auth:
            return self.backend_auth
        if not self.keyed and b"authorization" in req.headers:
            return b"authorization: %s\r\n" % req.headers[b"authorization"]
        return b""

    def _request_head(
        self, req: Request, path: str, length: int, span: Span | None = None
    ) -> bytes:
        target = (path + ("?" + req.query if req.query else "")).encode()
        lines = [b"%s %s HTTP/1.1\r\nhost: vfleet-router\r\n" % (req.method.encode(), target)]
        drop = self.drop_headers
        if span is not None:
            # Traced: the engines get this request's span as their parent (router.tracing).
            drop = drop | (REPLACED_ROOT if span.root else REPLACED)
            lines.append(span.header)
        for name, value in req.headers.items():
            if name not in drop:
                lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(self._engine_auth(req))
        lines.append(b"content-length: %d\r\n\r\n" % length)
        return b"".join(lines)

    def choose(self, key: RouteKey, exclude: tuple[str, ...]) -> Endpoint | None:
        eps = [ep.snapshot() for ep in self.registry.serving(key.model) if ep.url not in exclude]
        policy = self.policy_for(key.model)
        picked = policy.choose(eps, key)
        self.dp_rank = policy.dp_rank if isinstance(policy, KvAffinity) else None
        # Counted here, not in the policies: they stay pure, and this is one increment.
        reason = "none" if picked is None else "retry" if exclude else "picked"
        self.metrics.routing_decisions.inc((key.model, policy.name, reason))
        if picked is None:
            return None
        return self.registry.endpoints.get(picked.url)

    # -- the activator ----------------------------------------------------------------------

    def hold(self, fwd: Forward) -> None:
        """Queue a request until an engine of its model is ready (or answer it at once: holding
        off, or the queue full)."""
        model = fwd.model
        if not self.activator.limits(model).enabled:
            fwd.give_up(
                f"The model `{model}` has no ready replica yet (it is scaled to zero or "
                "starting); retry shortly."
            )
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

    def unhold(self, fwd: Forward) -> None:
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
            if isinstance(waiter, Forward):
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
                    err = BadRequest("wait_s must be a number of seconds >= 0.", "wait_s")
                    respond_error(conn, err)
                    return
        table = self.demand.table
        if wait_s <= 0.0 or table.held() > 0:
            conn.respond(200, orjson.dumps(table.as_dict()))
            return
        if self.polls is None:
            self.polls = Polls(table)
        if not self.polls.add(conn, wait_s):
            self.metrics.rejected["demand_polls"] += 1
            respond_error(conn, RateLimited("Too many demand long-polls waiting."), RETRY_FULL)
