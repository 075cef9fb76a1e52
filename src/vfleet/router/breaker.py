"""The circuit breaker on errors: one engine's recent outcomes, and whether it is ejected.

Health probes only see whether an engine answers `/health`; an engine that answers it but fails
requests (500s, resets, timeouts) keeps getting traffic. `Breaker` counts each endpoint's
request outcomes in a sliding window and trips when failures reach `error_rate` of at least
`min_requests` requests. Tripped, the endpoint is ejected (OPEN) for a cool-down that doubles
with each trip in a row up to a cap; after it, HALF_OPEN: the next request is a trial (TRIAL
while it is in flight), and its outcome closes the breaker or opens it again for longer.

Pure: the clock is passed in and nothing here knows engines or requests. What counts as a
failure, and the rule never to eject the last endpoint of a model (fail open), belong to the
caller (`router.ejection`). Recording is O(1): the window is a ring of `BUCKETS` counters, each
`window_s / BUCKETS` seconds wide, with running totals (so the window spans between
`window_s` less one bucket and `window_s`).

Successes are nearly free, because nearly every request is one: while CLOSED, `ok()` only adds
one to `passed`, with no clock read and no ring update. `fold` moves `passed` into the ring's
bucket of the moment it runs: before a failure is judged (so the rate it sees counts them), and
on the caller's timer (`router.ejection` folds every tick, 0.1 s), so a success is counted in
the bucket of the next fold after it, at most one tick late: it may stay in the window up to a
tick longer than exactly, never shorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CLOSED: Final = 0  # serving; outcomes are counted
OPEN: Final = 1  # ejected until `until`
HALF_OPEN: Final = 2  # cool-down over: the next request is the trial
TRIAL: Final = 3  # the trial is in flight (until `until`, then another may be tried)
STATE_NAMES: Final = ("closed", "open", "half_open", "trial")

# What an outcome did (`Breaker.record`).
NOTHING: Final = 0
TRIPPED: Final = 1  # failures reached the threshold: the caller opens it (or spares it)
RECOVERED: Final = 2  # a trial succeeded: closed again

BUCKETS: Final = 10  # counters in the window's ring


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to eject an engine for its errors, and for how long."""

    error_rate: float = 0.5  # failed fraction of the window's requests that trips, in (0, 1]
    min_requests: int = 20  # requests in the window before its rate is judged
    window_s: float = 10.0  # seconds of outcomes judged
    cooldown_s: float = 5.0  # seconds of the first ejection; doubled for each trip in a row
    max_cooldown_s: float = 60.0  # cap on the cool-down

    def __post_init__(self) -> None:
        if not 0.0 < self.error_rate <= 1.0:
            raise ValueError("breaker error rate must be above 0 and at most 1")
        if self.min_requests < 1:
            raise ValueError("breaker min requests must be >= 1")
        if not 0.0 < self.window_s < float("inf"):
            raise ValueError("breaker window must be a number of seconds above 0")
        if not 0.0 < self.cooldown_s <= self.max_cooldown_s < float("inf"):
            raise ValueError("breaker cool-down must be above 0 and at most its cap")

    def cooldown(self, trips: int) -> float:
        """Seconds ejected after `trips` trips in a row (1 for the first)."""
        if trips > 62:  # 2**62 s is past any cap; keeps the float exact and bounded
            return self.max_cooldown_s
        return min(self.max_cooldown_s, self.cooldown_s * float(1 << max(0, trips - 1)))


class Breaker:
    """One endpoint's window of outcomes and breaker state (see the module docstring)."""

    __slots__ = (
        "bucket",
        "closed_at",
        "failed",
        "fails",
        "oks",
        "passed",
        "since",
        "state",
        "total",
        "trip_failed",
        "trip_total",
        "trips",
        "until",
    )

    def __init__(self) -> None:
        self.state = CLOSED
        self.until = 0.0  # OPEN: when the cool-down ends; TRIAL: when the trial is given up
        self.trips = 0  # trips in a row (a close long enough ago starts the count again)
        self.closed_at = -1e300  # when a trial last closed it
        self.oks = [0] * BUCKETS
        self.fails = [0] * BUCKETS
        self.bucket = -1  # number of the newest bucket (time / bucket width); -1: none yet
        self.total = 0  # outcomes in the window
        self.failed = 0  # failures in the window
        self.passed = 0  # successes not yet folded into the ring (see the module docstring)
        # For the status page: when `state` last changed (0: never), and the window's failures
        # and outcomes when it last tripped (a failed trial: 1 of 1).
        self.since = 0.0
        self.trip_failed = 0
        self.trip_total = 0

    @property
    def ejected(self) -> bool:
        """Kept out of routing: open, or its one trial in flight."""
        return self.state in (OPEN, TRIAL)

    def record(self, ok: bool, now: float, policy: BreakerPolicy) -> int:
        """Count one request's outcome; NOTHING, TRIPPED (the threshold is reached, or a trial
        failed) or RECOVERED (a trial succeeded). Outcomes while OPEN are of requests sent
        before the trip and are not counted. A success while CLOSED only adds to `passed`
        (as `ok` does); a failure first folds those into the window, then is judged."""
        state = self.state
        if state == OPEN:
            return NOTHING
        if state != CLOSED:  # HALF_OPEN or TRIAL: any outcome decides
            if ok:
                self.close(now)
                return RECOVERED
            return TRIPPED
        if ok:
            self.passed += 1
            return NOTHING
        self._advance(now, policy)
        i = self.bucket % BUCKETS
        if self.passed:
            self._add_passed(i)
        self.total += 1
        self.fails[i] += 1
        self.failed += 1
        if self.total >= policy.min_requests and self.failed >= policy.error_rate * self.total:
            return TRIPPED
        return NOTHING

    def ok(self) -> bool:
        """Count one success the cheap way: True when counted (CLOSED: added to `passed`);
        False when it must go through `record` (a trial it decides, or one ignored while OPEN).
        """
        if self.state == CLOSED:
            self.passed += 1
            return True
        return False

    def fold(self, now: float, policy: BreakerPolicy) -> None:
        """Move the successes counted since the last fold into the ring's bucket of `now`."""
        if self.passed:
            self._advance(now, policy)
            self._add_passed(self.bucket % BUCKETS)

    def open(self, now: float, policy: BreakerPolicy) -> float:
        """Eject: OPEN for the cool-down its trips in a row earn; the cool-down, in seconds."""
        if self.state == CLOSED and now - self.closed_at >= policy.max_cooldown_s:
            self.trips = 0  # closed and well for a whole cap: a new trip starts over
        self.trips += 1
        cooldown = policy.cooldown(self.trips)
        if self.state == CLOSED:
            self.trip_failed, self.trip_total = self.failed, self.total
        else:
            self.trip_failed, self.trip_total = 1, 1
        self.state = OPEN
        self.since = now
        self.until = now + cooldown
        self._clear()
        return cooldown

    def close(self, now: float) -> None:
        """Serve again, counting from an empty window."""
        self.state = CLOSED
        self.closed_at = now
        self.since = now
        self._clear()

    def expire(self, now: float) -> bool:
        """The cool-down (or a trial's wait) is over: HALF_OPEN; True when that happened."""
        if self.state in (OPEN, TRIAL) and now >= self.until:
            self.state = HALF_OPEN
            self.since = now
            return True
        return False

    def readmit(self, now: float) -> None:
        """HALF_OPEN now, whatever the cool-down left (the caller fails open)."""
        if self.state in (OPEN, TRIAL):
            self.state = HALF_OPEN
            self.since = now

    def take_trial(self, now: float, policy: BreakerPolicy) -> None:
        """A request goes to this HALF_OPEN endpoint: it is the trial, and no other request
        follows it until it ends (or, past the current cool-down, another is tried)."""
        if self.state == HALF_OPEN:
            self.state = TRIAL
            self.since = now
            self.until = now + policy.cooldown(self.trips)

    def _advance(self, now: float, policy: BreakerPolicy) -> None:
        """Move the ring to the bucket of `now`, forgetting the buckets that left the window."""
        b = int(now * BUCKETS / policy.window_s)
        newest = self.bucket
        if b <= newest:
            return  # the same bucket (or a clock that went back: counted in the newest)
        steps = b - newest if newest >= 0 else BUCKETS
        oks = self.oks
        fails = self.fails
        for k in range(1, min(steps, BUCKETS) + 1):
            i = (newest + k) % BUCKETS
            self.total -= oks[i] + fails[i]
            self.failed -= fails[i]
            oks[i] = 0
            fails[i] = 0
        self.bucket = b

    def _add_passed(self, i: int) -> None:
        self.oks[i] += self.passed
        self.total += self.passed
        self.passed = 0

    def _clear(self) -> None:
        for i in range(BUCKETS):
            self.oks[i] = 0
            self.fails[i] = 0
        self.total = 0
        self.failed = 0
        self.passed = 0
