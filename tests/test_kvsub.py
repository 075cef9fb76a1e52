"""The KV-event subscriber (vfleet.kvsub) against the simulator's real ZeroMQ publisher on
127.0.0.1: it learns blocks, joins late through the replay socket, fills a gap by replay, purges
an engine when a gap cannot be filled, when the engine leaves and when its publisher changes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator

import pytest

from vfleet.kvsub import KvFeed, decode
from vfleet.router.kvindex import KvIndex
from vfleet.sim.kvcache import BlockStored
from vfleet.sim.kvevents import KVEventsConfig, ZmqPublisher, encode_batch

URL = "http://127.0.0.1:1"  # the engine's URL as the router lists it (never dialled here)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def publisher() -> Iterator[tuple[ZmqPublisher, str]]:
    """A publisher bound on loopback, with its replay socket; (publisher, replay endpoint)."""
    replay = f"tcp://127.0.0.1:{free_port()}"
    cfg = KVEventsConfig(
        enable_kv_cache_events=True, endpoint="tcp://127.0.0.1:*", replay_endpoint=replay
    )
    pub = ZmqPublisher(cfg)
    yield pub, replay
    pub.close()


def block(i: int) -> BlockStored:
    """The i-th block of one chain of 4-token blocks (engine hash i + 1)."""
    return BlockStored((i + 1,), i or None, tuple(range(4 * i, 4 * i + 4)), 4, None)


def lose(pub: ZmqPublisher, i: int) -> None:
    """Publish block i into the replay buffer only: a batch lost on the way to subscribers."""
    seq = pub._seq
    pub._seq += 1
    pub._buffer.append((seq, encode_batch(0.0, [block(i)])))


def run(work: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(work(), 20)

    asyncio.run(bounded())


async def until(check: Callable[[], bool], pub: ZmqPublisher | None = None) -> None:
    """Wait (bounded) until `check()`; meanwhile keep `pub` publishing empty batches, since
    a SUB socket that is still connecting misses what is sent before it is up."""
    for _ in range(400):
        if check():
            return
        if pub is not None:
            pub.publish(0.0, [])
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_it_learns_blocks_and_joins_late_through_the_replay_socket(
    publisher: tuple[ZmqPublisher, str],
) -> None:
    pub, replay = publisher

    async def work() -> None:
        for i in range(3):  # before anyone listens
            pub.publish(0.0, [block(i)])
        index = KvIndex()
        feed = KvFeed(index, replay=lambda _: replay)
        feed.set_publishers({URL: pub.endpoint})
        await until(lambda: index.seq(URL) >= 0, pub)
        assert index.blocks_of(URL) == 3  # batches 0-2 came from the replay socket
        assert feed.counts["replayed"] >= 3
        pub.publish(0.0, [block(3)])
        await until(lambda: index.blocks_of(URL) == 4)
        await feed.close()

    run(work)


def test_a_gap_is_filled_by_replay(publisher: tuple[ZmqPublisher, str]) -> None:
    pub, replay = publisher

    async def work() -> None:
        index = KvIndex()
        feed = KvFeed(index, replay=lambda _: replay)
        feed.set_publishers({URL: pub.endpoint})
        await until(lambda: index.seq(URL) >= 0, pub)
        pub.publish(0.0, [block(0)])
        lose(pub, 1)
        pub.publish(0.0, [block(2)])
        await until(lambda: index.blocks_of(URL) == 3)
        assert feed.counts["gaps"] == 1 and feed.counts["purged"] == 0
        await feed.close()

    run(work)


def test_a_gap_without_replay_purges_the_engine(publisher: tuple[ZmqPublisher, str]) -> None:
    pub, _ = publisher

    async def work() -> None:
        index = KvIndex()
        feed = KvFeed(index, replay=lambda _: None)
        feed.set_publishers({URL: pub.endpoint})
        await until(lambda: index.seq(URL) >= 0, pub)
        pub.publish(0.0, [block(0), block(1)])
        await until(lambda: index.blocks_of(URL) == 2)
        lose(pub, 2)
        pub.publish(0.0, [BlockStored((99,), None, (7, 7, 7, 7), 4, None)])
        await until(lambda: feed.counts["purged"] == 1)
        assert index.blocks_of(URL) == 1  # only what came after the gap
        await feed.close()

    run(work)


def test_an_engine_that_leaves_or_moves_is_purged(publisher: tuple[ZmqPublisher, str]) -> None:
    pub, _ = publisher
    other = ZmqPublisher(KVEventsConfig(enable_kv_cache_events=True, endpoint="tcp://127.0.0.1:*"))

    async def work() -> None:
        index = KvIndex()
        feed = KvFeed(index, replay=lambda _: None)
        feed.set_publishers({URL: pub.endpoint})
        await until(lambda: index.seq(URL) >= 0, pub)
        pub.publish(0.0, [block(0)])
        await until(lambda: index.blocks_of(URL) == 1)
        # Same URL, another publisher (the engine was replaced): nothing of the old one stays.
        feed.set_publishers({URL: other.endpoint})
        assert index.engines() == []
        await until(lambda: index.seq(URL) >= 0, other)
        other.publish(0.0, [block(0), block(1)])
        await until(lambda: index.blocks_of(URL) == 2)
        feed.set_publishers({})
        assert index.engines() == [] and index.size() == 0
        await feed.close()

    try:
        run(work)
    finally:
        other.close()


def test_payloads_that_are_not_batches_are_refused() -> None:
    assert decode(b"\xc1") is None
    assert decode(encode_batch(0.0, [block(0)])) is not None
    assert decode(b"\x93\x01\x02\x03") is None  # [1, 2, 3]: no list of events
