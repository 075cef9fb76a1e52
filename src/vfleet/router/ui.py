"""The router's live status page: `/ui` (static HTML, JS and CSS from the package) and the JSON it
polls, `/ui/state` (models, replicas with health and load, requests per second, recent errors).

The page is served before the proxy sees the request, so no `/ui` path is ever forwarded to an
engine; the admin gate (router.app) wraps this handler, so with keys on /ui needs the admin key,
like /metrics. With `--workers N` a refresh may be answered by any worker: each one probes every
engine, so health and load agree, and request counts are read from the metrics table all workers
share (router.sharedmetrics) and in-flight and held counts from the demand table
(router.demand), so they are the whole router's. Recent events are found by each
worker comparing what it read on its previous refresh (a browser's keep-alive connection stays
with one worker).

Circuit breakers (router.breaker) are per worker: each judges the requests it forwards. A
replica's `breaker` is what the answering worker's breaker knows (state, since when, the
failures that tripped it); its `workers` counts, per state, the workers whose breaker holds the
endpoint out of closed, read from the shared metrics table (router.ejection's `shown`), so an
ejection is visible whichever worker answers.

`Tracker` is the pure part: it turns successive counter snapshots into a request rate and a
bounded list of recent errors and health changes; `StatusPage` reads the router and answers.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

from vfleet.errors import NotFound, error_json
from vfleet.http.server import Connection, Handler, Request
from vfleet.router.breaker import CLOSED, OPEN, STATE_NAMES, TRIAL, Breaker
from vfleet.router.metrics import BREAKER_EVENTS, BREAKER_STATES, REJECTED, REQUESTS, UPSTREAM
from vfleet.router.proxy import Router

RATE_WINDOW_S = 10.0  # requests per second is averaged over about this many seconds
MAX_SAMPLES = 64  # counter samples kept for the rate (bounded whatever the poll rate)
MAX_EVENTS = 50  # recent errors and health changes kept for the page
# Circuit breaker events (router.ejection) shown as recent events, and their kinds.
BREAKER_KINDS = {"opened": "ejected", "closed": "readmitted"}
ASSETS = {
    "/ui": ("index.html", b"text/html; charset=utf-8"),
    "/ui/": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", b"text/css; charset=utf-8"),
    "/ui/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}
# The page is the same for every fleet; the state must never be served from a cache.
NO_STORE = b"cache-control: no-store\r\n"
# The page loads only its own files and is never framed: names an engine or a client chose
# (model names, URLs) can do nothing even if they got into the DOM as markup.
PAGE_HEADERS = (
    b"content-security-policy: default-src 'self'; frame-ancestors 'none'\r\n"
    b"x-content-type-options: nosniff\r\n"
)
# One label of a series' label text in the shared table (`model="m",status="200"`).
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
UNESCAPE = re.compile(r"\\(.)")


def parse_labels(text: str) -> dict[str, str]:
    """`a="x",b="y\\"z"` -> {"a": "x", "b": 'y"z'} (the exposition's escapes undone)."""
    return {
        k: UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), v)
        for k, v in LABEL.findall(text)
    }


def request_counts(series: Mapping[str, list[float]]) -> dict[tuple[str, str, int], int]:
    """The requests family's series (label text -> [count]) keyed (model, endpoint, status)."""
    out: dict[tuple[str, str, int], int] = {}
    for text, vals in series.items():
        lbl = parse_labels(text)
        key = (lbl.get("model", ""), lbl.get(UPSTREAM, ""), int(lbl.get("status", "0") or 0))
        out[key] = out.get(key, 0) + int(vals[0])
    return out


def by_label(series: Mapping[str, list[float]], name: str) -> dict[str, int]:
    """A one-label family's series (label text -> [count]) keyed by that label's value."""
    return {parse_labels(text).get(name, ""): int(vals[0]) for text, vals in series.items()}


def by_upstream(series: Mapping[str, list[float]], name: str) -> dict[str, dict[str, int]]:
    """An (upstream, `name`) family's series keyed upstream -> that label's value -> count."""
    out: dict[str, dict[str, int]] = {}
    for text, vals in series.items():
        lbl = parse_labels(text)
        url = lbl.get(UPSTREAM, "")
        out.setdefault(url, {})[lbl.get(name, "")] = int(vals[0])
    return out


def breaker_view(
    b: Breaker, mono: float, wall: float, workers: Mapping[str, int]
) -> dict[str, Any]:
    """One endpoint's breaker for the page: this worker's state, since when (wall clock; None:
    never changed), when a cool-down or trial ends, the window's failures when it last tripped,
    and `workers`: per state other than closed, how many workers hold it there."""

    def wall_of(t: float) -> float:
        return wall - (mono - t)

    return {
        "state": STATE_NAMES[b.state],
        "since": wall_of(b.since) if b.since else None,
        "until": wall_of(b.until) if b.state in (OPEN, TRIAL) else None,
        "trips": b.trips if b.state != CLOSED else 0,
        "tripped_failed": b.trip_failed,
        "tripped_total": b.trip_total,
        "tripped_rate": b.trip_failed / b.trip_total if b.trip_total else None,
        "window_failed": b.failed,
        "window_total": b.total + b.passed,
        "workers": {name: workers.get(name, 0) for name in STATE_NAMES[1:]},
    }


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # wall-clock seconds
    # "error" (answered >= 400), "rejected" (refused by the router), "down", "up", "ejected"
    # and "readmitted" (a circuit breaker opened, or closed after a trial, in any worker)
    kind: str
    model: str = ""
    endpoint: str = ""
    status: int = 0
    reason: str = ""
    count: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.at,
            "kind": self.kind,
            "model": self.model,
            "endpoint": self.endpoint,
            "status": self.status,
            "reason": self.reason,
            "count": self.count,
        }


@dataclass(slots=True)
class Tracker:
    """Request rate and recent events from successive snapshots of the router's counters.

    Events are found by difference: an error counter that grew since the last look, a replica
    whose health flipped. The first look only records a baseline (errors from before the page
    was first opened are not 'recent')."""

    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    errors: dict[tuple[str, str, int], int] | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    health: dict[str, bool] = field(default_factory=dict)
    breaker: dict[tuple[str, str], int] = field(default_factory=dict)

    def observe(
        self,
        mono: float,
        wall: float,
        requests: Iterable[tuple[tuple[str, str, int], int]],
        rejected: Mapping[str, int],
        health: Mapping[str, bool],
        breaker: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """`breaker`: circuit breaker event counts by (endpoint, event), all workers."""
        total = 0
        errors: dict[tuple[str, str, int], int] = {}
        for key, n in requests:
            total += n
            if key[2] >= 400:
                errors[key] = n
        self.samples.append((mono, total))
        first = self.errors is None
        if not first:
            for (model, url, status), n in sorted(errors.items()):
                grew = n - (self.errors or {}).get((model, url, status), 0)
                if grew > 0:
                    self.events.append(Event(wall, "error", model, url, status, count=grew))
            for reason, n in sorted(rejected.items()):
                grew = n - self.rejected.get(reason, 0)
                if grew > 0:
                    self.events.append(Event(wall, "rejected", reason=reason, count=grew))
            for url, up in sorted(health.items()):
                if url in self.health and self.health[url] != up:
                    self.events.append(Event(wall, "up" if up else "down", endpoint=url))
            for (url, event), n in sorted((breaker or {}).items()):
                kind = BREAKER_KINDS.get(event)
                grew = n - self.breaker.get((url, event), 0)
                if kind is not None and grew > 0:
                    self.events.append(Event(wall, kind, endpoint=url, count=grew))
        self.errors = errors
        self.rejected = dict(rejected)
        self.health = dict(health)
        self.breaker = dict(breaker or {})

    def rate(self) -> float:
        """Requests answered per second over the last RATE_WINDOW_S (0 until two samples)."""
        if len(self.samples) < 2:
            return 0.0
        now, last = self.samples[-1]
        then, first = self.samples[0]
        for t, n in self.samples:  # the oldest sample inside the window
            if now - t <= RATE_WINDOW_S:
                then, first = t, n
                break
        span = now - then
        # max: a departed endpoint's series retired from the counters lowers the total
        return max(0.0, (last - first) / span) if span > 0 else 0.0


def load_assets() -> dict[str, tuple[bytes, bytes]]:
    """The page's files, read once from the package: path -> (body, content type)."""
    root = resources.files("vfleet.router") / "ui"
    return {path: ((root / name).read_bytes(), ctype) for path, (name, ctype) in ASSETS.items()}


@dataclass(slots=True)
class StatusPage:
    router: Router
    policy_of: Callable[[str], str]  # the routing policy's name for a model
    assets: dict[str, tuple[bytes, bytes]] = field(default_factory=load_assets)
    tracker: Tracker = field(default_factory=Tracker)
    started: float = field(default_factory=time.time)

    def wrap(self, handle: Handler) -> Handler:
        """`handle` with /ui and /ui/* answered here; every other path goes on to `handle`."""

        def with_ui(req: Request, conn: Connection) -> None:
            path = req.path
            if path == "/ui" or path.startswith("/ui/"):
                self.serve(req, conn)
            else:
                handle(req, conn)

        return with_ui

    def serve(self, req: Request, conn: Connection) -> None:
        if req.path == "/ui/state":
            conn.respond(200, orjson.dumps(self.state()), extra_headers=NO_STORE)
            return
        asset = self.assets.get(req.path)
        if asset is None:
            conn.respond(404, error_json(NotFound(f"No page {req.path} under /ui.")))
            return
        conn.respond(200, asset[0], asset[1], PAGE_HEADERS)

    def state(self) -> dict[str, Any]:
        """What the page shows, as of now (and the events noticed since the last call)."""
        router = self.router
        eps = sorted(router.registry.endpoints.values(), key=lambda e: e.url)
        wall = time.time()
        # every worker's counts, summed (one pass over the shared table)
        sums = router.metrics.row.table.collect(
            {REQUESTS: 1, REJECTED: 1, BREAKER_EVENTS: 1, BREAKER_STATES: 1}
        )
        mono = time.monotonic()
        events = by_upstream(sums[BREAKER_EVENTS], "event")
        self.tracker.observe(
            mono,
            wall,
            request_counts(sums[REQUESTS]).items(),
            by_label(sums[REJECTED], "reason"),
            {ep.url: ep.healthy for ep in eps},
            {(url, ev): n for url, evs in events.items() for ev, n in evs.items()},
        )
        breakers = router.ejector is not None
        held_out = by_upstream(sums[BREAKER_STATES], "state")
        # in flight and held across all workers, from the demand table they share
        demand = router.demand.table
        everywhere = demand.models()
        inflight = demand.endpoints()
        models = sorted(
            {m for ep in eps for m in ep.models}
            | set(router.known_models)
            | set(router.activator.queues)
        )
        return {
            "time": wall,
            "uptime_s": wall - self.started,
            "requests_per_s": self.tracker.rate(),
            "requests_total": self.tracker.samples[-1][1],
            "breaker": {"enabled": breakers, "workers": router.demand.table.workers},
            "models": [
                {
                    "name": m,
                    "policy": self.policy_of(m),
                    "replicas": sum(m in ep.models for ep in eps),
                    "healthy": sum(ep.healthy and m in ep.models for ep in eps),
                    "held": everywhere[m].held if m in everywhere else router.activator.held(m),
                }
                for m in models
            ],
            "replicas": [
                {
                    "url": ep.url,
                    "models": list(ep.models),
                    "healthy": ep.healthy,
                    "starting": ep.starting,
                    "failures": ep.failures,
                    "inflight": inflight.get(ep.url, ep.inflight),
                    "running": ep.running,
                    "waiting": ep.waiting,
                    "kv_usage": ep.kv_usage,
                    "prefix_hit_ratio": ep.prefix_hit_ratio,
                    "breaker": (
                        breaker_view(ep.breaker, mono, wall, held_out.get(ep.url, {}))
                        if breakers
                        else None
                    ),
                }
                for ep in eps
            ],
            "events": [e.as_json() for e in reversed(self.tracker.events)],
        }
