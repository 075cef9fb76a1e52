"""Runs the pure scheduler in wall time on an asyncio loop.

The engine owns the step loop: it asks the scheduler for a step, waits the step's modelled
duration (times `time_scale`), then hands the step's tokens to their owners and publishes its
KV-cache events. With zero-cost steps (the `instant` profile) it runs a bounded burst of steps per
loop turn so that many requests share one write per turn instead of one per token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from vfleet.sim.kvcache import KVEvent
from vfleet.sim.metrics import EngineGauges, EngineMetrics
from vfleet.sim.scheduler import Finish, Owner, Scheduler, Sequence, StepOutput

log = logging.getLogger("vfleet.sim.engine")

BURST_STEPS = 64  # zero-duration steps run per loop turn before yielding to I/O
CATCH_UP_S = 0.005  # modelled seconds of lag a busy engine may make up on its next step


class EventPublisher(Protocol):
    def publish(self, ts: float, events: list[KVEvent]) -> None: ...


class GpuShare(Protocol):
    """The GPU this engine time-slices with others (`sim.gpushare.SharedGpu`)."""

    def slowdown(self, ago: float) -> int: ...

    def step(self, seconds: float, more: bool) -> None: ...

    def idle(self) -> None: ...


@dataclass(slots=True, repr=False)
class Engine:
    scheduler: Scheduler
    metrics: EngineMetrics
    time_scale: float = 1.0  # wall seconds per modelled second
    publisher: EventPublisher | None = None
    wall_clock: Callable[[], float] | None = None  # unix time, for KV-event timestamps
    gpu: GpuShare | None = None  # shared with other engines: steps stretch while they are busy
    sleep_level: int = 0
    sleeping: bool = False  # stepping paused by /sleep until /wake_up
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _t0: float = field(default=0.0, init=False)
    _busy_until: float = field(default=0.0, init=False)
    _pending: bool = field(default=False, init=False)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self._loop = loop
        self._t0 = loop.time()

    def now(self) -> float:
        """Modelled seconds since the engine started."""
        assert self._loop is not None, "engine not started"
        return (self._loop.time() - self._t0) / self.time_scale

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences, after the profile's request overhead (the API server's share)."""
        now = self.now()
        # due a modelled overhead after the request came in: the sim's own parsing is part of
        # the API server's work the overhead models, not added to it
        due = (
            min((s.arrival for s in seqs), default=now) + self.scheduler.profile.request_overhead_s
        )
        if due > now:
            assert self._loop is not None, "engine not started"
            self._loop.call_later((due - now) * self.time_scale, self._admit, seqs, due)
        else:
            self._admit(seqs, due)

    def _admit(self, seqs: list[Sequence], due: float) -> None:
        now = self.now()
        # A late wake-up (a busy host) is absorbed as a late step is: the sequences join at
        # the modelled time they were due, and an idle engine's first step starts then.
        at = due if 0.0 <= now - due <= CATCH_UP_S else now
        if not self._pending and not self.scheduler.has_work:
            self._busy_until = max(self._busy_until, at)
        elif self.gpu is not None and self._pending and not self.scheduler.has_work:
            # its step in progress was its last: now another follows, so it stays busy
            self.gpu.step((self._busy_until - now) * self.time_scale, True)
        for seq in seqs:
            if seq.finish is None:  # not aborted while still on its way in
                self.scheduler.add(seq, at)
        self._kick()

    def abort(self, seqs: Iterable[Sequence]) -> None:
        now = self.now()
        for seq in seqs:
            if self.scheduler.abort(seq, now):
                self.metrics.observe_finished(seq)
            elif seq.finish is None:  # aborted before it reached the scheduler
                seq.finish = Finish.ABORT
                seq.finished_at = now
                seq.visible_bytes = 0
                self.metrics.observe_finished(seq)
        self._publish(self.scheduler.pool.drain_events())

    def gauges(self) -> EngineGauges:
        s = self.scheduler
        return EngineGauges(
            running=len(s.running),
            waiting=len(s.waiting),
            kv_usage=s.pool.usage,
            sleep_level=self.sleep_level,
            running_loras=_loras(s.running),
            waiting_loras=_loras(s.waiting),
        )

    def render_metrics(self) -> bytes:
        s = self.scheduler
        return self.metrics.render(self.gauges(), s.prefix_queries, s.prefix_hits)

    def sleep(self, level: int, pause_only: bool = False) -> None:
        """Stop stepping; levels 1 and 2 release KV memory, which drops the prefix cache.

        Requests that arrive while asleep wait in the queue, as in vLLM."""
        self.sleeping = True
        self.sleep_level = 0 if pause_only else level
        if level >= 1:
            self.scheduler.reset_prefix_cache()
            self._publish(self.scheduler.pool.drain_events())

    def wake_up(self) -> None:
        self.sleeping = False
        self.sleep_level = 0
        self._kick()

    # -- the step loop ----------------------------------------------------------------------

    def _kick(self) -> None:
        if not self._pending and not self.sleeping and self.scheduler.has_work:
            assert self._loop is not None, "engine not started"
            self._pending = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        try:
            self._steps()
        except Exception:
            self._crashed("engine step failed")

    def _finish_step(self, out: StepOutput) -> None:
        try:
            self._pending = False
            owners: dict[int, Owner] = {}
            self._deliver(out, owners)
            for owner in owners.values():
                owner.flush()
            self._kick()
            if not self._pending:
                self._gpu_idle()
        except Exception:
            self._crashed("delivering an engine step failed")

    def _crashed(self, what: str) -> None:
        """A bug in a step must not wedge the server: end every request, keep serving."""
        log.exception("%s; aborting %d in-flight sequences", what, self._in_flight())
        self._pending = False
        self._gpu_idle()
        live = [*self.scheduler.running, *self.scheduler.waiting]
        # The same abort path as a client disconnect: metrics and KV events stay consistent.
        self.abort(live)
        owners: dict[int, Owner] = {}
        for seq in live:
            _notify(seq, owners)
        for owner in owners.values():
            owner.flush()

    def _in_flight(self) -> int:
        return len(self.scheduler.running) + len(self.scheduler.waiting)

    def _steps(self) -> None:
        assert self._loop is not None
        self._pending = False
        owners: dict[int, Owner] = {}
        for _ in range(BURST_STEPS):
            if self.sleeping or not self.scheduler.has_work:
                break
            now, busy = self.now(), self._busy_until
            # Back-to-back steps start where the last one ended, even when this process's own
            # work made us a little late: the schedule is absolute (call_at), so Python time
            # is absorbed instead of being added to every modelled step.
            t = busy if 0.0 <= now - busy <= CATCH_UP_S else max(now, busy)
            gpu = self.gpu
            scale = self.time_scale
            # peers as they were when the step starts in the model (a late wake-up is absorbed)
            out = self.scheduler.step(t, 1 if gpu is None else gpu.slowdown((now - t) * scale))
            if out.duration_s > 0:
                self._busy_until = t + out.duration_s
                when = self._t0 + self._busy_until * scale
                if gpu is not None:  # busy past the step only while it has work left after it
                    gpu.step((self._busy_until - now) * scale, self.scheduler.has_work)
                self._pending = True
                self._loop.call_at(when, self._finish_step, out)
                break
            self._deliver(out, owners)
        else:
            self._kick()
        for owner in owners.values():
            owner.flush()
        if not self._pending:
            self._kick()
        if not self._pending:
            self._gpu_idle()

    def _gpu_idle(self) -> None:
        """No step follows (no work, or asleep): the GPU's other engines stop counting this one
        as busy (`sim.gpushare`), as `bench.plan` stops at once."""
        if self.gpu is not None:
            self.gpu.idle()

    def _deliver(self, out: StepOutput, owners: dict[int, Owner]) -> None:
        self.metrics.observe_step(out)
        for seq in out.streamed:
            _notify(seq, owners)
        for seq in out.finished:
            if not seq.wants_tokens:  # streamed ones were told above
                _notify(seq, owners)
        self._publish(out.events)

    def _publish(self, events: list[KVEvent]) -> None:
        if events and self.publisher is not None:
            ts = self.wall_clock() if self.wall_clock is not None else self.now()
            self.publisher.publish(ts, events)


def _notify(seq: Sequence, owners: dict[int, Owner]) -> None:
    owner = seq.tag
    if owner is None:
        return
    owner.on_progress(seq)
    owners[id(owner)] = owner


def _loras(seqs: Iterable[Sequence]) -> tuple[str, ...]:
    return tuple(sorted({s.lora_name for s in seqs if s.lora_name is not None}))
