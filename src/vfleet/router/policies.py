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
from collections.abc import Sequence
from typing import Final, Protocol

from vfleet.router.state import EndpointState, RouteKey

POLICY_NAMES: Final[tuple[str, ...]] = ("round_robin", "least_load", "session", "prefix")

# least_load score weights: a waiting request costs a future prefill and a slot, so it counts
# double; the KV term only separates endpoints whose request counts are equal.
WAITING_WEIGHT: Final = 2.0
KV_WEIGHT: Final = 4.0

SESSION_VNODES: Final = 64  # ring points per endpoint
SESSION_BALANCE: Final = 1.25  # Mirrokni et al.'s c: capacity is ceil(c * average load)

PREFIX_INDEX_MAX: Final = 65536  # chunk hashes remembered by the prefix policy
PREFIX_ABS_SLACK: Final = 4.0  # extra load an affine endpoint may carry over the least loaded...
PREFIX_REL_SLACK: Final = 0.5  # ...or this fraction of the least loaded's load, if larger

_PREFIX_PERSON: Final = b"vfleet.prefix"  # blake2b personalisation: keeps the hash domains apart
_RING_PERSON: Final = b"vfleet.ring"
_SESSION_PERSON: Final = b"vfleet.session"


class Field(enum.Enum):
    """A request fact a policy may route on (see `RouteKey`)."""

    SESSION = "session"  # the session header or the body's `user`
    PREFIX = "prefix"  # hashes of the prompt's leading chunks


NO_FIELDS: Final[frozenset[Field]] = frozenset()


class Policy(Protocol):
    """Chooses a healthy endpoint for a request, or None when no endpoint is healthy."""

    name: str
    needs: frozenset[Field]  # what the request's RouteKey must carry besides the model

    def choose(self, endpoints: Sequence[EndpointState], key: RouteKey) -> EndpointState | None: ...


def make_policy(name: str) -> Policy:
    """A fresh policy object for one of `POLICY_NAMES`; ValueError for any other name."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_load":
        return LeastLoad()
    if name == "session":
        return SessionAffinity()
    if name == "prefix":
        return PrefixAffinity()
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


def prefix_hashes(text: str, chunk_chars: int = 256, max_chunks: int = 16) -> tuple[int, ...]:
    """Chained 64-bit hashes of the first full `chunk_chars`-character chunks of `text`.

    Hash i covers hash i-1 and chunk i (blake2b, 8-byte digest, over the previous hash as 8
    big-endian bytes and the chunk as UTF-8), so it identifies the whole prefix up to the end of
    chunk i, and equal prefixes give equal hashes in every process. Only full chunks count: a
    trailing partial chunk is too likely to differ between requests that share a template, and a
    prompt shorter than one chunk gives `()`, i.e. no prefix affinity. At most `max_chunks` hashes,
    so only the first `chunk_chars * max_chunks` characters are read.

    Chunks are characters, not tokens: the router does not tokenize, and matching prefixes only
    needs the same split on every request.
    """
    if chunk_chars < 1:
        raise ValueError("chunk_chars must be at least 1")
    if max_chunks < 0:
        raise ValueError("max_chunks must not be negative")
    count = min(len(text) // chunk_chars, max_chunks)
    out: list[int] = []
    parent = b"\x00" * 8
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
    than `max(abs_slack, rel_slack * least)`; then, as with no prefix or no match, `LeastLoad`
    chooses. The slack is what stops one prompt shared by every request (a common system
    prompt) from pinning all traffic to one replica: once its replica is that far ahead, the
    prefix moves to the least loaded one, and so on around the fleet.

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
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.abs_slack = abs_slack
        self.rel_slack = rel_slack
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
        if not prefix:
            return None
        by_url = {e.url: e for e in healthy}
        for h in reversed(prefix):
            url = self._index.get(h)
            match = None if url is None else by_url.get(url)
            if match is not None:
                least = min(load_score(e) for e in healthy)
                limit = least + max(self.abs_slack, self.rel_slack * least)
                return match if load_score(match) <= limit else None
        return None

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
