"""The router's metric values shared by all worker processes: one anonymous shared memory map,
created before the workers are forked, with one row per worker.

Each worker is the only writer of its row, so the hot path takes no lock: a counter increment
or a histogram observation is one or two additions at word indexes the worker resolved once,
when the series was first used. A scrape, on whichever worker the kernel hands it to,
sums the rows: the whole router's counts, whatever the number of workers. The parent keeps the
map, so the rows of a worker that exited stay in the sums and no counter goes backwards; its
gauges (what it held, such as open breakers) are zeroed when it exits (`zero`).

Lock-free reads, as in router.demand (the same reasoning, summarised):

- every value is one aligned 8-byte word (an int64 count, or a float64 histogram sum) written
  by one store of its single writer, so a reader sees the old or the new value, never a mix;
- a slot's series name changes only while the slot is retired or free, inside a per-slot
  sequence number that is odd during the change (a seqlock); a reader that sees an odd or a
  changed sequence skips the slot.

Bounded label sets: a series naming an endpoint that left the registry is kept for a grace
period (a replica that flaps keeps its counts), then retired. A retired slot hides its series
from every scrape, so workers that retire theirs a moment apart never show a partial sum (a
counter going down); after RETIRE_HOLD_S, past any worker's lag, the slot is freed for reuse.

Layout: rows of HEADER_WORDS + slots * SLOT_WORDS words. Row header: [0] slots used so far (a
high-water mark), [1] increments not recorded because the row was full. Slot: [0] sequence,
[1] family id (0: free), [2] name length, [3] retired flag, VALUE_WORDS values from VALUES,
then the series' label text (UTF-8, at most MAX_NAME bytes).
"""

from __future__ import annotations

import logging
import mmap
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Final, Generic, Protocol, TypeVar

log = logging.getLogger("vfleet.router.sharedmetrics")

HEADER_WORDS: Final = 8
SLOT_WORDS: Final = 64  # 512 bytes
SEQ: Final = 0
FAMILY: Final = 1
NAME_LEN: Final = 2
RETIRED: Final = 3
VALUES: Final = 4
VALUE_WORDS: Final = 20  # a histogram of up to 18 bounds: buckets (with +Inf), then its sum
NAME_WORD: Final = VALUES + VALUE_WORDS
MAX_NAME: Final = (SLOT_WORDS - NAME_WORD) * 8
DROPPED: Final = 1  # row header word: increments lost to a full row

DEFAULT_SLOTS: Final = 8192  # series per worker: 4 MiB of address space, touched pages only
ENDPOINT_GRACE_S: Final = 60.0  # a departed endpoint's series outlive it this long
RETIRE_HOLD_S: Final = 10.0  # retired slots stay hidden this long before reuse
READ_TRIES: Final = 3

K = TypeVar("K")


class SeriesFamily(Protocol):
    """What a row asks of its families when endpoints leave."""

    def endpoints(self) -> set[str]: ...

    def retire(self, url: str) -> list[int]: ...


class MetricsTable:
    """The shared map; `row(i)` is worker i's writer; `collect()` sums every row."""

    def __init__(self, buf: mmap.mmap, workers: int, slots: int) -> None:
        self.buf = buf
        self.words = memoryview(buf).cast("q")
        self.values = memoryview(buf).cast("d")
        self.workers = workers
        self.slots = slots
        self.row_words = HEADER_WORDS + slots * SLOT_WORDS

    @classmethod
    def create(cls, workers: int, slots: int = DEFAULT_SLOTS) -> MetricsTable:
        """A zeroed table; create it before forking so every worker shares the same pages."""
        if workers < 1 or slots < 1:
            raise ValueError("a metrics table needs at least one worker and one slot")
        size = workers * (HEADER_WORDS + slots * SLOT_WORDS) * 8
        return cls(mmap.mmap(-1, size), workers, slots)  # anonymous, MAP_SHARED: survives fork

    def row(self, worker: int, grace_s: float = ENDPOINT_GRACE_S) -> MetricsRow:
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} is not in 0..{self.workers - 1}")
        return MetricsRow(self, worker * self.row_words, grace_s)

    def dropped(self) -> int:
        w = self.words
        return sum(w[r * self.row_words + DROPPED] for r in range(self.workers))

    def collect(self, widths: Mapping[int, int]) -> dict[int, dict[str, list[float]]]:
        """family id -> label text -> values summed over all rows. `widths`: values per family,
        negative for a histogram (counts, then a float sum as the last value). A series any row
        has retired is left out whole."""
        sums: dict[int, dict[str, list[float]]] = {fid: {} for fid in widths}
        hidden: set[tuple[int, str]] = set()
        w = self.words
        for r in range(self.workers):
            base = r * self.row_words
            for s in range(min(w[base], self.slots)):
                got = self._read(base + HEADER_WORDS + s * SLOT_WORDS, widths)
                if got is None:
                    continue
                fid, name, retired, vals = got
                if retired:
                    hidden.add((fid, name))
                    continue
                acc = sums[fid].get(name)
                if acc is None:
                    sums[fid][name] = vals
                else:
                    for i, v in enumerate(vals):
                        acc[i] += v
        for fid, name in hidden:
            sums[fid].pop(name, None)
        return sums

    def zero(self, worker: int, families: Collection[int]) -> None:
        """Set worker `worker`'s series of `families` to 0: the gauges of a worker that has
        exited (what it held went with it; its counters stay summed). Only once it is gone: a
        row has one writer. Each value is one word store, so a scrape sees it before or after."""
        w = self.words
        base = worker * self.row_words
        for s in range(min(w[base], self.slots)):
            i = base + HEADER_WORDS + s * SLOT_WORDS
            if w[i + FAMILY] in families:
                for v in range(i + VALUES, i + VALUES + VALUE_WORDS):
                    w[v] = 0

    def _read(self, i: int, widths: Mapping[int, int]) -> tuple[int, str, bool, list[float]] | None:
        w = self.words
        for _ in range(READ_TRIES):
            seq = w[i + SEQ]
            if seq & 1:
                continue
            fid = w[i + FAMILY]
            width = widths.get(fid, 0)
            if width == 0:
                return None  # free, or a family this reader does not know
            n = min(max(w[i + NAME_LEN], 0), MAX_NAME)
            start = (i + NAME_WORD) * 8
            raw = bytes(self.buf[start : start + n])
            retired = w[i + RETIRED] != 0
            at = i + VALUES
            if width > 0:
                vals = [float(n) for n in w[at : at + width]]
            else:
                vals = [float(n) for n in w[at : at - width - 1]]
                vals.append(self.values[at - width - 1])
            if w[i + SEQ] == seq:
                return fid, raw.decode("utf-8", "replace"), retired, vals
        return None


class MetricsRow:
    """One worker's row: claims slots for series, retires those of departed endpoints."""

    def __init__(self, table: MetricsTable, base: int, grace_s: float) -> None:
        self.table = table
        self.base = base
        self.grace_s = grace_s
        self.words = table.words
        self.values = table.values
        self.free: list[int] = []  # freed slots, reused before new ones
        self.families: list[SeriesFamily] = []
        self.departed: dict[str, float] = {}  # endpoint url -> when first seen unlisted
        self.retiring: deque[tuple[float, int]] = deque()  # (retired at, slot), oldest first
        self.full_logged = False
        # A worker forked again into this row (router.app) takes over what the one before left:
        # its live series, claimed again by name with their counts (no counter starts over),
        # its free slots, and the slots it had retired (freed after RETIRE_HOLD_S from the
        # first sweep), so restarts neither fill the row nor hide a series for good.
        self.adopted: dict[tuple[int, bytes], int] = {}
        self.retired_before: list[int] = []
        w = table.words
        for s in range(min(w[base], table.slots)):
            slot = base + HEADER_WORDS + s * SLOT_WORDS
            if w[slot + FAMILY] == 0:
                self.free.append(slot)
            elif w[slot + RETIRED]:
                self.retired_before.append(slot)
            else:
                n = min(max(w[slot + NAME_LEN], 0), MAX_NAME)
                start = (slot + NAME_WORD) * 8
                name = bytes(table.buf[start : start + n])
                self.adopted.setdefault((w[slot + FAMILY], name), slot)

    def claim(self, fid: int, name: str) -> int:
        """A zeroed slot for the series `name` of family `fid`; -1 when the row is full."""
        raw = name.encode()
        w = self.table.words
        if len(raw) > MAX_NAME:
            return self._full(f"labels longer than {MAX_NAME} bytes: {name[:60]}...")
        slot = self.take(fid, raw)
        if slot >= 0:
            return slot  # the series of the worker before in this row: counts carry on
        if self.free:
            slot = self.free.pop()
        elif w[self.base] < self.table.slots:
            slot = self.base + HEADER_WORDS + w[self.base] * SLOT_WORDS
        else:
            return self._full(f"all {self.table.slots} series slots in use")
        w[slot + SEQ] += 1  # odd: changing
        w[slot + FAMILY] = fid
        w[slot + NAME_LEN] = len(raw)
        w[slot + RETIRED] = 0
        for v in range(VALUES, VALUES + VALUE_WORDS):
            w[slot + v] = 0  # all-zero bits: 0 and 0.0 alike
        start = (slot + NAME_WORD) * 8
        self.table.buf[start : start + len(raw)] = raw
        w[slot + SEQ] += 1  # even again: readable
        if slot == self.base + HEADER_WORDS + w[self.base] * SLOT_WORDS:
            w[self.base] += 1  # published only once the slot is complete
        return slot

    def take(self, fid: int, raw: bytes) -> int:
        """The slot of series `raw` of family `fid` that the worker before in this row left
        (its values as they are), else -1."""
        return self.adopted.pop((fid, raw), -1) if self.adopted else -1

    def sweep(self, listed: Collection[str], now: float) -> None:
        """Retire the series of endpoints unlisted for `grace_s`, free slots retired for
        RETIRE_HOLD_S. Called every second or so; `listed`: the endpoints known now."""
        if self.retired_before:
            self.retiring.extend((now, slot) for slot in self.retired_before)
            self.retired_before = []
        seen: set[str] = set()
        for family in self.families:
            for url in family.endpoints():
                if url in listed:
                    continue
                seen.add(url)
                since = self.departed.setdefault(url, now)
                if now - since >= self.grace_s:
                    for slot in family.retire(url):
                        self.table.words[slot + RETIRED] = 1
                        self.retiring.append((now, slot))
        for url in list(self.departed):
            if url not in seen:
                del self.departed[url]  # back, or no series of it left
        w = self.table.words
        while self.retiring and now - self.retiring[0][0] >= RETIRE_HOLD_S:
            _, slot = self.retiring.popleft()
            w[slot + SEQ] += 1
            w[slot + FAMILY] = 0
            w[slot + SEQ] += 1
            self.free.append(slot)

    def _full(self, why: str) -> int:
        """A bounded table: say so once, count what is lost, skip it."""
        self.table.words[self.base + DROPPED] += 1
        if not self.full_logged:
            self.full_logged = True
            log.warning("metrics table row: %s; further series are not counted", why)
        return -1


class SharedCounter(Generic[K]):
    """A counter family keyed like a `collections.Counter` (`c[key] += 1` works; reading it
    gives this worker's own counts: `MetricsTable.collect` sums all), its values in this
    worker's row. `inc(key)` is the cheaper way to count (one index lookup).
    `label_text(key)` renders a key's labels; `endpoint_of(key)` names the endpoint a key is
    about ("" for none): those series retire with their endpoint."""

    def __init__(
        self,
        row: MetricsRow,
        fid: int,
        label_text: Callable[[K], str],
        endpoint_of: Callable[[K], str] | None = None,
    ) -> None:
        self.row = row
        self.fid = fid
        self.label_text = label_text
        self.endpoint_of = endpoint_of
        self.words = row.words
        self.index: dict[K, int] = {}  # key -> word index of its value
        row.families.append(self)

    def __getitem__(self, key: K) -> int:
        i = self.index.get(key)
        if i is None:
            # `c[key] += 1` reads first: a series the worker before in this row left is taken
            # over here, or the write would start its count over.
            slot = self.row.take(self.fid, self.label_text(key).encode())
            if slot < 0:
                return 0
            i = self.index[key] = slot + VALUES
        return self.words[i]

    def __setitem__(self, key: K, value: int) -> None:
        i = self.index.get(key)
        if i is None:
            i = self._claim(key)
            if i < 0:
                return
        self.words[i] = value

    def inc(self, key: K, n: int = 1) -> None:
        i = self.index.get(key)
        if i is None:
            i = self._claim(key)
            if i < 0:
                return
        self.words[i] += n

    def __iter__(self) -> Iterator[K]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def items(self) -> list[tuple[K, int]]:
        """This worker's own counts."""
        w = self.words
        return [(k, w[i]) for k, i in self.index.items()]

    def _claim(self, key: K) -> int:
        slot = self.row.claim(self.fid, self.label_text(key))
        if slot < 0:
            return -1
        self.index[key] = slot + VALUES
        return slot + VALUES

    def endpoints(self) -> set[str]:
        if self.endpoint_of is None:
            return set()
        return {url for url in map(self.endpoint_of, self.index) if url}

    def retire(self, url: str) -> list[int]:
        """Forget this worker's series of `url`; their slots, to be marked retired."""
        if self.endpoint_of is None:
            return []
        gone = [k for k in self.index if self.endpoint_of(k) == url]
        return [self.index.pop(k) - VALUES for k in gone]


class SharedHistogram:
    """One histogram series: cumulative buckets are rendered from per-bucket counts."""

    def __init__(self, row: MetricsRow, at: int, bounds: tuple[float, ...]) -> None:
        self.words = row.words
        self.values = row.values
        self.at = at  # word index of the first bucket; the sum follows the +Inf bucket
        self.sum_at = at + len(bounds) + 1
        self.bounds = bounds

    def observe(self, v: float) -> None:
        self.words[self.at + bisect_left(self.bounds, v)] += 1
        self.values[self.sum_at] += v


class HistogramFamily:
    """Histograms by one label value (or one, unlabelled, under the key "")."""

    def __init__(
        self, row: MetricsRow, fid: int, bounds: tuple[float, ...], label: str = ""
    ) -> None:
        if len(bounds) + 2 > VALUE_WORDS:
            raise ValueError(f"a shared histogram has at most {VALUE_WORDS - 2} bounds")
        self.row = row
        self.fid = fid
        self.bounds = bounds
        self.label = label
        self.series: dict[str, SharedHistogram] = {}
        self.width = len(bounds) + 2
        row.families.append(self)

    def get(self, key: str) -> SharedHistogram | None:
        hist = self.series.get(key)
        if hist is None:
            name = "" if not self.label else f'{self.label}="{_escape(key)}"'
            slot = self.row.claim(self.fid, name)
            if slot < 0:
                return None
            hist = self.series[key] = SharedHistogram(self.row, slot + VALUES, self.bounds)
        return hist

    def observe(self, key: str, v: float) -> None:
        hist = self.get(key)
        if hist is not None:
            hist.observe(v)

    def __iter__(self) -> Iterator[str]:
        return iter(self.series)

    def __contains__(self, key: object) -> bool:
        return key in self.series

    def endpoints(self) -> set[str]:
        return set()  # no histogram is labelled by endpoint

    def retire(self, url: str) -> list[int]:
        return []


def _escape(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
