"""Subscriptions to the engines' KV-cache event publishers (ZeroMQ), feeding a `KvIndex`.

Owns one SUB socket per engine and the recovery of lost batches. vLLM publishes each engine
step's events as `[topic, seq (8 bytes, big-endian), msgpack [ts, events, dp_rank]]`; batches
are applied in order. A jump in `seq` means batches were lost (the subscriber fell behind the
publisher's high-water mark, or joined late): they are asked for on the engine's replay socket
(a ROUTER answering `[b"", start seq]` with the buffered batches, then an end marker), found by
the convention of `router.kvwire` (the PUB port + 1, or `NAME.replay.sock` beside a local
socket); when that does not fill the gap within `replay_timeout_s`, the engine's entries are
purged and the index starts again from the batch at hand. A new subscription asks the replay
socket at once for everything the engine still buffers, so a router that starts (or restarts)
after the engines have cached prompts knows them before their next batch. An engine whose
publisher goes away, or whose endpoint changes, is purged too.

It lives outside `vfleet.router`, which may not import ZeroMQ (pyproject's `router-alone`
contract): `vfleet router` hands `KvFeed` to the router (`router.kvroute.Feed`) only when a `kv`
policy is configured, so a router without one never loads ZeroMQ, and no router module can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from vfleet.router.kvindex import Applied, KvIndex
from vfleet.router.kvwire import replay_endpoint

log = logging.getLogger("vfleet.router.kv")

END_SEQ: Final = b"\xff" * 8  # the replay socket's end marker
RCV_HWM: Final = 100_000  # batches queued per engine before ZeroMQ drops (then: a gap)
REPLAY_TIMEOUT_S: Final = 1.0
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


class KvFeed:
    """The subscriptions of one router process: `set_publishers` makes them match a map of
    engine URL -> publisher endpoint; `close` ends them all."""

    def __init__(
        self,
        index: KvIndex,
        replay_timeout_s: float = REPLAY_TIMEOUT_S,
        replay: Callable[[str], str | None] = replay_endpoint,
    ) -> None:
        self.index = index
        self.replay_timeout_s = replay_timeout_s
        self.replay = replay  # publisher endpoint -> its replay socket (None: it has none)
        self.counts: Counter[str] = Counter()  # batches, gaps, replayed, purged, ...
        self._ctx = zmq.asyncio.Context()
        self._tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}
        # url -> (last seq its catch-up replay applied, last live seq dropped since): live
        # batches queued while the replay ran repeat what it applied.
        self._caught_up: dict[str, tuple[int, int]] = {}
        # url -> the data-parallel rank its publisher's batches carry (vLLM runs one publisher
        # per rank, each numbering its own batches): the index keeps ranks apart.
        self._ranks: dict[str, int] = {}

    def set_publishers(self, wanted: Mapping[str, str]) -> None:
        for url, (endpoint, task) in list(self._tasks.items()):
            if wanted.get(url) != endpoint:
                task.cancel()
                del self._tasks[url]
                self._caught_up.pop(url, None)
                self._ranks.pop(url, None)
                self.index.purge(url)
        self.index.retain(wanted.keys())
        loop = asyncio.get_running_loop()
        for url, endpoint in wanted.items():
            if url not in self._tasks:
                task = loop.create_task(self._guarded(url, endpoint))
                self._tasks[url] = (endpoint, task)

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ctx.destroy(linger=0)

    async def _guarded(self, url: str, endpoint: str) -> None:
        """Follow one engine; a failure is logged and the engine purged, then followed anew."""
        while True:
            try:
                await self._follow(url, endpoint)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kv events of %s (%s): subscription failed", url, endpoint)
                self._caught_up.pop(url, None)
                self._ranks.pop(url, None)
                self.index.purge(url)
                await asyncio.sleep(1.0)

    async def _follow(self, url: str, endpoint: str) -> None:
        sub = self._ctx.socket(zmq.SUB)
        # The connection's ups and downs: a publisher that goes away (the engine restarted, or
        # the network dropped) may come back numbering from 0, and only a purge then a fresh
        # catch-up keeps the index true; the sequence numbers alone cannot tell.
        mon = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, RCV_HWM)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(endpoint)
            poller = zmq.asyncio.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(mon, zmq.POLLIN)
            while True:
                ready = dict(await poller.poll())
                if mon in ready:
                    event = parse_monitor_message(await mon.recv_multipart())
                    await self._on_connection(url, endpoint, int(event["event"]))
                if sub in ready:
                    await self._on_frames(url, endpoint, await sub.recv_multipart())
        finally:
            sub.disable_monitor()
            mon.close(linger=0)
            sub.close(linger=0)

    async def _on_connection(self, url: str, endpoint: str, event: int) -> None:
        if event == zmq.EVENT_DISCONNECTED:
            self.counts["disconnects"] += 1
            self._caught_up.pop(url, None)
            self._ranks.pop(url, None)
            self.index.purge(url)
        elif event == zmq.EVENT_CONNECTED and self._seq(url) < 0:
            # What the engine published before this subscription joined is in its replay
            # buffer: without asking now, it would be noticed only at the engine's next batch
            # (a router that restarts would not know an idle engine's cache).
            await self._replay(url, endpoint, 0, NO_END)
            if self._seq(url) >= 0:
                self._caught_up[url] = (self._seq(url), -1)

    def _seq(self, url: str) -> int:
        return self.index.seq(url, self._ranks.get(url, 0))

    async def _on_frames(self, url: str, endpoint: str, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            self.counts["bad"] += 1
            return
        seq = int.from_bytes(frames[1], "big")
        batch = decode(frames[2])
        if batch is None:
            self.counts["bad"] += 1
            return
        events, rank = batch
        self._ranks[url] = rank
        self.counts["batches"] += 1
        if self._repeats_catch_up(url, seq):
            self.counts["duplicates"] += 1
            return
        index = self.index
        if index.seq(url, rank) < 0 and seq > 0:
            # Joined late (or the router restarted): what the engine stored before is in its
            # replay buffer, when it keeps one.
            await self._replay(url, endpoint, 0, seq)
            if index.seq(url, rank) < 0:
                index.accept(url, seq, events, rank)
            else:
                self._apply(url, seq, events, rank)
            return
        result = index.apply(url, seq, events, rank)
        if result is Applied.GAP:
            self.counts["gaps"] += 1
            await self._replay(url, endpoint, index.seq(url, rank) + 1, seq)
            self._apply(url, seq, events, rank)
        elif result is Applied.RESTARTED:
            # The engine numbers from 0 again: its batches before this one are in its replay
            # buffer, when it keeps one (the subscription itself stayed connected).
            self.counts["purged"] += 1
            if seq > 0 and self.replay(endpoint) is not None:
                index.purge(url, rank)
                await self._replay(url, endpoint, 0, seq)
                self._apply(url, seq, events, rank)

    def _repeats_catch_up(self, url: str, seq: int) -> bool:
        """Whether live batch `seq` is one the catch-up replay already applied. They arrive in
        order; one that is not (a lower seq than the last dropped) means the engine restarted,
        and it goes to the index, which sees the restart."""
        caught = self._caught_up.get(url)
        if caught is None:
            return False
        through, dropped = caught
        if dropped < seq <= through:
            self._caught_up[url] = (through, seq)
            return True
        del self._caught_up[url]
        return False

    def _apply(self, url: str, seq: int, events: list[Any], rank: int) -> None:
        """Apply the batch after a replay: in order if the replay filled the gap, else from a
        clean slate."""
        if self.index.apply(url, seq, events, rank) is Applied.GAP:
            self.counts["purged"] += 1
            log.warning("kv events of %s: batches lost before %d; its entries are purged", url, seq)
            self.index.purge(url, rank)
            self.index.accept(url, seq, events, rank)

    async def _replay(self, url: str, endpoint: str, start: int, until: int) -> None:
        """Apply the batches start..until-1 from the engine's replay socket, as far as it has
        them, within replay_timeout_s."""
        target = self.replay(endpoint)
        if target is None:
            return
        sock = self._ctx.socket(zmq.DEALER)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.replay_timeout_s
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(target)
            await sock.send_multipart([b"", start.to_bytes(8, "big")])
            while (left := deadline - loop.time()) > 0:
                try:
                    frames = await asyncio.wait_for(sock.recv_multipart(), left)
                except TimeoutError:
                    return
                if len(frames) != 4 or frames[2] == END_SEQ or len(frames[2]) != 8:
                    return
                seq = int.from_bytes(frames[2], "big")
                if seq >= until:
                    return
                batch = decode(frames[3])
                if batch is None:
                    continue
                events, rank = batch
                if self.index.replayed(url, seq, events, rank) is Applied.APPLIED:
                    self.counts["replayed"] += 1
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.close(linger=0)
