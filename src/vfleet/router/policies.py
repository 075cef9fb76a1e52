"""Routing policies: which healthy endpoint gets the next request.

A policy is a small synchronous object whose `choose()` looks at an immutable snapshot of the
endpoints and the request's `RouteKey` and returns one healthy endpoint, or None when there is
none. Policies do no I/O, read no clock and draw no random numbers, so the live router and the
simulator's virtual time run the same code and get the same answers. A policy object may keep
small, bounded state between calls (a round-robin cursor, a hash ring cache, an LRU prefix index);
given the same sequence of calls it always makes the same choices.

Endpoints are always considered in url order, never in the order the caller lists them, so that
the snapshot's ordering cannot change a decision.

Each policy declares in `needs` which request `Field`s its `RouteKey` must carry; the router reads
only those from a request (parsing a prompt for prefix hashes costs time no other policy needs).
"""

from __future__ import annotations

import enum
import hashlib
import math
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from vfleet.router.kvindex import KvIndex, Predictions
from vfleet.router.state import Chain, EndpointState, RouteKey

POLICY_NAMES: Final[tuple[str, ...]] = ("round_robin", "least_load", "session", "prefix", "kv")

# least_load score weights: a waiting request costs a future prefill and a slot, so it counts
# double; the KV term only separates endpoints whose request counts are equal.
WAITING_WEIGHT: Final = 2.0
KV_WEIGHT: Final = 4.0

SESSION_VNODES: Final = 64  # ring points per endpoint
SESSION_BALANCE: Final = 1.25  # Mirrokni et al.'s c: capacity is ceil(c * average load)

PREFIX_INDEX_MAX: Final = 65536  # chunk hashes remembered by the prefix policy
PREFIX_ABS_SLACK: Final = 4.0  # extra load an affine endpoint may carry over the least loaded...
PREFIX_REL_SLACK: Final = 0.5  # ...or this fraction of the least loaded's load, if larger
PREFIX_CHUNK_TOKENS: Final = 64.0  # tokens in one 256-character chunk (~4 characters a token)

# The prefix policy's load guard for long matches: prefill tokens one unit of `load_score` is
# worth (a request ahead counts about two units: the router's in-flight count and the engine's).
PREFIX_QUEUE_TOKENS: Final = 128.0

# The kv policy's cost model (`KvAffinity`): prefill tokens one request ahead is worth, and the
# overload bound past which an engine is not chosen whatever it caches: KV_ABS_SLACK requests
# over the least loaded engine, or (1 + KV_REL_SLACK) x the fleet's mean load if more.
KV_QUEUE_TOKENS: Final = 256.0
KV_ABS_SLACK: Final = 8.0
KV_REL_SLACK: Final = 1.0

_PREFIX_PERSON: Final = b"vfleet.prefix"  # blake2b personalisation: keeps the hash domains apart
_RING_PERSON: Final = b"vfleet.ring"
_SESSION_PERSON: Final = b"vfleet.session"
_KV_PERSON: Final = b"vfleet.kvtie"


class Field(enum.Enum):
    """A request fact a policy may route on (see `RouteKey`)."""

    SESSION = "session"  # the session header or the body's `user`
    PREFIX = "prefix"  # hashes of the prompt's leading chunks
    CHAIN = "chain"  # the prompt's KV blocks, tokenized as the engine does (router.kvchain)


NO_FIELDS: Final[frozenset[Field]] = frozenset()


class Policy(Protocol):
    """Chooses a healthy endpoint for a request, or None when no endpoint is healthy."""

    name: str
    needs: frozenset[Field]  # what the request's RouteKey must carry besides the model

    def choose(self, endpoints: Sequence[EndpointState], key: RouteKey) -> EndpointState | None: ...


def make_policy(name: str, kv: KvIndex | None = None) -> Policy:
    """A fresh policy object for one of `POLICY_NAMES`; ValueError for any other name. `kv`:
    the KV-event index the `kv` policy reads (without one it routes as `prefix`)."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_load":
        return LeastLoad()
    if name == "session":
        return SessionAffinity()
    if name == "prefix":
        return PrefixAffinity()
    if name == "kv":
        return KvAffinity(kv)
    raise ValueError(f"unknown routing policy {name!r}; valid: {', '.join(POLICY_NAMES)}")


def load_score(endpoint: EndpointState) -> float:
    """`inflight + running + 2*waiting + 4*kv_usage`: lower is less loaded.

    `inflight` is what this router has sent and not yet seen finish; `running` and `waiting` are
    the engine's scraped queue; `kv_usage` (0..1) adds at most 4, so it mostly breaks ties
    between endpoints with equal request counts in favour of the one with more free KV cache.
    """
    return (
        endpoint.inflight
        + endpoint.running
        + WAITING_WEIGHT * endpoint.waiting
        + KV_WEIGHT * endpoint.kv_usage
    )


def prefix_hashes(
    text: str, chunk_chars: int = 256, max_chunks: int = 16, model: str = ""
) -> tuple[int, ...]:
    """Chained 64-bit hashes of the first full `chunk_chars`-character chunks of `text`.

    Hash i covers hash i-1 and chunk i (blake2b, 8-byte digest, over the previous hash as 8
    big-endian bytes and the chunk as UTF-8), so it identifies the whole prefix up to the end of
    chunk i, and equal prefixes give equal hashes in every process. Only full chunks count: a
    trailing partial chunk is too likely to differ between requests that share a template, and a
    prompt shorter than one chunk gives `()`, i.e. no prefix affinity. At most `max_chunks` hashes,
    so only the first `chunk_chars * max_chunks` characters are read.

    Chunks are characters, not tokens: the router does not tokenize, and matching prefixes only
    needs the same split on every request.

    `model` (the name the request asks for) starts the chain: an engine caches a LoRA adapter's
    blocks apart from its base model's and from other adapters' (vLLM hashes the adapter into
    them), so the same text asked of two adapters is two prefixes.
    """
    if chunk_chars < 1:
        raise ValueError("chunk_chars must be at least 1")
    if max_chunks < 0:
        raise ValueError("max_chunks must not be negative")
    count = min(len(text) // chunk_chars, max_chunks)
    out: list[int] = []
    parent = b"\x00" * 8
    if model and count:
        parent = hashlib.blake2b(model.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    for i in range(count):
        chunk = text[i * chunk_chars : (i + 1) * chunk_chars]
        h = hashlib.blake2b(parent, digest_size=8, person=_PREFIX_PERSON)
        h.update(chunk.encode("utf-8", "surrogatepass"))
        parent = h.digest()
        out.append(int.from_bytes(parent, "big"))
    return tuple(out)


def _url(endpoint: EndpointState) -> str:
    return endpoint.url


def _healthy(endpoints: Sequence[EndpointState]) -> list[EndpointState]:
    """The healthy endpoints in url order."""
    return sorted((e for e in endpoints if e.healthy), key=_url)


class _Rotation:
    """Round-robin cursor over url-sorted candidates that may change between calls.

    It remembers the last url it gave out and next gives the first candidate after it, wrapping
    around; endpoints that come and go therefore neither reset the cycle nor skip anyone twice.
    """

    def __init__(self) -> None:
        self._last: str | None = None

    def pick(self, candidates: list[EndpointState]) -> EndpointState:
        """The next candidate after the last one given out; `candidates` non-empty, url order."""
        i = 0 if self._last is None else bisect_right(candidates, self._last, key=_url)
        chosen = candidates[i % len(candidates)]
        self._last = chosen.url
        return chosen


class RoundRobin:
    """Each healthy endpoint in turn, in url order."""

    name: str = "round_robin"
    needs: frozenset[Field] = NO_FIELDS

    def __init__(self) -> None:
        self._rotation = _Rotation()

    def choose(self, endpoints: Sequence[EndpointState], key: RouteKey) -> EndpointState | None:
        healthy = _healthy(endpoints)
        return self._rotation.pick(healthy) if healthy else None


class LeastLoad:
    """The healthy endpoint with the lowest `load_score`; equal scores take turns."""

    name: str = "least_load"
    needs: frozenset[Field] = NO_FIELDS

    def __init__(self) -> None:
        self._rotation = _Rotation()

    def choose(self, endpoints: Sequence[EndpointState], key: RouteKey) -> EndpointState | None:
        return self.choose_from(_healthy(endpoints))

    def choose_from(self, healthy: list[EndpointState]) -> EndpointState | None:
        """`choose` over endpoints already filtered to the healthy ones, in url order."""
        if not healthy:
            return None
        best = min(load_score(e) for e in healthy)
        return self._rotation.pick([e for e in healthy if load_score(e) == best])


class SessionAffinity:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018).

    Each healthy endpoint owns `vnodes` points on a 64-bit ring (blake2b of `url#i`); a session
    hashes to a point and walks clockwise to the first endpoint whose load is under the capacity
    `ceil(balance * (total + 1) / n)`, where load is `inflight`, total is the healthy endpoints'
    summed inflight and the +1 counts the request being placed. Some endpoint is always under it
    (the least loaded one is below the average), so a session stays on its endpoint while that
    endpoint is healthy and not overloaded, and removing an endpoint moves only the sessions it
    held. Requests without a session go to `LeastLoad`.

    The ring for the current set of healthy urls is cached and rebuilt when that set changes.
    """

    name: str = "session"
    needs: frozenset[Field] = frozenset({Field.SESSION})

    def __init__(self, balance: float = SESSION_BALANCE, vnodes: int = SESSION_VNODES) -> None:
        if not balance >= 1.0:
            raise ValueError("balance must be at least 1")
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.balance = balance
        self.vnodes = vnodes
        self._fallback = LeastLoad()
        self._ring_urls: tuple[str, ...] = ()
        self._points: list[int] = []  # sorted ring positions
        self._owners: list[int] = []  # index into _ring_urls of the endpoint at each point

    def capacity(self, healthy: Sequence[EndpointState]) -> int:
        """Most inflight requests one endpoint may hold after taking the next request."""
        total = sum(e.inflight for e in healthy) + 1
        return math.ceil(self.balance * total / len(healthy))

    def choose(self, endpoints: Sequence[EndpointState], key: RouteKey) -> EndpointState | None:
        healthy = _healthy(endpoints)
        if key.session is None or not healthy:
            return self._fallback.choose_from(healthy)
        self._build_ring(tuple(e.url for e in healthy))
        cap = self.capacity(healthy)
        start = bisect_left(
            self._points, _hash64(key.session.encode("utf-8", "surrogatepass"), _SESSION_PERSON)
        )
        tried = [False] * len(healthy)
        left = len(healthy)
        ring_size = len(self._points)
        for step in range(ring_size):
            owner = self._owners[(start + step) % ring_size]
            if tried[owner]:
                continue
            candidate = healthy[owner]
            if candidate.inflight < cap:
                return candidate
            tried[owner] = True
            left -= 1
            if left == 0:
                break
        # Unreachable while inflight counts are non-negative; kept so that odd input still routes.
        return self._fallback.choose_from(healthy)

    def _build_ring(self, urls: tuple[str, ...]) -> None:
        if urls == self._ring_urls and self._points:
            return
        ring = sorted(
            (_hash64(f"{url}#{v}".encode("utf-8", "surrogatepass"), _RING_PERSON), i)
            for i, url in enumerate(urls)
            for v in range(self.vnodes)
        )
        self._ring_urls = urls
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]


class PrefixAffinity:
    """Send a prompt where its longest known prefix was last sent, unless that is overloaded.

    `key.prefix` holds chained chunk hashes (`prefix_hashes`), so the deepest hash the index knows
    identifies the longest prefix some endpoint has recently served, and probably still caches.
    That endpoint is chosen unless its `load_score` exceeds the least loaded endpoint's by more
    than `max(abs_slack, saved / queue_tokens, rel_slack * least)`; then, as with no prefix or
    no match, `LeastLoad` chooses. The middle term is the kv policy's cost model: the prefill
    the match saves (`chunk_tokens` per matched chunk, at most 16 chunks: up to 8 units of load
    at the defaults) against the queue it adds, so a long shared prefix is not given away for a
    small imbalance. The slack is what stops one prompt shared by every request (a common
    system prompt) from pinning all traffic to one replica: once its replica is that far ahead,
    the prefix moves to the least loaded one, and so on around the fleet.

    The index maps chunk hash -> url of the endpoint that last served it; every chosen request
    records all its hashes. It is an LRU capped at `max_entries`, and it is this router
    process's own memory: an approximation of what the engines cache, not their KV events.
    """

    name: str = "prefix"
    needs: frozenset[Field] = frozenset({Field.PREFIX})

    def __init__(
        self,
        max_entries: int = PREFIX_INDEX_MAX,
        abs_slack: float = PREFIX_ABS_SLACK,
        rel_slack: float = PREFIX_REL_SLACK,
        queue_tokens: float = PREFIX_QUEUE_TOKENS,
        chunk_tokens: float = PREFIX_CHUNK_TOKENS,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.abs_slack = abs_slack
        self.rel_slack = rel_slack
        self.queue_tokens = queue_tokens
        self.chunk_tokens = chunk_tokens
        self._fallback = LeastLoad()
        # Insertion order is recency: the first key is the least recently served.
        self._index: OrderedDict[int, str] = OrderedDict()

    @property
    def index_size(self) -> int:
        """Chunk hashes currently remembered (at most `max_entries`)."""
        return len(self._index)

    def choose(self, endpoints: Sequence[EndpointState], key: RouteKey) -> EndpointState | None:
        healthy = _healthy(endpoints)
        if not healthy:
            return None
        chosen = self._affine(healthy, key.prefix)
        if chosen is None:
            chosen = self._fallback.choose_from(healthy)
        if chosen is not None:
            self._record(key.prefix, chosen.url)
        return chosen

    def _affine(
        self, healthy: list[EndpointState], prefix: tuple[int, ...]
    ) -> EndpointState | None:
        """The endpoint holding the longest indexed prefix, if it is not too loaded."""
        found = self.holder(healthy, prefix)
        if found is None:
            return None
        match, matched = found
        least = min(load_score(e) for e in healthy)
        saved = matched * self.chunk_tokens
        slack = max(self.abs_slack, saved / self.queue_tokens, self.rel_slack * least)
        return match if load_score(match) <= least + slack else None

    def holder(
        self, healthy: Sequence[EndpointState], prefix: tuple[int, ...]
    ) -> tuple[EndpointState, int] | None:
        """The endpoint the longest indexed prefix of `prefix` was last sent to, with the number
        of chunks matched, whatever its load."""
        if not prefix:
            return None
        by_url = {e.url: e for e in healthy}
        for matched in range(len(prefix), 0, -1):
            url = self._index.get(prefix[matched - 1])
            match = None if url is None else by_url.get(url)
            if match is not None:
                return match, matched
        return None

    def learn(self, prefix: tuple[int, ...], url: str) -> None:
        """Record that `prefix` was sent to `url` (another policy's decision)."""
        self._record(prefix, url)

    def _record(self, prefix: tuple[int, ...], url: str) -> None:
        index = self._index
        for h in prefix:
            index[h] = url
            index.move_to_end(h)
        while len(index) > self.max_entries:
            index.popitem(last=False)


def _hash64(data: bytes, person: bytes) -> int:
    """Stable 64-bit hash (blake2b), the same in every process, unlike the salted `hash()`."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


# -- kv -------------------------------------------------------------------------------------------


class Reason(enum.Enum):
    """Why the kv policy chose what it chose (router metrics count decisions by reason)."""

    HIT = "hit"  # the engine the events say holds the longest prefix
    PREDICTED = "predicted"  # one this router just sent the same prefix to (no events yet)
    BALANCE = "balance"  # a less loaded engine: its queue costs less than the prefill saved
    SHED = "shed"  # the cheapest engine is past the overload bound: the next best one
    MISS = "miss"  # no engine holds any of the prompt: the least loaded
    FALLBACK = "fallback"  # no KV blocks for the request or no events: the prefix policy


@dataclass(frozen=True, slots=True)
class KvDecision:
    """One decision of the kv policy, for metrics."""

    model: str
    reason: Reason
    cached_tokens: int  # prompt tokens the chosen engine is expected to hold
    prompt_tokens: int
    # The data-parallel rank to pin with vLLM's `X-data-parallel-rank` header when the chosen
    # url runs several (each has its own KV cache); None: one rank, or let the engine choose.
    dp_rank: int | None = None


class KvAffinity:
    """Send a prompt where its KV blocks are, as the engines' own KV events report them.

    `key.chain` holds the router's hashes of the prompt's full blocks; the index
    (`router.kvindex`) says how many leading blocks each engine holds, and this policy's own
    short-lived predictions add what it has just sent elsewhere (a burst of one new prefix sticks
    to one engine before its events arrive). Each engine's cost, in prefill tokens, is what the
    request adds to the latency of everyone there: its uncached tokens `u`, once for itself and
    once for each of the `n` requests already there (a prefill runs in the engine's steps, so
    the whole batch waits for it), plus `queue_tokens` per request ahead:
    `u * (1 + n) + queue_tokens * (n + KV_WEIGHT * kv_usage)`. `n` counts each request once: the
    router's own in-flight count (exact) or the engine's scraped running + waiting (all
    routers', up to a probe interval old) when that is more. The cheapest engine wins among
    those within the overload bound (`n` + the KV term at most
    `max(least + abs_slack, (1 + rel_slack) * mean)`, bounded loads as in `SessionAffinity`),
    so a prefix every request shares spreads once its engine is that far ahead instead of
    collapsing onto it, and the policy degrades like `prefix` past saturation. Equal costs are
    broken by a hash of the prompt's first block and the url, so router processes agree and
    different prefixes spread.

    A url that runs several data-parallel ranks (the index learns them from the events'
    `dp_rank`) is chosen as one engine by its deepest rank; the decision's `dp_rank` names the
    rank to pin (vLLM's `X-data-parallel-rank` header), or, for a prompt no rank holds, a rank
    chosen by its first block.

    Without a chain (no tokenizer, not a text prompt) or when no engine of the request has its
    events followed, the request goes to `PrefixAffinity`, which learns from every request.
    `observe`, when given, is told every decision (metrics; it must not do I/O).
    """

    name: str = "kv"
    needs: frozenset[Field] = frozenset({Field.PREFIX, Field.CHAIN})

    def __init__(
        self,
        index: KvIndex | None = None,
        queue_tokens: float = KV_QUEUE_TOKENS,
        abs_slack: float = KV_ABS_SLACK,
        rel_slack: float = KV_REL_SLACK,
        predictions: Predictions | None = None,
    ) -> None:
        self.index = index
        self.queue_tokens = queue_tokens
        self.abs_slack = abs_slack
        self.rel_slack = rel_slack
        self.predictions = predictions if predictions is not None else Predictions()
        # Requests routed without a chain (`_fallback`: a new prefix's first request goes at
        # once while its full encode runs), by their prefix chunk hashes: the requests after it
        # have chains, and without this guess they would go wherever is least loaded and pay
        # the same cold prefill again before the first one's events arrive.
        self._unchained = Predictions()
        self.observe: Callable[[KvDecision], None] | None = None
        # The data-parallel rank the last decision pins (KvDecision.dp_rank), for the caller
        # to send as `X-data-parallel-rank`; None: no pin.
        self.dp_rank: int | None = None
        self._prefix = PrefixAffinity()

    def choose(self, endpoints: Sequence[EndpointState], key: RouteKey) -> EndpointState | None:
        # Not sorted by url (as `_healthy` does): no decision here depends on the order (equal
        # costs go by `_tiebreak`), and sorting 64 endpoints is a tenth of a decision's time.
        healthy = [e for e in endpoints if e.healthy]
        self.dp_rank = None
        if not healthy:
            return None
        chain = key.chain
        index = self.index
        if index is None:
            return self._fallback(healthy, key, followed=False)
        if chain is None or not chain.blocks:
            followed = any(index.tracks(e.url) for e in healthy)
            return self._fallback(healthy, key, followed)
        urls = {e.url for e in healthy}
        held = index.match(chain.blocks, urls)
        if not held and not any(index.tracks(u) for u in urls):
            return self._fallback(healthy, key, followed=False)  # none of them sends events
        guessed = self.predictions.match(chain.blocks, urls, key.now)
        if key.prefix and len(self._unchained):
            self._guess_unchained(guessed, key.prefix, chain, urls, key.now)
        chosen, reason, cached = self._decide(healthy, chain, held, guessed)
        self.predictions.record(chain.blocks, chosen.url, key.now)
        self._prefix.learn(key.prefix, chosen.url)  # for when the events stop
        if index.rank_count(chosen.url) > 1:
            self.dp_rank = _dp_rank(index, chosen.url, held.get(chosen.url, 0), chain.blocks)
        if self.observe is not None:
            self.observe(KvDecision(key.model, reason, cached, chain.tokens, self.dp_rank))
        return chosen

    def _decide(
        self,
        healthy: list[EndpointState],
        chain: Chain,
        held: dict[str, int],
        guessed: dict[str, int],
    ) -> tuple[EndpointState, Reason, int]:
        size, tokens = chain.block_size, chain.tokens
        queue = self.queue_tokens
        # Requests at each engine, each counted once: the router's own in flight (exact, now)
        # or the engine's running and waiting (every router's, but as of the last scrape, up
        # to a probe interval old) when those are more. Summing the two counts this router's
        # requests twice, and a scrape taken during one long prefill step (a burst of
        # `waiting`) would repel the engine's prefixes until the next scrape.
        ahead, loads, limit = self._loads(healthy)
        # A prefill runs in the engine's steps, so every request in its batch waits for it: the
        # uncached tokens count once for this request and once for each request already there.
        # As if nothing were cached...
        costs = [tokens * (1 + n) + queue * load for n, load in zip(ahead, loads, strict=True)]
        depth = dict(held)
        for url, d in guessed.items():
            if d > depth.get(url, 0):
                depth[url] = d
        if depth:  # ...then what each engine holds is taken off (few engines hold a prefix)
            for i, e in enumerate(healthy):
                d = depth.get(e.url, 0)
                if d:
                    costs[i] -= min(tokens, d * size) * (1 + ahead[i])
        # The least loaded engine is always within the limit, so `allowed` is never empty.
        allowed = [c for c, load in zip(costs, loads, strict=True) if load <= limit]
        chosen = self._cheapest(healthy, costs, min(allowed), loads, limit, chain.blocks[0])
        d = depth.get(chosen.url, 0)
        cached = min(tokens, d * size)
        if min(costs) < min(allowed):
            reason = Reason.SHED
        elif d == 0:
            reason = Reason.MISS if not depth else Reason.BALANCE
        elif d < max(depth.values()):
            reason = Reason.BALANCE
        elif held.get(chosen.url, 0) < d:
            reason = Reason.PREDICTED
        else:
            reason = Reason.HIT
        return chosen, reason, cached

    def _loads(self, healthy: list[EndpointState]) -> tuple[list[int], list[float], float]:
        """Requests at each engine, each one's load, and the overload bound."""
        ahead = [
            e.inflight if e.inflight > (queued := e.running + e.waiting) else queued
            for e in healthy
        ]
        # the KV term (at most KV_WEIGHT) only separates engines with equal counts
        loads = [n + KV_WEIGHT * e.kv_usage for n, e in zip(ahead, healthy, strict=True)]
        # The overload bound, as consistent hashing with bounded loads has it (Mirrokni et al.):
        # up to (1 + rel_slack) x the fleet's mean load, or abs_slack over the least loaded.
        # Against the mean, not the least loaded engine (the minimum of noisy counts): when the
        # whole fleet is busy (a cold start's prefills), shedding a hit only adds a prefill to
        # an engine as busy.
        limit = max(min(loads) + self.abs_slack, (1.0 + self.rel_slack) * sum(loads) / len(loads))
        return ahead, loads, limit

    @staticmethod
    def _cheapest(
        healthy: list[EndpointState],
        costs: list[float],
        best: float,
        loads: list[float],
        limit: float,
        seed: int,
    ) -> EndpointState:
        """The allowed engine of cost `best`; ties broken by `_tiebreak` (hashed only then)."""
        tied = [
            e
            for e, c, load in zip(healthy, costs, loads, strict=True)
            if c == best and load <= limit
        ]
        if len(tied) == 1:
            return tied[0]
        return min(tied, key=lambda e: _tiebreak(seed, e.url))

    def _guess_unchained(
        self,
        guessed: dict[str, int],
        prefix: tuple[int, ...],
        chain: Chain,
        urls: Collection[str],
        now: float,
    ) -> None:
        """Add to `guessed` the engines this prompt's leading chunks were just sent to without a
        chain. One that got every chunk hashed (the prompt's first 16 chunks, or all of a
        shorter one) is credited with the whole chain: the prompts then share their first 4 KB
        or more, and a prefix-repetition burst shares all but its suffix (whose last block the
        credit leaves out). Fewer chunks are credited with what they cover, at the prefix
        policy's `PREFIX_CHUNK_TOKENS` a chunk. A guess: the cost model weighs it against load,
        and it lives only until the first request's events have surely arrived."""
        whole = len(chain.blocks) - 1
        for url, chunks in self._unchained.match(prefix, urls, now).items():
            if chunks == len(prefix):
                blocks = whole
            else:
                blocks = min(whole, int(chunks * PREFIX_CHUNK_TOKENS) // chain.block_size)
            if blocks > guessed.get(url, 0):
                guessed[url] = blocks

    def _fallback(
        self, healthy: list[EndpointState], key: RouteKey, followed: bool
    ) -> EndpointState | None:
        """Route as `prefix`; `followed`: some engine's events are followed (this request has
        no chain of its own), else the policy is plain `prefix` (a model without events)."""
        if not followed:
            return self._as_prefix(self._prefix.choose(healthy, key), key)
        # A prompt without a chain whose leading chunks went to an engine before (a request
        # that found the chain pool busy, mostly) stays there within this policy's overload
        # bound, not within the prefix policy's tighter load guard: elsewhere it would pay a
        # cold prefill on a fleet this busy.
        chosen: EndpointState | None = None
        found = self._prefix.holder(healthy, key.prefix)
        if found is not None:
            _, loads, limit = self._loads(healthy)
            if loads[healthy.index(found[0])] <= limit:
                chosen = found[0]
                self._prefix.learn(key.prefix, chosen.url)
        if chosen is None:
            chosen = self._prefix.choose(healthy, key)
        if chosen is not None and key.prefix:
            self._unchained.record(key.prefix, chosen.url, key.now)
        return self._as_prefix(chosen, key)

    def _as_prefix(self, chosen: EndpointState | None, key: RouteKey) -> EndpointState | None:
        if self.observe is not None:
            tokens = key.chain.tokens if key.chain is not None else 0
            self.observe(KvDecision(key.model, Reason.FALLBACK, 0, tokens))
        return chosen


def _dp_rank(index: KvIndex, url: str, depth: int, blocks: tuple[int, ...]) -> int:
    """The rank of a data-parallel engine a request should go to: the one holding its prefix,
    else one chosen by the prompt's first block (rendezvous), so that a burst of a new prefix,
    and every router process, pins the same rank before its events arrive."""
    rank = index.rank_holding(url, blocks, depth)
    if rank is not None:
        return rank
    return min(index.ranks(url), key=lambda r: _tiebreak(blocks[0], f"{url}#dp{r}"))


def _tiebreak(seed: int, url: str) -> int:
    """Rendezvous hash of a prompt's first block and an engine: equal costs go to the engine
    with the lowest, the same one in every router process."""
    return _hash64(seed.to_bytes(8, "big") + url.encode("utf-8", "surrogatepass"), _KV_PERSON)
