"""Subscriptions to the engines' KV-cache event publishers (ZeroMQ), feeding a `KvIndex`.

Owns one SUB socket per engine and the recovery of lost batches. vLLM publishes each engine
step's events as `[topic, seq (8 bytes, big-endian), msgpack [ts, events, dp_rank]]`; batches
are applied in order. A jump in `seq` means batches were lost (the subscriber fell behind the
publisher's high-water mark, or joined late): they are asked for on the engine's replay socket
(a ROUTER answering `[b"", start seq]` with the buffered batches, then an end marker), found by
the convention that it listens on the PUB port + 1; when that does not fill the gap within
`replay_timeout_s`, the engine's entries are purged and the index starts again from the batch at
hand. An engine whose publisher goes away, or whose endpoint changes, is purged too.

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

from vfleet.router.kvindex import Applied, KvIndex

log = logging.getLogger("vfleet.router.kv")

END_SEQ: Final = b"\xff" * 8  # the replay socket's end marker
RCV_HWM: Final = 100_000  # batches queued per engine before ZeroMQ drops (then: a gap)
REPLAY_TIMEOUT_S: Final = 1.0


def replay_endpoint(endpoint: str) -> str | None:
    """The replay socket beside a tcp publisher (port + 1); None for other transports."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() and int(port) < 65535 else None


def decode(payload: bytes) -> list[Any] | None:
    """The events of one batch's payload; None when it is not a batch."""
    try:
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(batch, list) or len(batch) < 2 or not isinstance(batch[1], list):
        return None
    return batch[1]


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
        self.counts: Counter[str] = Counter()  # batches, gaps, replayed, purged, bad
        self._ctx = zmq.asyncio.Context()
        self._tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}

    def set_publishers(self, wanted: Mapping[str, str]) -> None:
        for url, (endpoint, task) in list(self._tasks.items()):
            if wanted.get(url) != endpoint:
                task.cancel()
                del self._tasks[url]
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
                self.index.purge(url)
                await asyncio.sleep(1.0)

    async def _follow(self, url: str, endpoint: str) -> None:
        sub = self._ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, RCV_HWM)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(endpoint)
            while True:
                frames = await sub.recv_multipart()
                await self._on_frames(url, endpoint, frames)
        finally:
            sub.close(linger=0)

    async def _on_frames(self, url: str, endpoint: str, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            self.counts["bad"] += 1
            return
        seq = int.from_bytes(frames[1], "big")
        events = decode(frames[2])
        if events is None:
            self.counts["bad"] += 1
            return
        self.counts["batches"] += 1
        index = self.index
        if index.seq(url) < 0 and seq > 0:
            # Joined late (or the router restarted): what the engine stored before is in its
            # replay buffer, when it keeps one.
            await self._replay(url, endpoint, 0, seq)
            if index.seq(url) < 0:
                index.accept(url, seq, events)
            else:
                self._apply(url, endpoint, seq, events)
            return
        result = index.apply(url, seq, events)
        if result is Applied.GAP:
            self.counts["gaps"] += 1
            await self._replay(url, endpoint, index.seq(url) + 1, seq)
            self._apply(url, endpoint, seq, events)
        elif result is Applied.RESTARTED:
            self.counts["purged"] += 1

    def _apply(self, url: str, endpoint: str, seq: int, events: list[Any]) -> None:
        """Apply the batch after a replay: in order if the replay filled the gap, else from a
        clean slate."""
        if self.index.apply(url, seq, events) is Applied.GAP:
            self.counts["purged"] += 1
            log.warning("kv events of %s: batches lost before %d; its entries are purged", url, seq)
            self.index.purge(url)
            self.index.accept(url, seq, events)

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
                events = decode(frames[3])
                if events is not None and self.index.replayed(url, seq, events) is Applied.APPLIED:
                    self.counts["replayed"] += 1
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.close(linger=0)
