"""Demand shared by all router worker processes: requests in flight and held, per model and
per endpoint, in one anonymous shared memory map created before the workers are forked.

Each worker owns one row and is its only writer, so no lock is needed. Any process (a worker
answering `GET /vfleet/demand`, the external scaler's process) sums the rows.

Reading without locks is safe enough for demand figures, and exact for the words that matter:

- every counter is one aligned 8-byte word, written by one store of its single writer, so a
  reader sees the old or the new value, never a torn mix;
- a slot's name changes only while its counters are all zero (claimed or reclaimed), inside a
  per-slot sequence number that is odd while the change is in progress (a seqlock); a reader
  that sees an odd or changed sequence skips the slot, losing nothing from any sum;
- a sum over rows is not one instant's snapshot, but each addend was true a moment ago, which
  is all a scaler that polls every few milliseconds can use anyway.

(The seqlock relies on stores becoming visible in program order, as they do on x86-64.)

Layout: rows of `ROW_WORDS` 8-byte words; a row starts with a header (slots ever used, held
total), then `slots` slots of `SLOT_WORDS` words: sequence, kind, name length, three counters,
and the name's bytes (at most `MAX_NAME` of UTF-8).
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("vfleet.router.demand")

HEADER_WORDS: Final = 8  # [0] slots used so far (high-water mark), [1] held requests in the row
SLOT_WORDS: Final = 32  # 256 bytes
NAME_WORD: Final = 6  # the name's bytes start at this word of a slot
MAX_NAME: Final = (SLOT_WORDS - NAME_WORD) * 8  # bytes; longer names are not counted

FREE: Final = 0
MODEL: Final = 1
ENDPOINT: Final = 2

# Counter offsets within a slot (words 3..5). A model slot counts all three; an endpoint slot
# counts its requests in flight and whether this worker lists it now (1) or not (0).
INFLIGHT: Final = 3
HELD: Final = 4
REQUESTS: Final = 5
LISTED: Final = 4

READ_TRIES: Final = 3  # a slot still changing after this many reads is skipped


@dataclass(frozen=True, slots=True)
class Demand:
    inflight: int = 0  # requests being answered by an engine
    held: int = 0  # requests waiting for a ready engine
    requests: int = 0  # requests received (forwarded or answered by the router), cumulative


class DemandTable:
    """The shared map; `row(i)` is worker i's writer, the rest reads sums over all rows."""

    def __init__(self, buf: mmap.mmap, workers: int, slots: int) -> None:
        self.buf = buf
        self.words = memoryview(buf).cast("q")
        self.workers = workers
        self.slots = slots
        self.row_words = HEADER_WORDS + slots * SLOT_WORDS

    @classmethod
    def create(cls, workers: int, slots: int = 1024) -> DemandTable:
        """A zeroed table; create it before forking so every worker shares the same pages."""
        if workers < 1 or slots < 1:
            raise ValueError("a demand table needs at least one worker and one slot")
        size = workers * (HEADER_WORDS + slots * SLOT_WORDS) * 8
        return cls(mmap.mmap(-1, size), workers, slots)  # anonymous, MAP_SHARED: survives fork

    def row(self, worker: int) -> DemandRow:
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} is not in 0..{self.workers - 1}")
        return DemandRow(self, worker * self.row_words)

    def held(self) -> int:
        """Requests held across all workers (the row headers only: cheap enough to poll)."""
        w = self.words
        return sum(w[r * self.row_words + 1] for r in range(self.workers))

    def models(self) -> dict[str, Demand]:
        sums: dict[str, list[int]] = {}
        for kind, name, a, b, c in self._entries():
            if kind == MODEL:
                acc = sums.setdefault(name, [0, 0, 0])
                acc[0] += a
                acc[1] += b
                acc[2] += c
        return {name: Demand(a, b, c) for name, (a, b, c) in sums.items()}

    def endpoints(self) -> dict[str, int]:
        """url -> requests in flight, for urls some worker lists or still has requests to."""
        out: dict[str, int] = {}
        for kind, name, inflight, listed, _ in self._entries():
            if kind == ENDPOINT and (listed or inflight or name in out):
                out[name] = out.get(name, 0) + inflight
        return out

    def as_dict(self) -> dict[str, Any]:
        """What `GET /vfleet/demand` answers."""
        models = {
            name: {"inflight": d.inflight, "held": d.held, "requests": d.requests}
            for name, d in sorted(self.models().items())
        }
        return {
            "models": models,
            "endpoints": dict(sorted(self.endpoints().items())),
            "workers": self.workers,
        }

    def clear_row(self, worker: int) -> None:
        """Forget what a worker that has exited had live: its in-flight and held counts and the
        endpoints it listed (its cumulative request counts stay). Only once it is gone: a row
        has one writer."""
        w = self.words
        base = worker * self.row_words
        for s in range(w[base]):
            i = base + HEADER_WORDS + s * SLOT_WORDS
            w[i + INFLIGHT] = 0
            w[i + 4] = 0  # HELD of a model, LISTED of an endpoint
            if w[i + 1] == ENDPOINT:
                w[i + 1] = FREE
        w[base + 1] = 0

    def _entries(self) -> list[tuple[int, str, int, int, int]]:
        """(kind, name, counter 3, counter 4, counter 5) of every slot in use, all rows."""
        out = []
        w = self.words
        for r in range(self.workers):
            base = r * self.row_words
            for s in range(min(w[base], self.slots)):
                entry = self._read(base + HEADER_WORDS + s * SLOT_WORDS)
                if entry is not None:
                    out.append(entry)
        return out

    def _read(self, i: int) -> tuple[int, str, int, int, int] | None:
        w = self.words
        for _ in range(READ_TRIES):
            seq = w[i]
            if seq & 1:
                continue
            kind = w[i + 1]
            if kind == FREE:
                return None
            n = min(max(w[i + 2], 0), MAX_NAME)
            start = (i + NAME_WORD) * 8
            raw = bytes(self.buf[start : start + n])
            a, b, c = w[i + 3], w[i + 4], w[i + 5]
            if w[i] == seq:
                return kind, raw.decode("utf-8", "replace"), a, b, c
        return None


class DemandRow:
    """One worker's row: the only writer of it. Slots are found by name in a private index."""

    def __init__(self, table: DemandTable, base: int) -> None:
        self.table = table
        self.base = base
        self.models: dict[str, int] = {}  # name -> word index of its slot
        self.endpoints: dict[str, int] = {}
        self.urls: dict[int, str] = {}  # endpoint slot -> url, to reclaim by slot
        self.free: list[int] = []  # reclaimed slots, reused before new ones
        self.full_logged = False
        # A worker forked again into this row (router.app) takes over what the one before left
        # (cleared by `clear_row`): its models' slots, whose request counts carry on, and the
        # free slots, so restarts do not fill the row.
        w = table.words
        for s in range(min(w[base], table.slots)):
            slot = base + HEADER_WORDS + s * SLOT_WORDS
            if w[slot + 1] == MODEL:
                n = min(max(w[slot + 2], 0), MAX_NAME)
                start = (slot + NAME_WORD) * 8
                name = bytes(table.buf[start : start + n]).decode("utf-8", "replace")
                self.models.setdefault(name, slot)
            elif w[slot + 1] == FREE:
                self.free.append(slot)

    def model(self, name: str) -> int:
        """The slot of a model (claimed on first use), or -1 when the row is full."""
        slot = self.models.get(name)
        if slot is None:
            slot = self._claim(MODEL, name)
            if slot >= 0:
                self.models[name] = slot
        return slot

    def endpoint(self, url: str) -> int:
        slot = self.endpoints.get(url)
        if slot is None:
            slot = self._claim(ENDPOINT, url)
            if slot >= 0:
                self.endpoints[url] = slot
                self.urls[slot] = url
        return slot

    def add(self, slot: int, counter: int, delta: int) -> None:
        """Add to one counter of a slot (-1, a slot never claimed, is ignored)."""
        if slot < 0:
            return
        w = self.table.words
        w[slot + counter] += delta
        if counter == HELD and w[slot + 1] == MODEL:
            w[self.base + 1] += delta

    def endpoint_done(self, slot: int) -> None:
        """A request to an endpoint ended; its slot is reclaimed once unlisted and idle."""
        if slot < 0:
            return
        w = self.table.words
        w[slot + INFLIGHT] -= 1
        if w[slot + INFLIGHT] <= 0 and not w[slot + LISTED]:
            self._reclaim(slot)

    def set_endpoints(self, urls: Iterable[str]) -> None:
        """The endpoints this worker lists now; the others are unlisted (and reclaimed when
        nothing is in flight to them)."""
        w = self.table.words
        wanted = set(urls)
        for url in wanted:
            slot = self.endpoint(url)
            if slot >= 0:
                w[slot + LISTED] = 1
        for url, slot in list(self.endpoints.items()):
            if url not in wanted:
                w[slot + LISTED] = 0
                if w[slot + INFLIGHT] <= 0:
                    self._reclaim(slot)

    def _claim(self, kind: int, name: str) -> int:
        raw = name.encode()
        if len(raw) > MAX_NAME:
            self._full(f"name longer than {MAX_NAME} bytes: {name[:60]}...")
            return -1
        w = self.table.words
        if self.free:
            slot = self.free.pop()
        elif w[self.base] < self.table.slots:
            slot = self.base + HEADER_WORDS + w[self.base] * SLOT_WORDS
        else:
            self._full(f"all {self.table.slots} slots in use")
            return -1
        w[slot] += 1  # odd: changing
        w[slot + 1] = kind
        w[slot + 2] = len(raw)
        for c in range(3, NAME_WORD):
            w[slot + c] = 0
        start = (slot + NAME_WORD) * 8
        self.table.buf[start : start + len(raw)] = raw
        w[slot] += 1  # even again: readable
        if slot == self.base + HEADER_WORDS + w[self.base] * SLOT_WORDS:
            w[self.base] += 1  # published only once the slot is complete
        return slot

    def _reclaim(self, slot: int) -> None:
        w = self.table.words
        w[slot] += 1
        w[slot + 1] = FREE
        w[slot] += 1
        url = self.urls.pop(slot, None)
        if url is not None:
            del self.endpoints[url]
        self.free.append(slot)

    def _full(self, why: str) -> None:
        """A bounded table: say so once, then skip what does not fit."""
        if not self.full_logged:
            self.full_logged = True
            log.warning("demand table row: %s; further names are not counted", why)
