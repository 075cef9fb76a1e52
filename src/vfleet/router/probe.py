"""Health probes: the loops that keep the registry's view of each engine current.

Each endpoint due for a probe gets GET /health, then /v1/models (what it serves, LoRA adapters
included) and /metrics (its load). Failures eject it with backoff; success puts it back. The
probes use the control plane's small client (`vfleet.http.client`), off the request hot path.

Engines that matter right now are probed fast instead, every `FAST_PROBE_S` and without backoff
(`FastProber`): those listed as starting, newly listed ones, and down endpoints of a model with
requests held for it. A held request then waits at most about one fast period past the moment
its engine's /health first answers 200.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

import orjson

from vfleet.http import client
from vfleet.router.endpoints import Endpoint, Registry, parse_load, parse_prefix_cache

log = logging.getLogger("vfleet.router.probe")


async def probe(ep: Endpoint, timeout_s: float, auth: bytes) -> bool:
    """Refresh one endpoint; True when it answered /health with 200."""
    return await answers_health(ep, timeout_s) and await refresh(ep, timeout_s, auth)


async def answers_health(ep: Endpoint, timeout_s: float) -> bool:
    return await client.answers(ep.url, "/health", timeout_s)


async def refresh(ep: Endpoint, timeout_s: float, auth: bytes) -> bool:
    """The endpoint's models and load (/v1/models, /metrics); False when it stopped answering."""
    try:
        models = await client.get(ep.url, "/v1/models", timeout_s, auth)
        if models.status == 200:
            doc = orjson.loads(models.body)
            data = doc.get("data", []) if isinstance(doc, dict) else []
            ep.cards = [c for c in data if isinstance(c, dict) and "id" in c]
        metrics = await client.get(ep.url, "/metrics", timeout_s)
        if metrics.status == 200:
            text = metrics.body.decode(errors="replace")
            ep.running, ep.waiting, ep.kv_usage = parse_load(text)
            ep.observe_prefix_cache(*parse_prefix_cache(text))
        return True
    except (OSError, ValueError):  # orjson.JSONDecodeError is a ValueError
        return False


async def probe_due(
    registry: Registry, now: float, interval_s: float, timeout_s: float, auth: bytes
) -> list[Endpoint]:
    """Probe the endpoints due (starting ones are the fast prober's); those that came up."""
    due = [
        ep
        for ep in registry.endpoints.values()
        if ep.next_probe_at <= now and not (ep.starting and not ep.healthy)
    ]
    results = await asyncio.gather(*(probe(ep, timeout_s, auth) for ep in due))
    up = []
    for ep, ok in zip(due, results, strict=True):
        was = ep.healthy
        if ok:
            ep.mark_up(now, interval_s)
        else:
            ep.mark_down(now, interval_s)
        if was != ep.healthy:
            if ep.healthy:  # coming up is the normal course; going down is what to look at
                log.info("endpoint %s is up", ep.url)
                up.append(ep)
            else:
                log.warning("endpoint %s is down", ep.url)
    return up


FAST_PROBE_S = 0.02  # seconds between fast probes of one endpoint


def fast_due(registry: Registry, held: Collection[str]) -> list[Endpoint]:
    """Down endpoints worth probing at once: starting, never probed, or serving a held model."""
    return [
        ep
        for ep in registry.endpoints.values()
        if not ep.healthy and (ep.starting or ep.unprobed or any(m in held for m in ep.models))
    ]


class ProbeOrder:
    """Which probe results still count, per endpoint URL: a probe takes the next number when
    it starts, and its result is applied only if no probe started after it has had its result
    applied already.

    The regular and the fast prober probe one endpoint independently, so results can arrive
    out of order: a first probe that hung, failing after a later fast probe found the endpoint
    up, marked it down for a whole backoff. Shared by both probers; URLs no longer listed are
    dropped as the table outgrows the registry, so it stays about the registry's size."""

    def __init__(self) -> None:
        self._seq: dict[str, list[int]] = {}  # url -> [last started, last applied]

    def __len__(self) -> int:
        return len(self._seq)

    def begin(self, url: str, listed: Collection[str]) -> int:
        """The number of a probe of `url` starting now (`listed`: the URLs to keep)."""
        if len(self._seq) > 2 * len(listed) + 64:
            self._seq = {u: seq for u, seq in self._seq.items() if u in listed}
        seq = self._seq.setdefault(url, [0, 0])
        seq[0] += 1
        return seq[0]

    def apply(self, url: str, n: int) -> bool:
        """Whether probe `n`'s result may be applied (and, if so, it is now the latest): False
        when a probe started later already had its result applied."""
        seq = self._seq.setdefault(url, [n, 0])
        if n < seq[1]:
            return False
        seq[1] = n
        return True


class ProbeTasks:
    """At most one probe in flight per endpoint, run as its own task: what the regular prober
    (`router.prober.Prober`) and the fast one share, with one `ProbeOrder` between them.
    Subclasses pick the endpoints to probe and `_probe` one (its `ProbeOrder` number `n`),
    removing it from `busy` when done and applying its result only when `order.apply` agrees."""

    def __init__(
        self,
        registry: Registry,
        interval_s: float,
        timeout_s: float,
        auth: bytes,
        on_up: Callable[[Endpoint], None],
        order: ProbeOrder | None = None,
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.auth = auth
        self.on_up = on_up
        self.order = ProbeOrder() if order is None else order
        self.busy: dict[str, asyncio.Task[None]] = {}  # url -> its probe in flight

    def start(self, ep: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        """Probe `ep` now unless a probe of it is already in flight."""
        if ep.url not in self.busy:
            n = self.order.begin(ep.url, self.registry.endpoints)
            self.busy[ep.url] = loop.create_task(self._probe(ep, n))

    def cancel_all(self) -> None:
        for task in self.busy.values():
            task.cancel()

    async def _probe(self, ep: Endpoint, n: int) -> None:
        raise NotImplementedError


class FastProber(ProbeTasks):
    """Probes `fast_due` endpoints every FAST_PROBE_S, one probe per endpoint at a time.

    A failed fast probe changes nothing for a starting endpoint or a held model's endpoint (the
    regular loop keeps its breaker); a newly listed plain endpoint that fails is marked down and
    from then on probed with backoff like any other. `on_up` hears of each endpoint that
    comes up."""

    def __init__(
        self,
        registry: Registry,
        interval_s: float,
        timeout_s: float,
        auth: bytes,
        held: Callable[[], Collection[str]],
        on_up: Callable[[Endpoint], None],
        order: ProbeOrder | None = None,
    ) -> None:
        super().__init__(registry, interval_s, timeout_s, auth, on_up, order)
        self.held = held

    async def run(self) -> None:
        try:
            while True:
                self.tick()
                await asyncio.sleep(FAST_PROBE_S)
        finally:
            self.cancel_all()

    def tick(self) -> None:
        """Start a probe for every due endpoint that has none in progress."""
        loop = asyncio.get_running_loop()
        for ep in fast_due(self.registry, self.held()):
            self.start(ep, loop)

    async def _probe(self, ep: Endpoint, n: int) -> None:
        try:
            # An engine whose models are known is served the moment /health answers: held
            # requests wait for it, and vLLM's /metrics alone can take tens of milliseconds.
            # Its models and load are read right after, as every probe does.
            if ep.static_models:
                ok = await answers_health(ep, self.timeout_s)
                if ok and self._came_up(ep, n):
                    await refresh(ep, self.timeout_s, self.auth)
                    return
            else:
                ok = await probe(ep, self.timeout_s, self.auth)
        finally:
            self.busy.pop(ep.url, None)
        if ok:
            self._came_up(ep, n)
        elif (
            ep.unprobed
            and not ep.starting
            and self.registry.endpoints.get(ep.url) is ep
            and self.order.apply(ep.url, n)
        ):
            ep.mark_down(time.monotonic(), self.interval_s)

    def _came_up(self, ep: Endpoint, n: int) -> bool:
        """Mark a probed endpoint up unless it was unlisted meanwhile, a probe started after
        this one has answered, or it is already up."""
        if self.registry.endpoints.get(ep.url) is not ep or not self.order.apply(ep.url, n):
            return False
        if ep.healthy:
            return False
        ep.mark_up(time.monotonic(), self.interval_s)
        log.info("endpoint %s is up", ep.url)
        self.on_up(ep)
        return True
