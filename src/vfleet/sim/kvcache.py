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
    _free: OrderedDict[int, None] = field(init=False)
    _cached: dict[int, Block] = field(init=False)
    events: list[KVEvent] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self._free = OrderedDict.fromkeys(range(self.num_blocks))
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
                del self._free[blk.block_id]
            blk.ref_cnt += 1

    def allocate(self, n: int) -> list[Block] | None:
        """`n` fresh blocks, evicting least recently freed cached blocks; None if too few."""
        if n > len(self._free):
            return None
        out: list[Block] = []
        free = self._free
        for _ in range(n):
            bid, _ = free.popitem(last=False)
            blk = self.blocks[bid]
            if blk.hash is not None:
                del self._cached[blk.hash]
                if self.record_events:
                    self.events.append(BlockRemoved((blk.hash,)))
                blk.hash = None
            blk.ref_cnt = 1
            out.append(blk)
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

    def release(self, blocks: Sequence[Block]) -> None:
        """Drop one reference on each block; freed blocks join the LRU tail.

        Released in reverse so a request's last blocks are evicted before its first ones, which
        other requests are more likely to share.
        """
        free = self._free
        for blk in reversed(blocks):
            blk.ref_cnt -= 1
            if blk.ref_cnt == 0:
                free[blk.block_id] = None

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
