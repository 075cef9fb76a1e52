"""The activator's queues: requests for a model with no ready engine wait here, in arrival order.

One bounded FIFO per model. Each held request has a deadline; since a model's requests share
one hold timeout, deadlines within a queue never decrease, so one timer per queue (for its head)
is enough, whatever the number of requests held. The clock and the timer are passed in, so the
logic runs under a fake clock in tests; the router passes `loop.time` and `loop.call_later`.

What a released or expired request does (forward, answer 503) is the caller's `Waiter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Waiter(Protocol):
    def wake(self) -> None: ...  # an engine is ready: go

    def expire(self) -> None: ...  # its deadline passed while held


class Timer(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Timer]  # (delay in seconds, callback)


@dataclass(frozen=True, slots=True)
class HoldLimits:
    timeout_s: float = 300.0  # seconds a request waits at most
    max_queued: int = 1000  # requests held per model at most

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0 and self.max_queued > 0


HELD = 1  # hold() results
WOKE = 2  # held, and the first of an empty queue: an activation
FULL = 0


class _Queue:
    __slots__ = ("timer", "waiting")

    def __init__(self) -> None:
        self.waiting: dict[Waiter, float] = {}  # in arrival order -> deadline
        self.timer: Timer | None = None


class Activator:
    def __init__(
        self, clock: Callable[[], float], schedule: Schedule, limits: Callable[[str], HoldLimits]
    ) -> None:
        self.clock = clock
        self.schedule = schedule
        self.limits = limits
        self.queues: dict[str, _Queue] = {}  # only models with someone held

    def held(self, model: str) -> int:
        q = self.queues.get(model)
        return len(q.waiting) if q is not None else 0

    def total(self) -> int:
        return sum(len(q.waiting) for q in self.queues.values())

    def hold(self, model: str, waiter: Waiter) -> int:
        """FULL (not held), HELD, or WOKE (held, the model's first: time to wake it)."""
        limits = self.limits(model)
        q = self.queues.get(model)
        if q is None:
            q = self.queues[model] = _Queue()
        if len(q.waiting) >= limits.max_queued:
            self._drop_if_empty(model, q)
            return FULL
        q.waiting[waiter] = self.clock() + limits.timeout_s
        if q.timer is None:
            q.timer = self.schedule(limits.timeout_s, lambda: self._expire(model))
        return WOKE if len(q.waiting) == 1 else HELD

    def cancel(self, model: str, waiter: Waiter) -> bool:
        """Take a waiter out (its client left); False when it was not held."""
        q = self.queues.get(model)
        if q is None or q.waiting.pop(waiter, None) is None:
            return False
        self._rearm(model, q)
        return True

    def take(self, model: str, limit: int = -1) -> list[Waiter]:
        """Up to `limit` (-1: all) waiters, oldest first, out of the queue."""
        q = self.queues.get(model)
        if q is None:
            return []
        out: list[Waiter] = []
        for waiter in q.waiting:
            if len(out) == limit:
                break
            out.append(waiter)
        for waiter in out:
            del q.waiting[waiter]
        self._rearm(model, q)
        return out

    def take_all(self) -> list[Waiter]:
        """Every waiter of every model (shutting down)."""
        out: list[Waiter] = []
        for model in list(self.queues):
            out += self.take(model)
        return out

    def _expire(self, model: str) -> None:
        q = self.queues.get(model)
        if q is None:
            return
        q.timer = None
        now = self.clock()
        due: list[Waiter] = []
        for waiter, deadline in q.waiting.items():
            if deadline > now:
                break  # deadlines follow arrival order
            due.append(waiter)
        for waiter in due:
            del q.waiting[waiter]
        self._rearm(model, q)
        for waiter in due:
            waiter.expire()

    def _rearm(self, model: str, q: _Queue) -> None:
        """Point the queue's one timer at its head's deadline (or drop an empty queue)."""
        if not q.waiting:
            self._drop_if_empty(model, q)
            return
        if q.timer is not None:
            return  # fires at or before the head's deadline; it re-arms itself then
        head = next(iter(q.waiting.values()))
        q.timer = self.schedule(max(0.0, head - self.clock()), lambda: self._expire(model))

    def _drop_if_empty(self, model: str, q: _Queue) -> None:
        if not q.waiting:
            if q.timer is not None:
                q.timer.cancel()
            del self.queues[model]
