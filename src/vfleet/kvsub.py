"""Subscriptions to the engines' KV-cache event publishers (ZeroMQ), feeding a `KvIndex`.

Owns one SUB socket per engine and the recovery of lost batches. vLLM publishes each engine
step's events as `[topic, seq (8 bytes, big-endian), msgpack [ts, events, dp_rank]]`; batches
are applied in order. A jump in `seq` means batches were lost (the subscriber fell behind the
publisher's high-water mark, or joined late): they are asked for on the engine's replay socket
(a ROUTER answering `[b"", start seq]` with the buffered batches, then an end marker), found by
the convention of `router.kvwire` (the PUB port + 100, or `NAME.replay.sock` beside a local
socket); when that does not fill the gap, the engine's entries are purged and the index starts
again from the batch at hand.

The replay socket is lossy: vLLM answers a request by sending its whole buffer (up to
`buffer_steps` batches) in one burst through a ROUTER whose send queue holds 1,000 messages,
and a ROUTER drops what overflows, the end marker included. So a replay is asked again from the
first batch missing whenever its stream skips one or stalls for `replay_timeout_s`, and it ends
only when it reaches the batch wanted, the end marker, or a round that brings nothing new (the
rest has left the engine's buffer): a deep catch-up takes as long as it makes progress. Batches
are applied at most `SLICE_S` per event-loop iteration (over all engines), so a catch-up of
thousands of batches does not hold up the router's requests.

Data parallelism: an engine of N ranks (`kvwire.Publisher.ranks`) is followed on each rank's
publisher and replay socket, where `kvwire.rank_endpoint` places them.

A new subscription asks the replay socket at once for everything the engine still buffers, so a
router that starts (or restarts) after the engines have cached prompts knows them before their
next batch. An engine whose publisher goes away, or whose endpoint changes, is purged too.

It lives outside `vfleet.router`, which may not import ZeroMQ (pyproject's `router-alone`
contract): `vfleet router` hands `KvFeed` to the router (`router.kvroute.Feed`) only when a `kv`
policy is configured, so a router without one never loads ZeroMQ, and no router module can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from vfleet.router.kvindex import Applied, KvIndex
from vfleet.router.kvwire import Publisher, rank_endpoint, replay_endpoint

log = logging.getLogger("vfleet.router.kv")

END_SEQ: Final = b"\xff" * 8  # the replay socket's end marker
RCV_HWM: Final = 100_000  # batches queued per engine before ZeroMQ drops (then: a gap)
REPLAY_TIMEOUT_S: Final = 1.0  # the longest wait for a replay's next batch
REPLAY_RCV_HWM: Final = 20_000  # a replay's receive queue: 2x vLLM's default buffer, never full
MAX_REPLAY_ROUNDS: Final = 1000  # re-asks of one replay (each brings at least one batch)
DRAIN: Final = 64  # live batches taken per wake-up before the monitor is looked at again
SLICE_S: Final = 0.002  # batch application per event-loop iteration (one batch may overrun it)
NO_END: Final = 1 << 64  # a replay bound above any sequence number


def decode(payload: bytes) -> tuple[list[Any], int] | None:
    """(events, data-parallel rank) of one batch's payload; None when it is not a batch. vLLM
    leaves the rank out (or None) without data parallelism: rank 0."""
    try:
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(batch, list) or len(batch) < 2 or not isinstance(batch[1], list):
        return None
    rank = batch[2] if len(batch) > 2 else None
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        rank = 0
    return batch[1], rank


@dataclass(slots=True)
class _Stream:
    """One publisher followed: an engine's, or one data-parallel rank's of it."""

    url: str
    endpoint: str
    dialled: int  # the data-parallel rank whose endpoint this is
    rank: int  # the rank its batches carry (the index's key): learned from them
    # (last seq the catch-up replay applied, last live seq dropped since): live batches queued
    # while the catch-up ran repeat what it applied. None: no catch-up to compare with.
    caught_up: tuple[int, int] | None = None


class _Budget:
    """The time one event-loop iteration may spend applying batches, over all of a feed's
    streams: a stream waits for a later iteration once it is spent, so a catch-up from many
    engines at once holds up the loop's other work (requests) for one slice, not one per engine.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._spent = 0.0
        self._renewing = False  # a renewal is scheduled for the next iteration
        self._waiting: list[asyncio.Future[None]] = []

    async def turn(self) -> None:
        """Return when this iteration's budget has time left (at once, mostly)."""
        while self._spent >= SLICE_S:
            waiter = self._loop.create_future()
            self._waiting.append(waiter)
            await waiter

    def charge(self, seconds: float) -> None:
        """Count work done (time that included waits over-charges one iteration, no more)."""
        self._spent += seconds
        if not self._renewing:
            self._renewing = True
            # call_soon runs after everything already ready: the next iteration
            self._loop.call_soon(self._renew)

    def _renew(self) -> None:
        self._spent = 0.0
        self._renewing = False
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:  # in the order they came: no stream starves
            if not waiter.done():
                waiter.set_result(None)


class KvFeed:
    """The subscriptions of one router process: `set_publishers` makes them match a map of
    engine URL -> publisher endpoint (or `kvwire.Publisher`, naming its data-parallel ranks);
    `close` ends them all."""

    def __init__(
        self,
        index: KvIndex,
        replay_timeout_s: float = REPLAY_TIMEOUT_S,
        replay: Callable[[str], str | None] = replay_endpoint,
    ) -> None:
        self.index = index
        self.replay_timeout_s = replay_timeout_s  # the longest wait for a replay's next batch
        self.replay = replay  # publisher endpoint -> its replay socket (None: it has none)
        self.counts: Counter[str] = Counter()  # batches, gaps, replayed, purged, ...
        self._ctx = zmq.asyncio.Context()
        self._tasks: dict[str, tuple[Publisher, list[asyncio.Task[None]]]] = {}
        self._loop_budget: _Budget | None = None  # made in the loop, at the first subscription

    def set_publishers(self, wanted: Mapping[str, str | Publisher]) -> None:
        publishers = {
            url: p if isinstance(p, Publisher) else Publisher(p) for url, p in wanted.items()
        }
        for url, (publisher, tasks) in list(self._tasks.items()):
            if publishers.get(url) != publisher:
                for task in tasks:
                    task.cancel()
                del self._tasks[url]
                self.index.purge(url)
        self.index.retain(publishers.keys())
        loop = asyncio.get_running_loop()
        for url, publisher in publishers.items():
            if url in self._tasks:
                continue
            tasks = []
            for rank in range(publisher.ranks):
                endpoint = rank_endpoint(publisher.endpoint, rank)
                if endpoint is None:
                    log.warning("kv events of %s: no endpoint for data-parallel rank %d", url, rank)
                    continue
                stream = _Stream(url, endpoint, rank, rank)
                tasks.append(loop.create_task(self._guarded(stream)))
            self._tasks[url] = (publisher, tasks)

    def _budget(self) -> _Budget:
        if self._loop_budget is None:
            self._loop_budget = _Budget(asyncio.get_running_loop())
        return self._loop_budget

    async def close(self) -> None:
        tasks = [task for _, ranks in self._tasks.values() for task in ranks]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ctx.destroy(linger=0)

    async def _guarded(self, stream: _Stream) -> None:
        """Follow one publisher; a failure is logged and its engine purged, then followed anew."""
        while True:
            try:
                await self._follow(stream)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "kv events of %s (%s): subscription failed", stream.url, stream.endpoint
                )
                self._forget(stream)
                await asyncio.sleep(1.0)

    def _forget(self, stream: _Stream) -> None:
        stream.caught_up = None
        self.index.purge(stream.url, stream.rank)
        stream.rank = stream.dialled

    async def _follow(self, stream: _Stream) -> None:
        sub = self._ctx.socket(zmq.SUB)
        # The connection's ups and downs: a publisher that goes away (the engine restarted, or
        # the network dropped) may come back numbering from 0, and only a purge then a fresh
        # catch-up keeps the index true; the sequence numbers alone cannot tell.
        mon = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, RCV_HWM)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(stream.endpoint)
            poller = zmq.asyncio.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(mon, zmq.POLLIN)
            budget = self._budget()
            while True:
                ready = dict(await poller.poll())
                if mon in ready:
                    event = parse_monitor_message(await mon.recv_multipart())
                    await self._on_connection(stream, int(event["event"]))
                if sub in ready:
                    # A backlog is applied within the loop's budget; between slices the loop
                    # serves requests, and the monitor is heard (a restart between batches).
                    for _ in range(DRAIN):
                        await budget.turn()
                        try:
                            frames = await sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        started = time.perf_counter()
                        await self._on_frames(stream, frames)
                        budget.charge(time.perf_counter() - started)
        finally:
            sub.disable_monitor()
            mon.close(linger=0)
            sub.close(linger=0)

    async def _on_connection(self, stream: _Stream, event: int) -> None:
        if event == zmq.EVENT_DISCONNECTED:
            self.counts["disconnects"] += 1
            self._forget(stream)
        elif event == zmq.EVENT_CONNECTED and self._seq(stream) < 0:
            # What the engine published before this subscription joined is in its replay
            # buffer: without asking now, it would be noticed only at the engine's next batch
            # (a router that restarts would not know an idle engine's cache).
            await self._replay(stream, 0, NO_END)
            if self._seq(stream) >= 0:
                stream.caught_up = (self._seq(stream), -1)

    def _seq(self, stream: _Stream) -> int:
        return self.index.seq(stream.url, stream.rank)

    async def _on_frames(self, stream: _Stream, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            self.counts["bad"] += 1
            return
        seq = int.from_bytes(frames[1], "big")
        batch = decode(frames[2])
        if batch is None:
            self.counts["bad"] += 1
            return
        events, rank = batch
        stream.rank = rank
        url = stream.url
        self.counts["batches"] += 1
        if self._repeats_catch_up(stream, seq):
            self.counts["duplicates"] += 1
            return
        index = self.index
        if index.seq(url, rank) < 0 and seq > 0:
            # Joined late (or the router restarted): what the engine stored before is in its
            # replay buffer, when it keeps one.
            await self._replay(stream, 0, seq)
            if index.seq(url, rank) < 0:
                index.accept(url, seq, events, rank)
            else:
                self._apply(url, seq, events, rank)
            return
        result = index.apply(url, seq, events, rank)
        if result is Applied.GAP:
            self.counts["gaps"] += 1
            await self._replay(stream, index.seq(url, rank) + 1, seq)
            self._apply(url, seq, events, rank)
        elif result is Applied.RESTARTED:
            # The engine numbers from 0 again: its batches before this one are in its replay
            # buffer, when it keeps one (the subscription itself stayed connected).
            self.counts["purged"] += 1
            if seq > 0 and self.replay(stream.endpoint) is not None:
                index.purge(url, rank)
                await self._replay(stream, 0, seq)
                self._apply(url, seq, events, rank)

    def _repeats_catch_up(self, stream: _Stream, seq: int) -> bool:
        """Whether live batch `seq` is one the catch-up replay already applied. They arrive in
        order; one that is not (a lower seq than the last dropped) means the engine restarted,
        and it goes to the index, which sees the restart."""
        if stream.caught_up is None:
            return False
        through, dropped = stream.caught_up
        if dropped < seq <= through:
            stream.caught_up = (through, seq)
            return True
        stream.caught_up = None
        return False

    def _apply(self, url: str, seq: int, events: list[Any], rank: int) -> None:
        """Apply the batch after a replay: in order if the replay filled the gap, else from a
        clean slate."""
        if self.index.apply(url, seq, events, rank) is Applied.GAP:
            self.counts["purged"] += 1
            log.warning("kv events of %s: batches lost before %d; its entries are purged", url, seq)
            self.index.purge(url, rank)
            self.index.accept(url, seq, events, rank)

    async def _replay(self, stream: _Stream, start: int, until: int) -> None:
        """Apply the batches start..until-1 from the engine's replay socket, as far as it still
        has them: asked again from the first one missing while each round brings new ones."""
        target = self.replay(stream.endpoint)
        if target is None:
            return
        budget = self._budget()
        want = start
        for _ in range(MAX_REPLAY_ROUNDS):
            got, ended = await self._replay_round(stream, target, want, until, budget)
            if ended or got >= until or got == want:
                return
            self.counts["replay_retries"] += 1  # the replay dropped some: ask from there
            want = got

    async def _replay_round(
        self, stream: _Stream, target: str, want: int, until: int, budget: _Budget
    ) -> tuple[int, bool]:
        """Ask `target` for the batches from `want` on and apply them in order, until a batch
        is missing (the publisher dropped it), the stream stalls, or it ends (the end marker or
        batch `until`). Returns (the first batch still wanted, whether it ended)."""
        sock = self._ctx.socket(zmq.DEALER)
        wait_ms = max(1, round(self.replay_timeout_s * 1000))
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # Never this side's queue: a full one would push back on the ROUTER, which drops.
            sock.setsockopt(zmq.RCVHWM, REPLAY_RCV_HWM)
            sock.connect(target)
            await sock.send_multipart([b"", want.to_bytes(8, "big")])
            while await sock.poll(wait_ms):
                while True:
                    await budget.turn()
                    try:
                        frames = await sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    started = time.perf_counter()
                    if len(frames) != 4 or frames[2] == END_SEQ or len(frames[2]) != 8:
                        return want, True
                    seq = int.from_bytes(frames[2], "big")
                    if seq >= until:
                        return want, True
                    batch = decode(frames[3])
                    if batch is None:
                        self.counts["bad"] += 1
                        continue
                    events, rank = batch
                    stream.rank = rank
                    result = self.index.replayed(stream.url, seq, events, rank)
                    budget.charge(time.perf_counter() - started)
                    if result is Applied.GAP:
                        return want, False  # the ROUTER dropped the ones between
                    if result is Applied.APPLIED:
                        self.counts["replayed"] += 1
                        want = seq + 1
            return want, False  # stalled: the rest (or the end marker) was dropped
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.close(linger=0)
