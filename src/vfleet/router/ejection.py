"""Ejecting engines for their errors: the circuit breakers (`router.breaker`) applied to the
registry's endpoints, with the rule that keeps a model served.

`Ejector.judge` takes each attempt's outcome from the request path (O(1) unless it trips a
breaker); `Ejector.tick` runs on a timer and lets endpoints whose cool-down is over take a
trial request. An endpoint is never ejected while it is the last routable endpoint of one of
its models (fail open): a model served by a failing engine is better than one served by none,
and its clients still see its errors. For the same reason `tick` readmits an ejected endpoint
at once when its model's other endpoints go down meanwhile.

`Endpoint.ejected` mirrors the breaker for the request path (snapshots and `Registry.ready`
leave ejected endpoints out); each worker process judges the requests it forwards itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from vfleet.router.breaker import CLOSED as SERVING
from vfleet.router.breaker import HALF_OPEN, RECOVERED, TRIPPED, BreakerPolicy
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
    `readmitted(ep)` hears of an endpoint that may take requests again (held ones go)."""

    __slots__ = ("count", "policy", "readmitted", "registry")

    def __init__(
        self,
        registry: Registry,
        policy: BreakerPolicy,
        count: Callable[[str, str], None],
        readmitted: Callable[[Endpoint], None],
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.count = count
        self.readmitted = readmitted

    def chosen(self, ep: Endpoint, now: float) -> None:
        """A request goes to `ep`: if its breaker is half open, that request is its trial
        (unless `ep` is all its model has: then every request goes, and the first outcome
        decides)."""
        breaker = ep.breaker
        if breaker.state == HALF_OPEN and not self.sole(ep):
            breaker.take_trial(now, self.policy)
            ep.ejected = breaker.ejected

    def judge(self, ep: Endpoint, ok: bool, now: float) -> None:
        """One attempt on `ep` ended: `ok` unless the engine failed it (connection error,
        reset, timeout, a 5xx answer)."""
        breaker = ep.breaker
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

    def tick(self, now: float) -> None:
        """Endpoints whose cool-down ended (or whose model has no other endpoint left) may
        take a trial request."""
        for ep in list(self.registry.endpoints.values()):
            if not ep.ejected:
                continue
            breaker = ep.breaker
            if not breaker.expire(now):
                if not self.sole(ep):
                    continue
                breaker.readmit()  # its model's other endpoints went down: fail open
            ep.ejected = breaker.ejected
            self.count(ep.url, HALF_OPENED)
            self.readmitted(ep)

    def sole(self, ep: Endpoint) -> bool:
        """Whether `ep` is the only endpoint (besides ejected or unhealthy ones) left to one of
        the models it serves."""
        for model in ep.models:
            if not any(other is not ep for other in self.registry.ready(model)):
                return True
        return False
