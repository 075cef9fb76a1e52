"""BlockPool: allocation, reference counts, prefix cache, LRU eviction and KV-cache events."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.sim.kvcache import (
    AllBlocksCleared,
    Block,
    BlockPool,
    BlockRemoved,
    BlockStored,
    KVEvent,
    block_hash,
)


def cached_blocks(pool: BlockPool, n: int, start: int = 0) -> tuple[list[Block], list[int]]:
    """Allocate `n` blocks and cache them as a chain of hashes; events drained."""
    blocks = pool.allocate(n)
    assert blocks is not None
    hashes: list[int] = []
    parent = None
    for i, blk in enumerate(blocks):
        tokens = [start + i] * pool.block_size
        h = block_hash(parent, tokens)
        pool.cache(blk, h, parent, tokens, None)
        hashes.append(h)
        parent = h
    pool.drain_events()
    return blocks, hashes


# -- block_hash ---------------------------------------------------------------------------------


def test_block_hash_is_deterministic_and_64_bit() -> None:
    h = block_hash(None, [1, 2, 3, 4])
    assert h == block_hash(None, [1, 2, 3, 4])
    assert 0 <= h < 2**64


def test_block_hash_depends_on_parent_tokens_and_lora() -> None:
    base = block_hash(None, [1, 2, 3, 4])
    assert block_hash(None, [1, 2, 3, 5]) != base
    assert block_hash(None, [4, 3, 2, 1]) != base
    assert block_hash(base, [1, 2, 3, 4]) != base
    assert block_hash(0, [1, 2, 3, 4]) != base
    assert block_hash(None, [1, 2, 3, 4], "adapter") != base
    assert block_hash(None, [1, 2, 3, 4], "adapter") != block_hash(None, [1, 2, 3, 4], "other")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8),
)
def test_block_hash_chain_equal_iff_tokens_equal(a: list[int], b: list[int]) -> None:
    ha = block_hash(block_hash(None, [7]), a)
    hb = block_hash(block_hash(None, [7]), b)
    assert (ha == hb) == (a == b)
    assert 0 <= ha < 2**64


# -- basic accounting ---------------------------------------------------------------------------


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 16), (4, 0), (-1, 1)])
def test_pool_rejects_non_positive_sizes(num_blocks: int, block_size: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        BlockPool(num_blocks, block_size)


def test_new_pool_is_all_free() -> None:
    pool = BlockPool(8, 4)
    assert pool.num_free == 8
    assert pool.num_cached == 0
    assert pool.usage == 0.0
    assert [b.block_id for b in pool.blocks] == list(range(8))
    assert all(b.ref_cnt == 0 and b.hash is None for b in pool.blocks)


def test_allocate_and_release_track_usage() -> None:
    pool = BlockPool(4, 2)
    got = pool.allocate(3)
    assert got is not None
    assert [b.block_id for b in got] == [0, 1, 2]
    assert all(b.ref_cnt == 1 for b in got)
    assert pool.num_free == 1
    assert pool.usage == pytest.approx(0.75)
    pool.release(got[:1])
    assert pool.num_free == 2
    assert pool.usage == pytest.approx(0.5)
    pool.release(got[1:])
    assert pool.num_free == 4
    assert pool.usage == 0.0
    assert all(b.ref_cnt == 0 for b in pool.blocks)


def test_allocate_too_many_fails_without_side_effects() -> None:
    pool = BlockPool(4, 2)
    held = pool.allocate(3)
    assert held is not None
    assert pool.allocate(2) is None
    assert pool.num_free == 1
    assert pool.allocate(1) is not None
    assert pool.num_free == 0
    assert pool.usage == 1.0
    assert pool.allocate(1) is None


def test_allocate_zero_blocks() -> None:
    pool = BlockPool(2, 2)
    assert pool.allocate(0) == []
    assert pool.num_free == 2


# -- caching and lookup -------------------------------------------------------------------------


def test_cache_emits_block_stored() -> None:
    pool = BlockPool(4, 2)
    blocks = pool.allocate(2)
    assert blocks is not None
    h0 = block_hash(None, [1, 2])
    h1 = block_hash(h0, [3, 4], "lora")
    pool.cache(blocks[0], h0, None, [1, 2], None)
    pool.cache(blocks[1], h1, h0, [3, 4], "lora")
    assert pool.drain_events() == [
        BlockStored((h0,), None, (1, 2), 2, None),
        BlockStored((h1,), h0, (3, 4), 2, "lora"),
    ]
    assert pool.drain_events() == []
    assert pool.num_cached == 2
    assert pool.is_cached(h0)
    assert pool.is_cached(h1)
    assert blocks[0].hash == h0


def test_duplicate_hash_is_not_cached_twice() -> None:
    pool = BlockPool(4, 2)
    a, b = pool.allocate(2) or []
    h = block_hash(None, [1, 2])
    pool.cache(a, h, None, [1, 2], None)
    pool.cache(b, h, None, [1, 2], None)
    assert len(pool.drain_events()) == 1
    assert b.hash is None
    assert pool.num_cached == 1
    assert pool.lookup([h]) == [a]
    # Freeing the uncached duplicate must not disturb the cached copy.
    pool.release([b])
    assert pool.lookup([h]) == [a]


def test_caching_a_block_twice_is_a_no_op() -> None:
    pool = BlockPool(2, 2)
    (a,) = pool.allocate(1) or []
    h, other = block_hash(None, [1, 2]), block_hash(None, [3, 4])
    pool.cache(a, h, None, [1, 2], None)
    pool.cache(a, other, None, [3, 4], None)
    assert a.hash == h
    assert not pool.is_cached(other)
    assert len(pool.drain_events()) == 1


def test_lookup_returns_longest_cached_prefix() -> None:
    pool = BlockPool(8, 2)
    blocks, hashes = cached_blocks(pool, 3)
    assert pool.lookup(hashes) == blocks
    assert pool.lookup(hashes[:2]) == blocks[:2]
    assert pool.lookup([*hashes[:2], 12345, hashes[2]]) == blocks[:2]
    assert pool.lookup([12345, *hashes]) == []
    assert pool.lookup([]) == []


def test_disabled_prefix_caching_caches_nothing() -> None:
    pool = BlockPool(4, 2, enable_prefix_caching=False)
    (a,) = pool.allocate(1) or []
    h = block_hash(None, [1, 2])
    pool.cache(a, h, None, [1, 2], None)
    assert a.hash is None
    assert pool.num_cached == 0
    assert pool.lookup([h]) == []
    assert pool.drain_events() == []


def test_cached_blocks_survive_release_and_are_reacquired() -> None:
    pool = BlockPool(4, 2)
    blocks, hashes = cached_blocks(pool, 2)
    pool.release(blocks)
    assert pool.num_free == 4
    assert pool.num_cached == 2
    hits = pool.lookup(hashes)
    assert hits == blocks
    pool.acquire(hits)
    assert pool.num_free == 2
    assert [b.ref_cnt for b in hits] == [1, 1]
    # A second user of the same prefix shares the blocks.
    pool.acquire(hits)
    assert [b.ref_cnt for b in hits] == [2, 2]
    assert pool.num_free == 2
    pool.release(hits)
    assert pool.num_free == 2
    pool.release(hits)
    assert pool.num_free == 4
    assert pool.drain_events() == []


# -- LRU eviction -------------------------------------------------------------------------------


def test_eviction_is_least_recently_freed_first() -> None:
    pool = BlockPool(3, 2)
    blocks, hashes = cached_blocks(pool, 3)
    for i in (1, 0, 2):
        pool.release([blocks[i]])
    got = pool.allocate(1)
    assert got == [blocks[1]]
    assert pool.drain_events() == [BlockRemoved((hashes[1],))]
    assert not pool.is_cached(hashes[1])
    assert blocks[1].hash is None
    assert pool.is_cached(hashes[0])
    assert pool.allocate(2) == [blocks[0], blocks[2]]
    assert pool.drain_events() == [BlockRemoved((hashes[0],)), BlockRemoved((hashes[2],))]
    assert pool.num_cached == 0


def test_never_used_blocks_are_taken_before_cached_ones() -> None:
    pool = BlockPool(4, 2)
    blocks, _ = cached_blocks(pool, 2)
    pool.release(blocks)
    fresh = pool.allocate(2)
    assert fresh is not None
    assert {b.block_id for b in fresh} == {2, 3}
    assert pool.drain_events() == []
    assert pool.num_cached == 2


def test_release_frees_last_blocks_first_so_they_are_evicted_first() -> None:
    pool = BlockPool(3, 2)
    blocks, hashes = cached_blocks(pool, 3)
    pool.release(blocks)
    got = pool.allocate(1)
    assert got == [blocks[2]]
    assert pool.drain_events() == [BlockRemoved((hashes[2],))]
    # The shared-looking prefix is still there.
    assert pool.lookup(hashes) == blocks[:2]


def test_reuse_moves_block_to_the_lru_tail() -> None:
    pool = BlockPool(2, 2)
    blocks, hashes = cached_blocks(pool, 2)
    pool.release([blocks[0]])
    pool.release([blocks[1]])
    # blocks[0] is now the LRU victim; touching it makes blocks[1] the victim instead.
    pool.acquire([blocks[0]])
    pool.release([blocks[0]])
    assert pool.allocate(1) == [blocks[1]]
    assert pool.drain_events() == [BlockRemoved((hashes[1],))]


def test_acquired_blocks_are_not_evicted() -> None:
    pool = BlockPool(2, 2)
    blocks, hashes = cached_blocks(pool, 2)
    pool.release(blocks)
    pool.acquire([blocks[1]])
    assert pool.allocate(2) is None
    assert pool.allocate(1) == [blocks[0]]
    assert pool.is_cached(hashes[1])
    assert pool.drain_events() == [BlockRemoved((hashes[0],))]


# -- reset --------------------------------------------------------------------------------------


def test_reset_refuses_while_blocks_are_in_use() -> None:
    pool = BlockPool(4, 2)
    blocks, hashes = cached_blocks(pool, 2)
    pool.release(blocks[1:])
    assert pool.reset() is False
    assert pool.num_cached == 2
    assert pool.lookup(hashes) == blocks
    assert pool.drain_events() == []


def test_reset_clears_the_cache_and_emits_all_blocks_cleared() -> None:
    pool = BlockPool(4, 2)
    blocks, hashes = cached_blocks(pool, 2)
    pool.release(blocks)
    assert pool.reset() is True
    assert pool.drain_events() == [AllBlocksCleared()]
    assert pool.num_cached == 0
    assert pool.lookup(hashes) == []
    assert all(b.hash is None for b in pool.blocks)
    assert pool.num_free == 4
    # Blocks that were cached are now reused without BlockRemoved events.
    assert pool.allocate(4) is not None
    assert pool.drain_events() == []


def test_reset_of_an_idle_empty_pool_succeeds() -> None:
    pool = BlockPool(2, 2)
    assert pool.reset() is True
    assert pool.num_free == 2


# -- model-based property -----------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 10)),
        st.tuples(st.just("cache"), st.integers(0, 10), st.integers(0, 6)),
        st.tuples(st.just("hit"), st.integers(0, 6)),
        st.tuples(st.just("reset"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), ops)
def test_pool_matches_a_reference_model(
    num_blocks: int, script: list[tuple[int | str, ...]]
) -> None:
    """Random allocate/cache/hit/release/reset against an LRU model and the event stream."""
    pool = BlockPool(num_blocks, 2)
    users: list[list[Block]] = []  # each entry: the blocks one holder took a reference on
    free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
    stored: dict[int, int] = {}  # hash -> block id, rebuilt from events only
    key = {i: block_hash(None, [i, i]) for i in range(7)}

    def apply(events: list[KVEvent]) -> None:
        for ev in events:
            if isinstance(ev, BlockStored):
                (h,) = ev.block_hashes
                assert h not in stored
                stored[h] = -1
            elif isinstance(ev, BlockRemoved):
                (h,) = ev.block_hashes
                del stored[h]
            else:
                stored.clear()

    for op in script:
        if op[0] == "alloc":
            n = int(op[1])
            got = pool.allocate(n)
            if n > len(free):
                assert got is None
            else:
                assert got is not None
                expect = [free.popitem(last=False)[0] for _ in range(n)]
                assert [b.block_id for b in got] == expect
                users.append(got)
        elif op[0] == "release" and users:
            held = users.pop(int(op[1]) % len(users))
            pool.release(held)
            for b in reversed(held):
                if b.ref_cnt == 0:
                    free[b.block_id] = None
        elif op[0] == "cache" and users:
            held = users[int(op[1]) % len(users)]
            if held:
                pool.cache(held[0], key[int(op[2])], None, [0, 0], None)
        elif op[0] == "hit":
            hits = pool.lookup([key[int(op[1])]])
            pool.acquire(hits)
            for b in hits:
                free.pop(b.block_id, None)
            users.append(hits)
        elif op[0] == "reset":
            assert pool.reset() == (len(free) == num_blocks)
        apply(pool.drain_events())

        holders = [0] * num_blocks
        for held in users:
            for b in held:
                holders[b.block_id] += 1
        assert [b.ref_cnt for b in pool.blocks] == holders
        assert set(free) == {b for b in range(num_blocks) if holders[b] == 0}
        assert pool.num_free == len(free)
        assert 0 <= pool.num_free <= num_blocks
        assert pool.usage == pytest.approx(1 - len(free) / num_blocks)
        # The cache is exactly what the events say is stored, each hash on one block.
        assert pool.num_cached == len(stored)
        assert all(pool.is_cached(h) for h in stored)
        hashed = [b.hash for b in pool.blocks if b.hash is not None]
        assert sorted(hashed) == sorted(stored)
