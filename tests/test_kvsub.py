"""The KV-event subscriber (vfleet.kvsub) against the simulator's real ZeroMQ publisher on
127.0.0.1: it learns blocks, joins late through the replay socket (at once, not at the next
batch; beside tcp and ipc publishers), fills a gap by replay, purges an engine when a gap cannot
be filled, when the engine leaves and when its publisher changes; it catches up on a deep replay
buffer that the publisher sends lossily under a live stream, without purging and without taking
the event loop, and follows every data-parallel rank of an engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from httpclient import free_port
from vfleet.kvsub import KvFeed, decode
from vfleet.router.kvindex import Applied, KvIndex, chain_hashes
from vfleet.router.kvwire import Publisher, replay_endpoint
from vfleet.sim.kvcache import BlockRemoved, BlockStored
from vfleet.sim.kvevents import KVEventsConfig, ZmqPublisher, encode_batch

URL = "http://127.0.0.1:1"  # the engine's URL as the router lists it (never dialled here)


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


def test_a_new_subscription_knows_what_an_idle_engine_published(
    publisher: tuple[ZmqPublisher, str],
) -> None:
    """No batch follows the subscription: what the engine holds comes from its replay socket at
    once (a router restarted beside idle engines knows their caches)."""
    pub, replay = publisher

    async def work() -> None:
        for i in range(3):
            pub.publish(0.0, [block(i)])
        index = KvIndex()
        feed = KvFeed(index, replay=lambda _: replay)
        feed.set_publishers({URL: pub.endpoint})
        await until(lambda: index.blocks_of(URL) == 3)  # nothing published meanwhile
        assert index.seq(URL) == 2 and feed.counts["replayed"] == 3
        await until(lambda: index.blocks_of(URL) == 4, step(pub, 3))
        assert feed.counts["purged"] == 0
        await feed.close()

    run(work)


def test_a_local_publisher_replays_beside_its_socket(tmp_path: Path) -> None:
    """`vfleet up`'s engines publish on ipc:// sockets in the run directory, their replay socket
    where `kvwire` says: the feed finds it with its default rule."""
    endpoint = f"ipc://{tmp_path}/chat-0.sock"
    replay = replay_endpoint(endpoint)
    assert replay == f"ipc://{tmp_path}/chat-0.replay.sock"
    pub = ZmqPublisher(
        KVEventsConfig(enable_kv_cache_events=True, endpoint=endpoint, replay_endpoint=replay)
    )

    async def work() -> None:
        pub.publish(0.0, [block(0), block(1)])
        index = KvIndex()
        feed = KvFeed(index)
        feed.set_publishers({URL: endpoint})
        await until(lambda: index.blocks_of(URL) == 2)
        await feed.close()

    try:
        run(work)
    finally:
        pub.close()


def test_a_restarted_publisher_is_learned_afresh(tmp_path: Path) -> None:
    """The engine behind a local socket restarts and numbers its batches from 0 again: the
    subscription sees the connection drop, forgets what the old one held, and catches up on the
    new one (its sequence numbers alone could pass for the old engine's next batches)."""
    endpoint = f"ipc://{tmp_path}/chat-0.sock"
    cfg = KVEventsConfig(
        enable_kv_cache_events=True, endpoint=endpoint, replay_endpoint=replay_endpoint(endpoint)
    )
    old = ZmqPublisher(cfg)
    new: list[ZmqPublisher] = []

    async def work() -> None:
        old.publish(0.0, [block(i) for i in range(5)])  # seq 0
        index = KvIndex()
        feed = KvFeed(index)
        feed.set_publishers({URL: endpoint})
        await until(lambda: index.blocks_of(URL) == 5)
        old.close()
        new.append(ZmqPublisher(cfg))
        new[0].publish(0.0, [block(0)])  # seq 0 again, then 1
        new[0].publish(0.0, [block(1)])
        await until(lambda: index.blocks_of(URL) == 2 and index.seq(URL) >= 1, new[0])
        assert feed.counts["disconnects"] >= 1
        await feed.close()

    try:
        run(work)
    finally:
        old.close()
        for pub in new:
            pub.close()


def held_replay(pub: ZmqPublisher, asked: threading.Event, go: threading.Event) -> str:
    """A replay socket that, asked once, sets `asked` and answers when `go` is set, with what
    `pub` buffers then: batches published in between also reach the (joined) SUB socket."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        try:
            if not sock.poll(10_000):
                return
            ident, _, start = sock.recv_multipart()
            asked.set()
            go.wait(10)
            first = int.from_bytes(start, "big")
            for seq, payload in list(pub._buffer):
                if seq >= first:
                    sock.send_multipart([ident, b"", b"", seq.to_bytes(8, "big"), payload])
            sock.send_multipart([ident, b"", b"", b"\xff" * 8, b""])
        finally:
            sock.close(linger=0)

    threading.Thread(target=serve, daemon=True).start()
    return f"tcp://127.0.0.1:{port}"


def test_batches_published_while_it_catches_up_count_once(
    publisher: tuple[ZmqPublisher, str],
) -> None:
    """Batches sent while the catch-up replay runs arrive twice (replayed, then live from the
    SUB socket's queue): the second copy is dropped, not taken for a restarted engine."""
    pub, _ = publisher
    asked, go = threading.Event(), threading.Event()
    replay = held_replay(pub, asked, go)

    async def work() -> None:
        index = KvIndex()
        feed = KvFeed(index, replay=lambda _: replay)
        n = 0
        pub.publish(0.0, [block(n)])
        feed.set_publishers({URL: pub.endpoint})
        for _ in range(500):  # until the subscription connects and asks for the replay...
            if asked.is_set():
                break
            n += 1
            pub.publish(0.0, [block(n)])
            await asyncio.sleep(0.02)
        for _ in range(30):  # ...then more, which the joined SUB socket queues meanwhile
            n += 1
            pub.publish(0.0, [block(n)])
            await asyncio.sleep(0.02)
        go.set()
        await until(lambda: index.blocks_of(URL) == n + 2, step(pub, n + 1))
        assert feed.counts["duplicates"] > 0  # the SUB queue did repeat the replay
        assert feed.counts["purged"] == 0
        await feed.close()

    run(work)


def step(pub: ZmqPublisher, i: int) -> ZmqPublisher:
    """`pub` after publishing block i (for `until`, which then keeps it sending empty batches
    so that a subscriber still joining sees the next one)."""
    pub.publish(0.0, [block(i)])
    return pub


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


def decode_rank(rank: int) -> tuple[list[Any], int] | None:
    got = decode(encode_batch(0.0, [block(0)], dp_rank=rank))
    assert got is not None and got[1] == rank
    return got


def test_a_data_parallel_rank_is_kept_apart() -> None:
    """vLLM runs one publisher per data-parallel rank, each numbering its own batches and
    naming its rank: the index keeps that rank's cache, not rank 0's."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sent = iter(range(1000))

    def send(events: list[BlockStored]) -> None:
        seq = next(sent)
        pub.send_multipart([b"", seq.to_bytes(8, "big"), encode_batch(0.0, events, dp_rank=1)])

    async def work() -> None:
        index = KvIndex()
        feed = KvFeed(index, replay=lambda _: None)
        feed.set_publishers({URL: f"tcp://127.0.0.1:{port}"})
        for _ in range(400):  # until the subscription has joined
            if index.seq(URL, 1) >= 0:
                break
            send([])
            await asyncio.sleep(0.02)
        send([block(0), block(1)])
        await until(lambda: index.blocks_of(URL) == 2)
        assert index.seq(URL, 1) >= 0 and index.seq(URL, 0) == -1
        await feed.close()

    try:
        run(work)
    finally:
        pub.close(linger=0)


def test_payloads_that_are_not_batches_are_refused() -> None:
    assert decode(b"\xc1") is None
    assert decode(encode_batch(0.0, [block(0)])) is not None
    assert decode(encode_batch(0.0, [block(0)], dp_rank=3)) == decode_rank(3)
    # vLLM leaves dp_rank None without data parallelism: rank 0
    none_rank = msgpack.packb([0.0, [], None])
    assert decode(none_rank) == ([], 0)
    assert decode(b"\x93\x01\x02\x03") is None  # [1, 2, 3]: no list of events


def chain_batch(i: int, blocks: int = 64) -> list[BlockStored | BlockRemoved]:
    """Batch i of a busy engine: a new chain of `blocks` 16-token blocks stored, and the chain
    batch i - 50 stored evicted (so the index's state depends on every batch, in order)."""
    first = i * blocks + 1
    hashes = tuple(range(first, first + blocks))
    tokens = tuple((i * 7919 + t) % 50_000 for t in range(16 * blocks))
    out: list[BlockStored | BlockRemoved] = [BlockStored(hashes, None, tokens, 16, None)]
    if i >= 50:
        old = (i - 50) * blocks + 1
        out.append(BlockRemoved(tuple(range(old, old + blocks))))
    return out


def test_a_late_subscriber_catches_up_on_a_deep_buffer_under_a_live_stream(
    tmp_path: Path,
) -> None:
    """A router starts beside an engine that has buffered thousands of batches and keeps
    publishing. The engine answers the catch-up with its whole buffer in one burst, and its
    ROUTER drops what overflows its send queue (the end marker too), as vLLM's does: the
    subscriber asks again from the first batch missing instead of purging, and its index ends
    equal to one built from every batch in order."""
    endpoint = f"ipc://{tmp_path}/busy.sock"
    pub = ZmqPublisher(
        KVEventsConfig(
            enable_kv_cache_events=True,
            endpoint=endpoint,
            replay_endpoint=replay_endpoint(endpoint),
        )
    )
    for i in range(6000):  # published before the router starts
        seq = pub._seq
        pub._seq += 1
        pub._buffer.append((seq, encode_batch(0.0, list(chain_batch(i)))))
    stop = threading.Event()

    def live() -> None:  # the engine keeps serving meanwhile
        i = pub._seq
        while not stop.is_set() and i < 6600:
            pub.publish(0.0, list(chain_batch(i)))
            i += 1
            stop.wait(0.005)

    async def work() -> None:
        index = KvIndex()
        feed = KvFeed(index, replay_timeout_s=0.5)
        seen: list[int] = []  # the index's place, as another task of the loop saw it

        async def other_task() -> None:
            while True:
                seen.append(index.seq(URL))
                await asyncio.sleep(0)

        thread = threading.Thread(target=live)
        thread.start()
        watcher = asyncio.create_task(other_task())
        try:
            feed.set_publishers({URL: endpoint})
            await until(lambda: index.seq(URL) >= 6000)
        finally:
            stop.set()
            thread.join(5)
            watcher.cancel()
        # The catch-up shared the loop: other tasks ran while it was half-way.
        assert any(0 <= seq < 5000 for seq in seen)
        last = pub._seq - 1
        await until(lambda: index.seq(URL) == last, None)
        assert feed.counts["purged"] == 0
        assert feed.counts["replayed"] >= 6000
        reference = KvIndex()
        for seq, payload in list(pub._buffer):
            batch = decode(payload)
            assert batch is not None
            assert reference.apply(URL, seq, batch[0]) is Applied.APPLIED
        assert index.seq(URL) == reference.seq(URL) == last
        assert index.blocks_of(URL) == reference.blocks_of(URL) == 50 * 64
        assert index.stats.stored == reference.stats.stored
        for i in range(last + 1):
            stored = chain_batch(i)[0]
            assert isinstance(stored, BlockStored)
            tail = chain_hashes(list(stored.token_ids), 16)[-1]
            assert index.holders(tail) == reference.holders(tail)
        await feed.close()

    try:
        run(work)
    finally:
        stop.set()
        pub.close()


def dp_publishers(ranks: int) -> tuple[int, list[ZmqPublisher]]:
    """A data-parallel engine's publishers on loopback, configured as vLLM's are (one endpoint,
    one replay endpoint; rank r binds both r ports up): (rank 0's port, publishers)."""
    error: zmq.ZMQError | None = None
    for _ in range(50):  # until ports P..P+ranks-1 and their replay ports are all free
        base = free_port()
        endpoint = f"tcp://*:{base}"  # vLLM binds only a wildcard host's endpoint
        cfg = KVEventsConfig(
            enable_kv_cache_events=True,
            endpoint=endpoint,
            replay_endpoint=replay_endpoint(endpoint),
        )
        pubs: list[ZmqPublisher] = []
        try:
            for rank in range(ranks):
                pubs.append(ZmqPublisher(cfg, dp_rank=rank))
        except zmq.ZMQError as exc:
            error = exc
            for pub in pubs:
                pub.close()
            continue
        return base, pubs
    raise AssertionError(f"no free ports: {error}")


def test_every_data_parallel_rank_is_followed() -> None:
    """Told of rank 0's endpoint and 2 ranks, the feed follows both ranks' publishers and
    catches up from both ranks' replay sockets, each rank's cache kept apart."""
    base, (rank0, rank1) = dp_publishers(2)

    async def work() -> None:
        rank0.publish(0.0, [block(0), block(1)])  # before the router starts
        rank1.publish(0.0, [block(0)])
        index = KvIndex()
        feed = KvFeed(index)
        feed.set_publishers({URL: Publisher(f"tcp://127.0.0.1:{base}", ranks=2)})
        await until(lambda: index.ranks(URL) == [0, 1] and index.blocks_of(URL) == 3)
        assert feed.counts["replayed"] == 2
        await until(lambda: index.seq(URL, 1) >= 1, step(rank1, 1))  # live, on rank 1
        assert index.blocks_of(URL) == 4 and index.seq(URL, 0) == 0
        assert feed.counts["purged"] == 0
        # One rank fewer: the engine is followed afresh, rank 1 forgotten.
        feed.set_publishers({URL: Publisher(f"tcp://127.0.0.1:{base}")})
        await until(lambda: index.ranks(URL) == [0] and index.blocks_of(URL) == 2, rank0)
        await feed.close()

    try:
        run(work)
    finally:
        rank0.close()
        rank1.close()
