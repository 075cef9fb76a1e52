"""Per-key limit windows shared by all router worker processes: one anonymous shared memory map,
created before the workers are forked, one row per worker (as router.sharedmetrics).

A worker writes only its own row, so no lock is taken, and a worker killed at any moment leaves
nothing locked: what it charged stays counted until its buckets leave the window. A decision
reads the key's slot in every row and adds the windows up (router.ratelimit), so every worker
sees every worker's charges; two workers admitting at the same instant may each let one more
request through than the sum allows (at most one per worker), never more.

Slots: a key's slot index comes from its name (`assign`), the same in every worker that read the
same key file. Each slot starts with a tag (a hash of the key's name): a reader only adds a row's
slot whose tag is the key's, so a slot another key used before (a key removed, a worker still on
the previous file) is never counted for this one. Each region (requests, tokens per minute,
tokens per day) is preceded by its bucket width in microseconds: a limit changed in the file
(hence another width) starts its window afresh rather than misreading the old buckets.

Peer routers (router.peerlimits): a table made with `peers=True` has one more row, written only
by the worker that polls the other router replicas: their usage, per key, in this host's bucket
epochs. Readers add it as any row. It is rewritten in place once per poll, so a bucket of it may
change after its epoch has passed: a header word counts the polls (`generation`), and a worker's
sum of past buckets is kept only while the generation stays the same. The header also holds how
many replicas' usage the peer row covers (`share`): the decision scales each limit by it when some
are unreachable (router.peerlimits.scaled). Only the worker rows are what this router answers
when its peers ask (`local_ages`), so no replica's usage comes back to it through another.

Layout: rows of `slots * SLOT_WORDS` words (the workers', then the peers' row if any), then
HEADER_WORDS words; slot: [0] tag, then per region its width word and its bucket words
(router.ratelimit.pack).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterable
from typing import Final

from vfleet.router.ratelimit import HALF, LOW, Window, ages, fits, pack, used

SLOT_WORDS: Final = 64
TAG: Final = 0
REQUESTS: Final = 1  # region: width word, then 13 bucket words (Window.words)
TOKENS_MINUTE: Final = 15  # width word, then 13 bucket words
TOKENS_DAY: Final = 29  # width word, then 25 bucket words
REGION_WORDS: Final = {REQUESTS: 13, TOKENS_MINUTE: 13, TOKENS_DAY: 25}
DEFAULT_SLOTS: Final = 4096  # keys per table, twice the most a key file may hold
MAX_KEYS: Final = DEFAULT_SLOTS // 2
HEADER_WORDS: Final = 4  # after the rows: generation, replicas known, expected, instance
GENERATION: Final = 0
KNOWN: Final = 1
EXPECTED: Final = 2
INSTANCE: Final = 3  # a random id of this router (all its workers): a peer that is itself


def tag_of(name: str) -> int:
    """A non-zero 63-bit tag for a key name (0 marks a slot never written)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


def assign(names: Iterable[str], slots: int = DEFAULT_SLOTS) -> dict[str, int]:
    """Slot of each key name: its tag modulo `slots`, the next free one on a collision, names
    taken in tag order, so every process reading the same names gets the same slots."""
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    unique = sorted(set(names), key=lambda n: (tag_of(n), n))
    if len(unique) > slots:
        raise ValueError(f"{len(unique)} keys; the limit table holds {slots}")
    for name in unique:
        s = tag_of(name) % slots
        while s in taken:
            s = (s + 1) % slots
        taken[s] = name
        out[name] = s
    return out


class LimitTable:
    """The shared map; `row(i)` is worker i's writer and reads every row."""

    def __init__(self, buf: mmap.mmap, workers: int, slots: int, peers: bool = False) -> None:
        self.buf = buf
        self.words = memoryview(buf).cast("q")
        self.workers = workers
        self.slots = slots
        self.peers = peers
        self.row_words = slots * SLOT_WORDS
        self.header = (workers + peers) * self.row_words

    @classmethod
    def create(cls, workers: int, slots: int = DEFAULT_SLOTS, peers: bool = False) -> LimitTable:
        """A zeroed table; create it before forking so every worker shares the same pages
        (2 MiB of address space per worker by default; only slots in use are touched).
        `peers`: with the row of the peer routers' usage."""
        if workers < 1 or slots < 1:
            raise ValueError("a limit table needs at least one worker and one slot")
        size = ((workers + peers) * slots * SLOT_WORDS + HEADER_WORDS) * 8
        table = cls(mmap.mmap(-1, size), workers, slots, peers)
        table.words[table.header + INSTANCE] = (int.from_bytes(os.urandom(8), "big") >> 2) or 1
        return table

    def row(self, worker: int) -> LimitRow:
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} is not in 0..{self.workers - 1}")
        return LimitRow(self, worker * self.row_words)

    def peer_row(self) -> PeerRow:
        """The writer of the peers' row (one process only: the one that polls them)."""
        if not self.peers:
            raise ValueError("this limit table has no peer row")
        return PeerRow(self)

    def instance(self) -> int:
        """This router's id among its peers (random, shared by its workers)."""
        return self.words[self.header + INSTANCE]

    def generation(self) -> int:
        """Peer-row rewrites so far."""
        return self.words[self.header + GENERATION]

    def share(self) -> tuple[int, int]:
        """(replicas whose usage is counted, replicas expected); (0, 0) before the first poll."""
        w, h = self.words, self.header
        return w[h + KNOWN], w[h + EXPECTED]

    def local_ages(self, slot: int, tag: int, region: int, window: Window, now: float) -> list[int]:
        """The key's units per bucket age in `region`, summed over the worker rows only: this
        router's own usage, which is what its peers are told ([] when no worker counted any:
        most keys, most of the time)."""
        w = self.words
        n = min(window.words, REGION_WORDS[region])
        width = window.width_us
        rows: list[list[int]] = []
        for r in range(self.workers):
            i = r * self.row_words + slot * SLOT_WORDS
            if w[i + TAG] == tag and w[i + region] == width:
                rows.append(w[i + region + 1 : i + region + 1 + n].tolist())
        return ages(window, rows, now) if rows else []


class LimitRow:
    """One worker's writer; its reads add up every worker's row.

    Every worker writes only into the bucket of the current epoch (one clock for all), so a
    bucket is final once its epoch has passed: the sum of a window's past buckets is kept per
    key and region until the epoch changes, and a decision reads just the current bucket of
    each row. (A write racing the epoch's end by a few instructions may be missed by that sum
    for one bucket width: a limit may then let one more request through.)"""

    def __init__(self, table: LimitTable, base: int) -> None:
        self.table = table
        self.base = base
        self.words = table.words
        self.index = base // table.row_words  # the worker's
        self.rows = tuple(r * table.row_words for r in range(table.workers + table.peers))
        self.generation_at = table.header + GENERATION
        # (slot, region) -> (epoch, tag, width, units in the window's past buckets (all rows),
        # peer-row generation)
        self.past: dict[tuple[int, int], tuple[int, int, int, int, int]] = {}

    def bucket_words(self, slot: int, tag: int, region: int, window: Window) -> list[int]:
        """The key's bucket words in `region`, every worker's, in one list."""
        w = self.words
        width = window.width_us
        n = min(window.words, REGION_WORDS[region])
        out: list[int] = []
        at = slot * SLOT_WORDS
        for base in self.rows:
            i = base + at
            if w[i + TAG] == tag and w[i + region] == width:
                out += w[i + region + 1 : i + region + 1 + n].tolist()
        return out

    def wait(
        self, slot: int, tag: int, region: int, window: Window, now: float, cost: float
    ) -> float:
        """0.0 when `cost` more fits in the key's window (all workers), else seconds to wait."""
        epoch = window.epoch(now)
        width = window.width_us
        key = (slot, region)
        past = self.past.get(key)
        w = self.words
        gen = w[self.generation_at]
        if past is None or past[0] != epoch or past[1] != tag or past[2] != width or past[4] != gen:
            words = self.bucket_words(slot, tag, region, window)
            total = used(window, words, now) - _current(words, epoch)
            past = self.past[key] = (epoch, tag, width, total, gen)
        n = min(window.words, REGION_WORDS[region])
        at = slot * SLOT_WORDS + region
        bucket = at + 1 + epoch % n
        total = past[3]
        for base in self.rows:
            if w[base + at - region + TAG] == tag and w[base + at] == width:
                x = w[base + bucket] + HALF
                if x >> 32 == epoch:
                    total += (x & LOW) - HALF
        if max(0, total) + min(cost, window.limit) <= window.limit:
            return 0.0
        return fits(window, self.bucket_words(slot, tag, region, window), now, cost)

    def by_age(self, slot: int, tag: int, region: int, window: Window, now: float) -> list[int]:
        """The key's units per bucket age in `region`, all workers."""
        return ages(window, [self.bucket_words(slot, tag, region, window)], now)

    def add(self, slot: int, tag: int, region: int, window: Window, now: float, n: int) -> None:
        """Count `n` units (negative: give back) in this worker's current bucket."""
        w = self.words
        i = self.base + slot * SLOT_WORDS
        if w[i + TAG] != tag:
            # Another key used this slot here before: hide it (tag 0), clear, then claim.
            w[i + TAG] = 0
            for k in range(1, SLOT_WORDS):
                w[i + k] = 0
            w[i + TAG] = tag
        width = window.width_us
        buckets = min(window.words, REGION_WORDS[region])
        if w[i + region] != width:
            w[i + region] = 0  # no reader adds this region while it is cleared
            for k in range(1, buckets + 1):
                w[i + region + k] = 0
            w[i + region] = width
        epoch = window.epoch(now)
        at = i + region + 1 + epoch % buckets
        x = w[at] + HALF
        count = (x & LOW) - HALF + n if x >> 32 == epoch else n
        w[at] = pack(epoch, count)


class PeerRow:
    """The writer of the peers' row: each poll writes every key's merged usage in place (never
    cleared first: a reader between two stores sees the old or the new count of a bucket, never
    a window emptied for a moment), then `publish` counts the poll."""

    def __init__(self, table: LimitTable) -> None:
        self.table = table
        self.words = table.words
        self.base = table.workers * table.row_words

    def write(
        self,
        slot: int,
        tag: int,
        region: int,
        window: Window,
        now: float,
        counts: dict[int, int],
    ) -> None:
        """The key's units in `region` by bucket epoch (this host's); epochs outside the window
        now are left out, buckets not in `counts` are zero."""
        w = self.words
        i = self.base + slot * SLOT_WORDS
        if w[i + TAG] != tag:
            w[i + TAG] = 0  # another key's slot before: hidden while it is cleared
            for k in range(1, SLOT_WORDS):
                w[i + k] = 0
            w[i + TAG] = tag
        n = min(window.words, REGION_WORDS[region])
        width = window.width_us
        if w[i + region] != width:
            w[i + region] = 0
            for k in range(1, n + 1):
                w[i + region + k] = 0
            w[i + region] = width
        current = window.epoch(now)
        for epoch in range(current - n + 1, current + 1):
            w[i + region + 1 + epoch % n] = pack(epoch, counts.get(epoch, 0))

    def clear(self, slot: int, region: int) -> None:
        """Nothing counted in `region` of this slot any more (its width word first: no reader
        adds the region while its buckets are zeroed)."""
        w = self.words
        i = self.base + slot * SLOT_WORDS + region
        w[i] = 0
        for k in range(1, REGION_WORDS[region] + 1):
            w[i + k] = 0

    def publish(self, known: int, expected: int) -> None:
        """A poll is written: its replica counts, then the generation readers key their sums on."""
        w, h = self.words, self.table.header
        w[h + KNOWN] = known
        w[h + EXPECTED] = expected
        w[h + GENERATION] = w[h + GENERATION] + 1


def _current(words: list[int], epoch: int) -> int:
    """Units in the buckets of `epoch` among `words`."""
    total = 0
    for word in words:
        x = word + HALF
        if x >> 32 == epoch:
            total += (x & LOW) - HALF
    return total
