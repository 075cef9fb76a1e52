"""KV-cache block pool with prefix caching, as the simulator models it.

Owns the blocks, their reference counts, the hash -> block map of cached blocks and the LRU order
of free blocks. Free blocks keep their cached contents until a new allocation evicts them, oldest
first, which is how vLLM's prefix cache behaves. Every change to the set of cached blocks is
recorded as a KV-cache event (the shapes vLLM publishes) for the caller to drain.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


def block_hash(parent: int | None, tokens: Sequence[int], lora_name: str | None = None) -> int:
    """64-bit hash of one full block, chained on its parent's hash.

    sha256 over (parent hash, token ids as little-endian u32, LoRA name) so that equal prefixes of
    equal adapters hash equally in every process. Like vLLM's published hashes, the value is the
    digest's low 64 bits as an unsigned int.
    """
    h = hashlib.sha256()
    h.update(b"\xff" * 8 if parent is None else parent.to_bytes(8, "big"))
    h.update(array("I", tokens).tobytes())
    if lora_name is not None:
        h.update(lora_name.encode())
    return int.from_bytes(h.digest()[-8:], "big")


_NO_PARENT = b"\xff" * 8


def block_hashes(
    parent: int | None, tokens: Sequence[int], block_size: int, lora_name: str | None = None
) -> list[int]:
    """`block_hash` of each full block of `tokens`, chained from `parent` (a tail shorter than a
    block is ignored): the same values as calling `block_hash` block by block, for a fraction
    of the cost (one conversion of the tokens to bytes, one sha256 call a block). A prompt's
    blocks are hashed when it is queued, about 20 a request; done one by one it was a quarter
    of a long `vfleet bench plan`."""
    data = array("I", tokens).tobytes()
    size = block_size * 4  # bytes of one block of u32 token ids
    lora = b"" if lora_name is None else lora_name.encode()
    out: list[int] = []
    # the chain is carried as the digest's last 8 bytes: a hash's big-endian bytes, as
    # `block_hash` feeds its parent in
    head = _NO_PARENT if parent is None else parent.to_bytes(8, "big")
    sha256, from_bytes = hashlib.sha256, int.from_bytes
    for i in range(0, len(data) - size + 1, size):
        head = sha256(head + data[i : i + size] + lora).digest()[-8:]
        out.append(from_bytes(head, "big"))
    return out


@dataclass(slots=True, eq=False)
class Block:
    block_id: int
    ref_cnt: int = 0
    hash: int | None = None


@dataclass(slots=True, repr=False)
class BlockPool:
    """`num_blocks` blocks of `block_size` tokens."""

    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = True
    record_events: bool = True  # off when nobody publishes KV events: saves building them
    blocks: list[Block] = field(init=False)
    # Insertion order is LRU order: the first key is evicted first. An OrderedDict, because a
    # plain dict scans past deleted slots to find its first key, which grows with every pop.
    # Keyed by the block itself (identity hash), so a pop needs no lookup in `blocks`.
    _free: OrderedDict[Block, None] = field(init=False)
    _cached: dict[int, Block] = field(init=False)
    events: list[KVEvent] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self._free = OrderedDict.fromkeys(self.blocks)
        self._cached = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (vLLM's `kv_cache_usage_perc`)."""
        return 1.0 - len(self._free) / self.num_blocks

    def is_cached(self, h: int) -> bool:
        return h in self._cached

    def lookup(self, hashes: Sequence[int]) -> list[Block]:
        """Cached blocks for the longest prefix of `hashes` present in the cache."""
        if not self.enable_prefix_caching:
            return []
        hits: list[Block] = []
        for h in hashes:
            blk = self._cached.get(h)
            if blk is None:
                break
            hits.append(blk)
        return hits

    def acquire(self, blocks: Sequence[Block]) -> None:
        """Take a reference on cache hits so they cannot be evicted while in use."""
        for blk in blocks:
            if blk.ref_cnt == 0:
                del self._free[blk]
            blk.ref_cnt += 1

    def allocate(self, n: int) -> list[Block] | None:
        """`n` fresh blocks, evicting least recently freed cached blocks; None if too few."""
        free = self._free
        if n > len(free):
            return None
        pop = free.popitem
        out = [pop(False)[0] for _ in range(n)]
        cached = self._cached
        for blk in out:
            h = blk.hash
            if h is not None:
                del cached[h]
                if self.record_events:
                    self.events.append(BlockRemoved((h,)))
                blk.hash = None
            blk.ref_cnt = 1
        return out

    def cache(
        self,
        blk: Block,
        h: int,
        parent: int | None,
        tokens: Sequence[int],
        lora_name: str | None,
    ) -> None:
        """Mark a newly full block as holding the tokens hashed to `h`."""
        if not self.enable_prefix_caching or blk.hash is not None:
            return
        if h in self._cached:
            # Another request computed the same block meanwhile; keep one copy cached, as vLLM
            # does, and let this one be a plain block that is reused without eviction.
            return
        blk.hash = h
        self._cached[h] = blk
        if self.record_events:
            self.events.append(BlockStored((h,), parent, tuple(tokens), self.block_size, lora_name))

    def cache_quiet(self, blocks: Sequence[Block], hashes: Sequence[int], lo: int, hi: int) -> None:
        """`cache(blocks[i], hashes[i], ...)` for i in [lo, hi), for a pool that records no
        events (what a virtual-time plan runs): one call instead of one a block."""
        assert not self.record_events
        if not self.enable_prefix_caching:
            return
        cached = self._cached
        for i in range(lo, hi):
            blk = blocks[i]
            h = hashes[i]
            if blk.hash is None and h not in cached:
                blk.hash = h
                cached[h] = blk

    def release(self, blocks: Sequence[Block]) -> None:
        """Drop one reference on each block; freed blocks join the LRU tail.

        Released in reverse so a request's last blocks are evicted before its first ones, which
        other requests are more likely to share.
        """
        free = self._free
        for blk in reversed(blocks):
            blk.ref_cnt -= 1
            if blk.ref_cnt == 0:
                free[blk] = None

    def reset(self) -> bool:
        """Forget every cached block (vLLM's reset_prefix_cache); False while blocks are in use."""
        if len(self._free) != self.num_blocks:
            return False
        for blk in self.blocks:
            blk.hash = None
        had = bool(self._cached)
        self._cached.clear()
        if had and self.record_events:
            self.events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        out, self.events = self.events, []
        return out
