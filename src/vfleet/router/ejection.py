"""Ejecting engines for their errors: the circuit breakers (`router.breaker`) applied to the
registry's endpoints, with the rule that keeps a model served.

`Ejector.judge` takes each attempt's outcome from the request path (O(1) unless it trips a
breaker; the request path counts a success with `Breaker.ok` alone, which reads no clock);
`Ejector.tick` runs on a timer, folds each breaker's successes into its window, and lets
endpoints whose cool-down is over take a trial request. An endpoint is never ejected while it
is the last routable endpoint of one of its models (fail open): a model served by a failing
engine is better than one served by none, and its clients still see its errors. For the same
reason `tick` readmits an ejected endpoint at once when its model's other endpoints go down
meanwhile.

`Endpoint.ejected` mirrors the breaker for the request path (snapshots and `Registry.ready`
leave ejected endpoints out); each worker process judges the requests it forwards itself. So
that the whole router's view can be shown (/metrics, /ui), `shown(url, state, 1 or 0)` hears
each change of an endpoint's breaker out of or back to closed (router.metrics keeps it in the
worker's row of the shared metrics table, where a scrape sums the rows: workers per state; the
row of a worker that exits is zeroed, router.app's wait_workers). It runs on state changes
only, never per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from vfleet.router.breaker import CLOSED as SERVING
from vfleet.router.breaker import HALF_OPEN, RECOVERED, STATE_NAMES, TRIPPED, BreakerPolicy
from vfleet.router.endpoints import Endpoint, Registry

log = logging.getLogger("vfleet.router.breaker")

TICK_S: Final = 0.1  # seconds between looks for cool-downs that ended

# `events` labels: what happened to an endpoint's breaker.
OPENED: Final = "opened"
HALF_OPENED: Final = "half_opened"
CLOSED: Final = "closed"
SPARED: Final = "spared"  # it would have opened, but the endpoint is its model's last


class Ejector:
    """The breakers of one worker's endpoints. `count(url, event)` counts an event (metrics);
    `readmitted(ep)` hears of an endpoint that may take requests again (held ones go);
    `shown(url, state name, 1|0)`: an endpoint's breaker entered (1) or left (0) a state other
    than closed (see the module docstring)."""

    __slots__ = ("count", "policy", "readmitted", "registry", "shown", "told")

    def __init__(
        self,
        registry: Registry,
        policy: BreakerPolicy,
        count: Callable[[str, str], None],
        readmitted: Callable[[Endpoint], None],
        shown: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.count = count
        self.readmitted = readmitted
        self.shown = shown
        # What `shown` was last told per endpoint whose breaker is not closed: an endpoint that
        # leaves the registry (or comes back with a new, closed breaker) is told closed by `tick`.
        self.told: dict[str, int] = {}

    def chosen(self, ep: Endpoint, now: float) -> None:
        """A request goes to `ep`: if its breaker is half open, that request is its trial
        (unless `ep` is all its model has: then every request goes, and the first outcome
        decides)."""
        breaker = ep.breaker
        if breaker.state == HALF_OPEN and not self.sole(ep):
            breaker.take_trial(now, self.policy)
            ep.ejected = breaker.ejected
            self._moved(ep)

    def judge(self, ep: Endpoint, ok: bool, now: float) -> None:
        """One attempt on `ep` ended: `ok` unless the engine failed it (connection error,
        reset, timeout, a 5xx answer)."""
        breaker = ep.breaker
        before = breaker.state
        event = breaker.record(ok, now, self.policy)
        if event == TRIPPED:
            if self.sole(ep):
                if breaker.state != SERVING:  # a failed trial of the model's last endpoint: serve
                    breaker.close(now)
                self.count(ep.url, SPARED)
            else:
                cooldown = breaker.open(now, self.policy)
                self.count(ep.url, OPENED)
                log.warning("endpoint %s ejected for %.1fs: too many errors", ep.url, cooldown)
            ep.ejected = breaker.ejected
        elif event == RECOVERED:
            ep.ejected = False
            self.count(ep.url, CLOSED)
            log.warning("endpoint %s serves again: its trial request succeeded", ep.url)
        if breaker.state != before:
            self._moved(ep)

    def tick(self, now: float) -> None:
        """Fold each breaker's successes into its window (`Breaker.fold`); endpoints whose
        cool-down ended (or whose model has no other endpoint left) may take a trial request."""
        policy = self.policy
        endpoints = self.registry.endpoints
        for url, state in list(self.told.items()):  # O(endpoints not closed)
            ep = endpoints.get(url)
            if ep is None or ep.breaker.state != state:
                self._moved(ep, url)
        for ep in list(endpoints.values()):
            breaker = ep.breaker
            if breaker.passed:
                breaker.fold(now, policy)
            if not ep.ejected:
                continue
            if not breaker.expire(now):
                if not self.sole(ep):
                    continue
                breaker.readmit(now)  # its model's other endpoints went down: fail open
            ep.ejected = breaker.ejected
            self.count(ep.url, HALF_OPENED)
            self._moved(ep)
            self.readmitted(ep)

    def _moved(self, ep: Endpoint | None, url: str = "") -> None:
        """Tell `shown` the state of `ep`'s breaker if it changed since it was last told (`ep`
        None: the endpoint `url` left the registry; closed)."""
        shown = self.shown
        if shown is None:
            return
        if ep is not None:
            url = ep.url
        after = SERVING if ep is None else ep.breaker.state
        before = self.told.get(url, SERVING)
        if after == before:
            return
        if before != SERVING:
            shown(url, STATE_NAMES[before], 0)
        if after != SERVING:
            shown(url, STATE_NAMES[after], 1)
            self.told[url] = after
        else:
            del self.told[url]

    def sole(self, ep: Endpoint) -> bool:
        """Whether `ep` is the only endpoint (besides ejected or unhealthy ones) left to one of
        the models it serves."""
        for model in ep.models:
            if not any(other is not ep for other in self.registry.ready(model)):
                return True
        return False
