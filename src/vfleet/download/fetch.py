"""Moving bytes: worker threads fetch chunks of files in parallel, hash in order, land atomically.

Files are cut into chunks (64 MiB by default) and every worker takes the next chunk of the next
file, so one huge file is fetched over several connections and many small files run side by
side. Each worker owns one buffer: memory stays at `workers x buffer` whatever the file sizes.
A file's hash advances over its chunks in order as they complete (read back from the page
cache), and the file is renamed onto its final name only after its size and digest check out.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vfleet.download.errors import (
    ChecksumMismatch,
    DownloadError,
    TransferError,
    TransientError,
)
from vfleet.download.plan import FileEntry, Hasher
from vfleet.download.progress import Reporter
from vfleet.download.store import PartState, Store, disk_error


@dataclass(frozen=True, slots=True)
class FetchSettings:
    workers: int = 8  # concurrent connections
    chunk_bytes: int = 64 * 2**20  # unit of parallelism and of resume
    buffer_bytes: int = 2**20  # per worker
    retries: int = 5  # per chunk, for transient failures
    backoff_s: float = 0.5  # first retry delay; doubles each time


class ByteStream(Protocol):
    def readinto(self, buf: memoryview) -> int: ...
    def close(self) -> None: ...


class Opener(Protocol):
    """What a source gives the fetcher: a stream of bytes [start, end) of one listed file."""

    def open(self, entry: FileEntry, start: int, end: int) -> ByteStream: ...


class Cancelled(Exception):
    """Another worker failed; this one stops at the next buffer."""


@dataclass(eq=False)
class _Job:
    entry: FileEntry
    part: PartState
    hasher: Hasher | None
    done: set[int]
    hashed: int = 0  # chunks fed to the hasher, in order
    hashing: bool = False
    landed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True, slots=True)
class FetchStats:
    files: int
    fetched_bytes: int  # over the network in this run


class Fetcher:
    def __init__(
        self, store: Store, opener: Opener, settings: FetchSettings, reporter: Reporter
    ) -> None:
        self.store = store
        self.opener = opener
        self.settings = settings
        self.reporter = reporter
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._fetched = 0

    def run(self, jobs: Sequence[tuple[FileEntry, PartState]]) -> FetchStats:
        """Fetch every pending chunk of every job; raise the first error after all workers stop."""
        work = [
            _Job(e, p, e.checksum.hasher(e.size) if e.checksum else None, set(p.done))
            for e, p in jobs
        ]
        self._tasks = self._iter_tasks(work)
        n = max(1, min(self.settings.workers, sum(len(j.part.ranges) for j in work)))
        threads = [
            threading.Thread(target=self._worker, name=f"vfleet-dl-{i}", daemon=True)
            for i in range(n)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            self._stop.set()
            for t in threads:
                t.join()
            raise
        if self._errors:
            raise self._errors[0]
        return FetchStats(len(work), self._fetched)

    @staticmethod
    def _iter_tasks(jobs: list[_Job]) -> Iterator[tuple[_Job, int | None]]:
        for job in jobs:
            pending = [i for i in range(len(job.part.ranges)) if i not in job.done]
            if not pending:
                yield job, None  # everything on disk already: only hash and land it
            for i in pending:
                yield job, i

    def _next(self) -> tuple[_Job, int | None] | None:
        with self._lock:
            return next(self._tasks, None)

    def _worker(self) -> None:
        buf = memoryview(bytearray(self.settings.buffer_bytes))
        while not self._stop.is_set():
            task = self._next()
            if task is None:
                return
            job, index = task
            try:
                if index is not None:
                    self._fetch_chunk(job, index, buf)
                    with job.lock:
                        job.done.add(index)
                        self.store.mark_chunk(job.entry, index)
                self._advance_hash(job, buf)
            except Cancelled:
                return
            except OSError as exc:
                self._fail(disk_error(exc, job.part.path))
                return
            except BaseException as exc:
                self._fail(exc)
                return

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)
        self._stop.set()

    def _fetch_chunk(self, job: _Job, index: int, buf: memoryview) -> None:
        start, end = job.part.ranges[index]
        pos, attempt = start, 0
        fd = os.open(job.part.path, os.O_WRONLY)
        try:
            while pos < end:
                try:
                    pos = self._stream_into(fd, job.entry, pos, end, buf)
                except TransientError as exc:
                    attempt += 1
                    if attempt > self.settings.retries:
                        raise TransferError(
                            f"{job.entry.path}: giving up after {attempt} tries: {exc}"
                        ) from exc
                    if not job.entry.ranged:
                        # No ranges: the only way back in is from the first byte.
                        self.reporter.advance(start - pos)
                        pos = start
                    if self._stop.wait(self.settings.backoff_s * 2 ** (attempt - 1)):
                        raise Cancelled from exc
            # No fdatasync per chunk: a killed process leaves its writes in the page cache, and
            # after a power loss a chunk logged ahead of its bytes fails the final digest check
            # (the part is then removed). Syncing every chunk of concurrent writers tripled the
            # system time; the one fsync before the rename is what makes the file durable.
        finally:
            os.close(fd)

    def _stream_into(self, fd: int, entry: FileEntry, pos: int, end: int, buf: memoryview) -> int:
        stream = self.opener.open(entry, pos, end)
        try:
            while pos < end:
                if self._stop.is_set():
                    raise Cancelled
                n = stream.readinto(buf[: min(len(buf), end - pos)])
                if n <= 0:
                    raise TransientError(f"{entry.path}: connection closed at byte {pos}")
                view, off = buf[:n], 0
                while off < n:
                    off += os.pwrite(fd, view[off:], pos + off)
                pos += n
                with self._lock:
                    self._fetched += n
                self.reporter.advance(n)
        finally:
            stream.close()
        return pos

    def _advance_hash(self, job: _Job, buf: memoryview) -> None:
        """Feed completed chunks to the hasher in order; whoever hashes the last one lands it.

        Only one worker hashes a given file at a time; others just record their chunk and move
        on, and the hashing worker picks their chunks up before it lets go.
        """
        with job.lock:
            if job.hashing or job.landed:
                return
            job.hashing = True
        try:
            while True:
                with job.lock:
                    if job.hashed >= len(job.part.ranges) or job.hashed not in job.done:
                        finished = job.hashed >= len(job.part.ranges)
                        job.hashing = False
                        if finished:
                            job.landed = True
                        break
                    index = job.hashed
                if job.hasher is not None:
                    self._hash_range(job, *job.part.ranges[index], buf)
                _write_behind(job.part.path, *job.part.ranges[index])
                with job.lock:
                    job.hashed += 1
        except BaseException:
            with job.lock:
                job.hashing = False
            raise
        if finished:
            self._land(job)

    def _hash_range(self, job: _Job, start: int, end: int, buf: memoryview) -> None:
        assert job.hasher is not None
        fd = os.open(job.part.path, os.O_RDONLY)
        try:
            pos = start
            while pos < end:
                if self._stop.is_set():
                    raise Cancelled
                n = os.preadv(fd, [buf[: min(len(buf), end - pos)]], pos)
                if n <= 0:
                    raise DownloadError(f"{job.part.path} shrank while being verified")
                job.hasher.update(buf[:n])
                pos += n
        finally:
            os.close(fd)

    def _land(self, job: _Job) -> None:
        entry = job.entry
        if job.hasher is not None and entry.checksum is not None:
            got = job.hasher.hexdigest()
            if got != entry.checksum.hex:
                self.store.discard(entry)
                raise ChecksumMismatch(
                    f"{entry.path}: {entry.checksum.algo} mismatch (expected "
                    f"{entry.checksum.hex}, got {got}); the partial file was removed"
                )
        self.store.land(entry)
        self.reporter.file_done(entry)


def _write_behind(path: os.PathLike[str] | str, start: int, end: int) -> None:
    """Start writing a finished (and hashed) chunk to disk now and let its pages go.

    Otherwise gigabytes sit dirty in the page cache until the final fsync, which then stalls
    for seconds at the end, and the cache crowds out the engines sharing the node.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # advice only
    finally:
        os.close(fd)
