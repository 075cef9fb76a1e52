"""What every engine's KV cache holds, learned from its KV-cache events: a pure, bounded index.

Owns the map router block hash -> engines holding that block, each engine's map from its own
block hashes to the router's, and each engine's place in its event stream (sequence numbers).
vLLM's block hashes depend on a seed the router does not know, so a `BlockStored` is re-hashed
here from the `token_ids` it carries (`chain_hash`); the request side (`router.kvchain`) hashes
its tokens the same way, so both meet on the router's hashes. Engines' own hashes are kept only
to undo a `BlockRemoved`.

Every router process (worker or replica) applies each engine's events in that engine's order, and
the state per engine depends only on its own stream, so processes fed by the same engines hold
the same index whatever the interleaving between engines. Bounds: each engine's map holds at most
`max_blocks` blocks (its oldest stored go first), and at most `max_engines` engines are tracked.

LoRA: vLLM puts the adapter into its block hashes, so a block stored for adapter X is a hit only
for requests naming X. Here a chain of adapter X starts from `lora_root(X)` instead of nothing, on
both sides (a `BlockStored` with `lora_name` X, and a request whose model is adapter X), so
adapters' and the base model's blocks never match each other.

Data parallelism: a vLLM engine with `--data-parallel-size N` behind one API server runs N engine
cores, each with its own KV cache and its own publisher (its own sequence numbers; each batch says
its `dp_rank`). Each (url, rank) is a separate engine here; `match` reports a url's deepest rank,
which the caller pins with vLLM's `X-data-parallel-rank` header (a prefix cached on rank 1 is no
hit for a request the API server balances onto rank 0).

Also here: `Predictions`, the short-lived guesses a router process makes for its own decisions
(a burst of one prefix sticks to one engine before that engine's events arrive). The caller
passes the clock value in; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import enum
import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final

MAX_BLOCKS_PER_ENGINE: Final = 262_144  # ~4M tokens of KV cache at 16 tokens a block
MAX_ENGINES: Final = 4096
PREDICT_TTL_S: Final = 2.0  # a guess lives until the engine's events have surely arrived
MAX_PREDICTED: Final = 16_384  # sampled blocks remembered by Predictions

_PERSON: Final = b"vfleet.kvblock"
_LORA_PERSON: Final = b"vfleet.kvlora"
_ROOT: Final = b"\x00" * 8  # the parent of a chain's first block


# blake2b keyed by our personalisation, copied per block: cheaper than a new hasher each time
_HASHER: Final = hashlib.blake2b(digest_size=8, person=_PERSON)


def chain_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """The router's 64-bit hash of one full block: blake2b over its parent's hash (8 bytes,
    big-endian; zeros for the first block) and its token ids (little-endian u32, u64 when one
    does not fit), so equal prefixes hash equally in every process."""
    h = _HASHER.copy()
    h.update(_ROOT if parent is None else parent.to_bytes(8, "big"))
    try:
        h.update(array("I", tokens).tobytes())
    except OverflowError:
        h.update(b"Q" + array("Q", tokens).tobytes())
    return int.from_bytes(h.digest(), "big")


def chain_run(parent: int | None, tokens: Sequence[int], block_size: int, count: int) -> list[int]:
    """`chain_hashes` of the first `count` blocks of `tokens`: the same hashes, with the token
    ids packed once for the run instead of once per block (applying a BlockStored of hundreds
    of blocks is mostly this)."""
    try:
        packed = memoryview(array("I", tokens[: count * block_size]).tobytes())
    except OverflowError:  # a token id over 32 bits: its block hashes as u64 (chain_hash)
        return chain_hashes(tokens[: count * block_size], block_size, parent)
    out: list[int] = []
    seed = _ROOT if parent is None else parent.to_bytes(8, "big")
    width = 4 * block_size
    hasher = _HASHER
    for start in range(0, count * width, width):
        h = hasher.copy()
        h.update(seed)
        h.update(packed[start : start + width])
        seed = h.digest()
        out.append(int.from_bytes(seed, "big"))
    return out


def lora_root(name: str) -> int:
    """The parent of the first block of a chain computed for LoRA adapter `name` (the base
    model's chains start from no parent): keys every chain by its adapter."""
    data = name.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=_LORA_PERSON).digest(), "big")


def chain_hashes(tokens: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """The router hashes of the full blocks of `tokens`, chained from `parent`."""
    out: list[int] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = chain_hash(parent, tokens[start : start + block_size])
        out.append(parent)
    return out


class Applied(enum.Enum):
    """What `KvIndex.apply` did with a batch."""

    APPLIED = "applied"  # the next batch in order (or the first seen)
    DUPLICATE = "duplicate"  # already applied (a replay overlapping the live stream): ignored
    GAP = "gap"  # batches are missing before it: nothing applied; recover, then apply it
    RESTARTED = "restarted"  # the sequence went back: a new publisher; the engine was purged


@dataclass(slots=True)
class _Engine:
    """One engine's part of the index: one url, or one data-parallel rank of it."""

    bit: int  # this engine's bit in the holder masks
    url: str
    rank: int = 0  # data-parallel rank (the batch's dp_rank); 0 without data parallelism
    seq: int = -1  # last batch applied; -1: none yet
    block_size: int = 0  # from its BlockStored events; 0: none seen
    # engine block hash -> router block hash; insertion order is age (the oldest go first)
    blocks: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts of what `KvIndex.apply` has seen (monotonic)."""

    stored: int
    removed: int
    cleared: int
    skipped: int  # blocks whose ancestry was unknown, or not plain full-attention GPU blocks


class KvIndex:
    """Router block hash -> engines holding it, built from the engines' KV-cache events."""

    def __init__(self, max_blocks: int = MAX_BLOCKS_PER_ENGINE, max_engines: int = MAX_ENGINES):
        if max_blocks < 1 or max_engines < 1:
            raise ValueError("max_blocks and max_engines must be at least 1")
        self.max_blocks = max_blocks
        self.max_engines = max_engines
        self._engines: dict[tuple[str, int], _Engine] = {}  # (url, dp rank) -> engine
        self._url_bits: dict[str, int] = {}  # url -> mask of its ranks' bits
        # router hash -> mask of the engines holding it (a bit per engine). Ints, not sets: a
        # dict of ints is invisible to the cyclic GC, which would otherwise walk the whole
        # index again and again, and masks intersect in one operation.
        self._holders: dict[int, int] = {}
        self._by_bit: dict[int, str] = {}  # engine bit -> url
        self._rank_by_bit: dict[int, int] = {}  # engine bit -> its data-parallel rank
        self._used = 0  # the bits in use
        self._stored = self._removed = self._cleared = self._skipped = 0

    # -- reading ---------------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        return Stats(self._stored, self._removed, self._cleared, self._skipped)

    def engines(self) -> list[str]:
        """The engines' urls with a place in the index (tracked, or events seen since a purge)."""
        return list(self._url_bits)

    def tracks(self, url: str) -> bool:
        """Whether `url`'s events are followed: what it holds is known (maybe nothing yet)."""
        return url in self._url_bits

    def track(self, url: str) -> None:
        """Follow `url` from now on: subscribed, it holds nothing until its events say so."""
        self._engine(url, 0)

    def ranks(self, url: str) -> list[int]:
        """The data-parallel ranks of `url` with a place in the index, lowest first."""
        return sorted(e.rank for e in self._of(url))

    def rank_count(self, url: str) -> int:
        """How many data-parallel ranks of `url` the index follows (0: none)."""
        return self._url_bits.get(url, 0).bit_count()

    def blocks_of(self, url: str) -> int:
        """How many blocks `url` is known to hold (over all its ranks)."""
        return sum(len(e.blocks) for e in self._of(url))

    def _of(self, url: str) -> list[_Engine]:
        """`url`'s engines (one per data-parallel rank)."""
        out = []
        mask = self._url_bits.get(url, 0)
        while mask:
            low = mask & -mask
            out.append(self._engines[(url, self._rank_by_bit[low])])
            mask ^= low
        return out

    def size(self) -> int:
        """Distinct router block hashes held by any engine."""
        return len(self._holders)

    def seq(self, url: str, rank: int = 0) -> int:
        """The last batch applied for `url`'s rank `rank`; -1 when none."""
        engine = self._engines.get((url, rank))
        return -1 if engine is None else engine.seq

    def block_size(self, urls: Iterable[str]) -> int:
        """The block size the first of `urls` with events reports; 0 when none has any."""
        for url in urls:
            for engine in self._of(url):
                if engine.block_size:
                    return engine.block_size
        return 0

    def holders(self, block: int) -> set[str]:
        """The engines holding `block`."""
        return set(self._urls(self._holders.get(block, 0)))

    def _urls(self, mask: int) -> list[str]:
        out = []
        by_bit = self._by_bit
        while mask:
            low = mask & -mask
            out.append(by_bit[low])
            mask ^= low
        return out

    def match(self, blocks: Sequence[int], urls: AbstractSet[str]) -> dict[str, int]:
        """Leading blocks of `blocks` each of `urls` holds (engines holding none are left out),
        exactly for chains under 128 blocks, else at most len(blocks) / 64 short of it. For a
        url with several data-parallel ranks, its deepest rank's (`rank_holding` says which).

        Engines cache prefixes: a block is only found by a lookup when all its ancestors are, and
        vLLM evicts a request's tail blocks before its head, so each engine's holdings along one
        chain are a prefix of it. That lets a bisection find every engine's depth with
        O(distinct depths x log n) lookups, engines that share a depth moving as one set, instead
        of walking all n blocks.
        """
        out: dict[str, int] = {}
        if not blocks:
            return out
        holders = self._holders
        wanted = 0
        url_bits = self._url_bits
        for url in urls:
            wanted |= url_bits.get(url, 0)
        group = holders.get(blocks[0], 0) & wanted
        stack: list[tuple[int, int, int]] = [(group, 0, len(blocks) - 1)] if group else []
        by_bit = self._by_bit
        several_ranks = len(url_bits) < len(self._engines)
        # Depths are found to within 1/64 of the prompt (exactly below 128 blocks): a few
        # blocks more or less do not change a decision, and the last levels of the bisection
        # are most of its work when many engines hold the prompt to different depths.
        slack = len(blocks) >> 6
        while stack:
            members, lo, hi = stack.pop()  # each engine in `members` holds block lo
            if hi - lo <= slack:
                while members:
                    low = members & -members
                    if several_ranks:  # a url's deepest rank counts
                        url = by_bit[low]
                        if out.get(url, 0) <= lo:
                            out[url] = lo + 1
                    else:
                        out[by_bit[low]] = lo + 1
                    members ^= low
                continue
            mid = (lo + hi + 1) // 2
            deeper = members & holders.get(blocks[mid], 0)
            if deeper:
                stack.append((deeper, mid, hi))
            if deeper != members:
                stack.append((members & ~deeper, lo, mid - 1))
        return out

    def rank_holding(self, url: str, blocks: Sequence[int], depth: int) -> int | None:
        """The lowest data-parallel rank of `url` holding `blocks[depth - 1]` (the depth
        `match` found for it); None when none does."""
        if depth < 1 or depth > len(blocks):
            return None
        mask = self._holders.get(blocks[depth - 1], 0) & self._url_bits.get(url, 0)
        return self._rank_by_bit[mask & -mask] if mask else None

    # -- writing ---------------------------------------------------------------------------

    def apply(self, url: str, seq: int, events: Sequence[Any], rank: int = 0) -> Applied:
        """Apply one batch (`events` as decoded from the wire) published by `url` as `seq`
        (`rank`: the batch's `dp_rank`; each rank has its own publisher and sequence).

        A GAP changes nothing: the caller replays the missing batches, or purges the engine and
        `accept`s this batch as a fresh start. Replayed batches go through `replayed`."""
        engine = self._engines.get((url, rank))
        if engine is not None and engine.seq >= 0:
            if seq <= engine.seq:
                # The live stream never goes back: a restarted engine numbers from 0 again.
                self.purge(url, rank)
                self.accept(url, seq, events, rank)
                return Applied.RESTARTED
            if seq > engine.seq + 1:
                return Applied.GAP
        return self.accept(url, seq, events, rank)

    def replayed(self, url: str, seq: int, events: Sequence[Any], rank: int = 0) -> Applied:
        """Apply a batch from the replay socket: those already applied are ignored; GAP when
        the replay skipped some (they left the engine's buffer)."""
        engine = self._engines.get((url, rank))
        if engine is not None and seq <= engine.seq:
            return Applied.DUPLICATE
        if engine is not None and engine.seq >= 0 and seq > engine.seq + 1:
            return Applied.GAP
        return self.accept(url, seq, events, rank)

    def accept(self, url: str, seq: int, events: Sequence[Any], rank: int = 0) -> Applied:
        """Apply a batch whatever its place in the sequence (the first seen, or after a purge)."""
        engine = self._engine(url, rank)
        if engine is None:
            return Applied.DUPLICATE  # over max_engines: not tracked
        self._apply(engine, seq, events)
        return Applied.APPLIED

    def purge(self, url: str, rank: int | None = None) -> None:
        """Forget everything about `url` (it left, restarted, or lost events), or about its
        rank `rank` only (that rank's publisher restarted or lost events)."""
        for engine in self._of(url):
            if rank is not None and engine.rank != rank:
                continue
            del self._engines[(url, engine.rank)]
            for router_hash in engine.blocks.values():
                self._drop_holder(router_hash, engine.bit)
            del self._by_bit[engine.bit]
            del self._rank_by_bit[engine.bit]
            self._used &= ~engine.bit
            left = self._url_bits[url] & ~engine.bit
            if left:
                self._url_bits[url] = left
            else:
                del self._url_bits[url]

    def retain(self, urls: Collection[str]) -> None:
        """Purge every engine not in `urls`."""
        for url in [u for u in self._url_bits if u not in urls]:
            self.purge(url)

    def _engine(self, url: str, rank: int) -> _Engine | None:
        engine = self._engines.get((url, rank))
        if engine is None and len(self._engines) < self.max_engines:
            used = self._used
            bit = ~used & (used + 1)  # the lowest free bit
            self._used |= bit
            self._by_bit[bit] = url
            self._rank_by_bit[bit] = rank
            self._url_bits[url] = self._url_bits.get(url, 0) | bit
            engine = self._engines[(url, rank)] = _Engine(bit, url, rank)
        return engine

    def _apply(self, engine: _Engine, seq: int, events: Sequence[Any]) -> None:
        engine.seq = seq
        for event in events:
            kind = _kind(event)
            if kind == "BlockStored":
                self._stored_event(engine, event)
            elif kind == "BlockRemoved":
                self._removed_event(engine, event)
            elif kind == "AllBlocksCleared":
                self._cleared += 1
                for router_hash in engine.blocks.values():
                    self._drop_holder(router_hash, engine.bit)
                engine.blocks.clear()

    def _stored_event(self, engine: _Engine, event: Any) -> None:
        hashes, parent, tokens, size, lora, extra = _stored_fields(event)
        if hashes is None or size < 1 or len(tokens) < len(hashes) * size or extra:
            self._skipped += len(hashes or ())
            return
        engine.block_size = size
        # a chain's first block: keyed by its adapter (the engine's own hash includes it)
        router_parent: int | None = None if lora is None else lora_root(lora)
        if parent is not None:
            router_parent = engine.blocks.get(parent)
            if router_parent is None:  # its ancestry is unknown (evicted or never seen)
                self._skipped += len(hashes)
                return
        blocks = engine.blocks
        holders = self._holders
        bit = engine.bit
        chain = chain_run(router_parent, tokens, size, len(hashes))
        for engine_hash, router_hash in zip(hashes, chain, strict=True):
            old = blocks.pop(engine_hash, None)
            if old is not None and old != router_hash:
                self._drop_holder(old, bit)
            blocks[engine_hash] = router_hash
            holders[router_hash] = holders.get(router_hash, 0) | bit
            self._stored += 1
        while len(blocks) > self.max_blocks:
            oldest = next(iter(blocks))
            self._drop_holder(blocks.pop(oldest), bit)

    def _removed_event(self, engine: _Engine, event: Any) -> None:
        hashes = event.get("block_hashes") if isinstance(event, Mapping) else _at(event, 1)
        if not isinstance(hashes, list):
            return
        blocks = engine.blocks
        holders = self._holders
        keep = ~engine.bit
        for engine_hash in _int_hashes(hashes):
            router_hash = blocks.pop(engine_hash, None)
            if router_hash is not None:
                mask = holders.get(router_hash, 0) & keep  # _drop_holder, inlined: hot
                if mask:
                    holders[router_hash] = mask
                else:
                    del holders[router_hash]
                self._removed += 1

    def _drop_holder(self, router_hash: int, bit: int) -> None:
        mask = self._holders.get(router_hash, 0) & ~bit
        if mask:
            self._holders[router_hash] = mask
        else:
            self._holders.pop(router_hash, None)


# -- the wire's event shapes ------------------------------------------------------------------
# vLLM encodes its events with msgspec as tagged arrays ([tag, field, ...], fields in declaration
# order); the simulator (and msgpack maps in general) may send maps with a "type" key. Both are
# read. Hashes are ints, or bytes (vLLM's sha256 hashing), normalised to ints here.


def _kind(event: Any) -> str | None:
    if isinstance(event, Mapping):
        kind = event.get("type")
    elif isinstance(event, list | tuple) and event:
        kind = event[0]
    else:
        return None
    return kind.decode() if isinstance(kind, bytes) else kind if isinstance(kind, str) else None


def _at(event: Any, i: int) -> Any:
    return event[i] if isinstance(event, list | tuple) and len(event) > i else None


def _int_hashes(raw: list[Any]) -> list[int]:
    """`raw`'s hashes as ints: as they are when they are ints (vLLM's default hashing; one
    batch's hashes are all of one kind), converted when bytes (sha256 hashing)."""
    if raw and type(raw[0]) is int and type(raw[-1]) is int:
        return raw
    return [_int_hash(h) for h in raw]


def _int_hash(value: Any) -> int:
    if isinstance(value, bytes):
        return int.from_bytes(value[-8:], "big")
    return value if isinstance(value, int) else -1


def _stored_fields(
    event: Any,
) -> tuple[list[int] | None, int | None, Sequence[int], int, str | None, bool]:
    """(engine hashes, engine parent hash, token ids, block size, LoRA adapter name or None,
    whether it is not a plain GPU full-attention block: multimodal extra keys, another group,
    another medium, or an adapter known only by its id)."""
    if isinstance(event, Mapping):
        raw = event.get("block_hashes")
        parent = event.get("parent_block_hash")
        tokens = event.get("token_ids")
        size = event.get("block_size")
        lora_id, lora_name = event.get("lora_id"), event.get("lora_name")
        medium = event.get("medium")
        extra_keys = event.get("extra_keys")
        group = event.get("group_idx")
    else:  # [tag, block_hashes, parent, token_ids, block_size, lora_id, medium, lora_name, ...]
        raw, parent, tokens, size = _at(event, 1), _at(event, 2), _at(event, 3), _at(event, 4)
        lora_id, lora_name = _at(event, 5), _at(event, 7)
        medium = _at(event, 6)
        extra_keys, group = _at(event, 8), _at(event, 9)
    if not isinstance(raw, list) or not isinstance(tokens, list) or not isinstance(size, int):
        return None, None, (), 0, None, True
    if isinstance(lora_name, bytes):
        lora_name = lora_name.decode("utf-8", "replace")
    lora = lora_name if isinstance(lora_name, str) and lora_name else None
    # An adapter named only by its id (older vLLM) cannot be told from the request's model.
    extra = (bool(lora_id) and lora is None) or medium not in (None, "GPU", b"GPU")
    extra = extra or group not in (None, 0)
    if isinstance(extra_keys, list) and any(k is not None for k in extra_keys):
        extra = True
    hashes = _int_hashes(raw)
    return hashes, None if parent is None else _int_hash(parent), tokens, size, lora, extra


# -- a router process's own guesses -----------------------------------------------------------


class Predictions:
    """Recent decisions as guesses of what engines will hold, until `ttl_s` after each.

    A decision records the request's chain at sampled depths (1, 2, 4, ... blocks and the whole
    chain), so recording and looking up cost O(log n) whatever the prompt's length; a later
    request sharing the chain up to one of those depths is credited with that depth on that
    engine. At most `max_entries` sampled blocks are kept (the oldest go first)."""

    def __init__(self, ttl_s: float = PREDICT_TTL_S, max_entries: int = MAX_PREDICTED):
        if ttl_s < 0 or max_entries < 1:
            raise ValueError("ttl_s must be >= 0 and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        # sampled block -> {url: expiry}; order is age. An OrderedDict: a plain dict scans past
        # the slots of deleted keys to find its first one, which grows with every re-insertion.
        self._entries: OrderedDict[int, dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, blocks: Sequence[int], url: str, now: float) -> None:
        entries = self._entries
        expiry = now + self.ttl_s
        for i in _sampled(len(blocks)):
            block = blocks[i]
            urls = entries.get(block)
            if urls is None:
                entries[block] = {url: expiry}
            else:
                urls[url] = expiry
                entries.move_to_end(block)  # now the youngest
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        while entries:  # drop expired ones from the old end
            first = next(iter(entries))
            if max(entries[first].values()) > now:
                break
            del entries[first]

    def match(self, blocks: Sequence[int], urls: Collection[str], now: float) -> dict[str, int]:
        """Leading blocks of `blocks` each of `urls` is guessed to hold."""
        out: dict[str, int] = {}
        entries = self._entries
        if not entries:
            return out
        for i in reversed(_sampled(len(blocks))):
            guessed = entries.get(blocks[i])
            if guessed is None:
                continue
            for url, expiry in guessed.items():
                if expiry > now and url not in out and url in urls:
                    out[url] = i + 1
        return out


def _sampled(n: int) -> list[int]:
    """Indexes 0, 1, 3, 7, ... below n, and n - 1."""
    out: list[int] = []
    i = 1
    while i <= n:
        out.append(i - 1)
        i *= 2
    if n and out[-1] != n - 1:
        out.append(n - 1)
    return out
