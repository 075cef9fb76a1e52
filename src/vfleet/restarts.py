"""Restart decisions for supervised processes (pure: the caller forks, waits and reads clocks).

The backoff is shared by the local supervisor (engines and the router process, local.supervisor)
and the router's parent (its worker processes, router.app): consecutive failures double the
delay up to BACKOFF_MAX_S, and a process that ran `stable_s` before exiting had recovered, so
its exit starts the count again.

`Slots` keeps the router parent's worker slots: worker i always writes row i of the shared
tables, so a worker that exits is forked again into the same slot (the row's counters carry on,
and worker 0 takes up its duties again). Once stopping, nothing is restarted. The last `last`
slots (the KEDA scaler's process) are supervised alike but stopped only once every other slot's
process has exited: KEDA must still see the requests a draining worker holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

BACKOFF_MAX_S: Final = 30.0
WORKER_FIRST_S: Final = 0.5  # a worker's first restart: soon, but never a busy loop
WORKER_STABLE_S: Final = 60.0  # a worker that ran this long is restarted after WORKER_FIRST_S


def restart_delay(failures: int, first_s: float = 1.0, max_s: float = BACKOFF_MAX_S) -> float:
    """first_s, twice that, four times, ... seconds, at most `max_s`, by consecutive failures."""
    return min(max_s, first_s * 2.0 ** max(0, failures - 1))


def failures_after_exit(failures: int, ran_s: float, stable_s: float) -> int:
    """Consecutive failures, counting an exit after `ran_s` seconds of running: one that ran
    `stable_s` or longer had recovered, so its exit starts the count (and the backoff) anew."""
    return 1 if ran_s >= stable_s else failures + 1


@dataclass(slots=True)
class Slot:
    pid: int  # the running worker's; 0 while none runs in the slot
    started: float  # when it was forked
    failures: int = 0  # consecutive exits, for the backoff
    due: float | None = None  # when to fork it again (None: not waiting for a restart)
    told: bool = False  # asked to stop (the slots stopped last are asked once)


@dataclass(frozen=True, slots=True)
class Exit:
    """What the parent does about a worker that exited."""

    worker: int  # its slot
    ran_s: float
    restart_in: float | None  # seconds until it is forked again; None: not restarted


class Slots:
    """The worker slots of the router's parent: which pid runs in which, and when a slot whose
    worker exited is due to be forked again. `restart`: False only waits (no worker comes back).
    `last`: how many of the slots, at the end of `pids`, are stopped after all the others."""

    def __init__(
        self,
        pids: Iterable[int],
        now: float,
        restart: bool = True,
        first_s: float = WORKER_FIRST_S,
        stable_s: float = WORKER_STABLE_S,
        last: int = 0,
    ) -> None:
        self.slots = [Slot(pid, now) for pid in pids]
        self.first = len(self.slots) - last  # the slots before this one are stopped first
        if not 0 <= self.first <= len(self.slots):
            raise ValueError(f"{last} slots to stop last out of {len(self.slots)}")
        self.restart = restart
        self.first_s = first_s
        self.stable_s = stable_s
        self.stopping = False

    def pids(self) -> list[int]:
        """The running workers' pids (never 0: that would signal the whole process group)."""
        return [s.pid for s in self.slots if s.pid > 0]

    def stopped_first(self) -> list[int]:
        """The running pids a shutdown signal goes to at once: all but the slots stopped last."""
        return [s.pid for s in self.slots[: self.first] if s.pid > 0]

    def to_stop_last(self) -> list[int]:
        """While stopping, once no slot stopped first runs: the running pids of the slots
        stopped last not asked yet (each returned once: the caller asks them to stop)."""
        if not self.stopping or self.stopped_first():
            return []
        told = [s for s in self.slots[self.first :] if s.pid > 0 and not s.told]
        for slot in told:
            slot.told = True
        return [s.pid for s in told]

    def exited(self, pid: int, now: float) -> Exit | None:
        """Record that `pid` exited; None when it is not one of the workers."""
        worker = next((i for i, s in enumerate(self.slots) if s.pid == pid), None)
        if worker is None:
            return None
        slot = self.slots[worker]
        slot.pid = 0
        ran_s = max(0.0, now - slot.started)
        if not self.restart or self.stopping:
            return Exit(worker, ran_s, None)
        slot.failures = failures_after_exit(slot.failures, ran_s, self.stable_s)
        delay = restart_delay(slot.failures, self.first_s)
        slot.due = now + delay
        return Exit(worker, ran_s, delay)

    def not_forked(self, worker: int, now: float) -> float:
        """The fork for `worker` failed (no memory, too many processes): counted as a failure,
        tried again after the backoff; the delay."""
        slot = self.slots[worker]
        slot.failures += 1
        delay = restart_delay(slot.failures, self.first_s)
        slot.due = now + delay
        return delay

    def stop(self) -> None:
        """Shutting down: restarts still waiting are dropped, and no exit makes a new one."""
        self.stopping = True
        for slot in self.slots:
            slot.due = None

    def due(self, now: float) -> list[int]:
        """The slots to fork again now (call `started` for each)."""
        if self.stopping:
            return []
        return [i for i, s in enumerate(self.slots) if s.due is not None and s.due <= now]

    def started(self, worker: int, pid: int, now: float) -> None:
        slot = self.slots[worker]
        slot.pid, slot.started, slot.due, slot.told = pid, now, None, False

    def wait_s(self, now: float) -> float | None:
        """How long the parent may wait for a worker's exit before a restart is due; None:
        no restart is waiting."""
        waiting = [s.due for s in self.slots if s.due is not None]
        if self.stopping or not waiting:
            return None
        return max(0.0, min(waiting) - now)

    def done(self) -> bool:
        """No worker runs and none will be restarted."""
        return not self.pids() and (self.stopping or all(s.due is None for s in self.slots))
