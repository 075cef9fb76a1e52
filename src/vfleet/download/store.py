"""The target directory on disk: part files, their chunk logs, completion records, atomic landing.

Layout inside `--to`:
    a/b.safetensors                     a finished file, only ever put there by os.replace
    a/.b.safetensors.vfleet-part        bytes in progress (sparse, full size from the start)
    a/.b.safetensors.vfleet-part.chunks JSON header line, then one line per chunk on disk
    .vfleet/download/files/<id>.json    what a finished file was verified against
A re-run trusts a finished file whose record matches the listing and the file's size and mtime,
so it does not have to hash hundreds of GB again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vfleet.download.errors import DiskFull, DownloadError
from vfleet.download.plan import PART_SUFFIX, STATE_DIR, FileEntry, chunks

RECORDS = f"{STATE_DIR}/download/files"


@dataclass(frozen=True, slots=True)
class PartState:
    """A part file ready for writing, and which of its chunks are already on disk."""

    path: Path
    ranges: list[tuple[int, int]]
    done: frozenset[int]

    def done_bytes(self) -> int:
        return sum(self.ranges[i][1] - self.ranges[i][0] for i in self.done)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def target(self, entry: FileEntry) -> Path:
        return self.root / entry.path

    def part(self, entry: FileEntry) -> Path:
        t = self.target(entry)
        return t.with_name(f".{t.name}{PART_SUFFIX}")

    def chunk_log(self, entry: FileEntry) -> Path:
        p = self.part(entry)
        return p.with_name(p.name + ".chunks")

    def _record(self, entry: FileEntry) -> Path:
        name = hashlib.sha256(entry.path.encode()).hexdigest()[:40]
        return self.root / RECORDS / f"{name}.json"

    # -- finished files ------------------------------------------------------------------------

    def is_complete(self, entry: FileEntry) -> bool | None:
        """True: a verified copy is in place. False: absent or certainly stale.
        None: a file of the right size with no record: the caller should hash it."""
        try:
            st = self.target(entry).stat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        if st.st_size != entry.size:
            return False
        try:
            rec = json.loads(self._record(entry).read_text())
        except (OSError, ValueError):
            return None if entry.checksum else True
        same = (
            rec.get("path") == entry.path
            and rec.get("size") == entry.size
            and rec.get("checksum") == (str(entry.checksum) if entry.checksum else None)
            and rec.get("mtime_ns") == st.st_mtime_ns
        )
        return True if same else (None if entry.checksum else True)

    def verify_existing(self, entry: FileEntry) -> bool:
        """Hash a finished-looking file that has no record; record it if it matches."""
        assert entry.checksum is not None
        h = entry.checksum.hasher(entry.size)
        with self.target(entry).open("rb") as f:
            while block := f.read(2**20):
                h.update(block)
        if h.hexdigest() != entry.checksum.hex:
            return False
        self.record_complete(entry)
        return True

    def record_complete(self, entry: FileEntry) -> None:
        st = self.target(entry).stat()
        rec = {
            "path": entry.path,
            "size": entry.size,
            "checksum": str(entry.checksum) if entry.checksum else None,
            "mtime_ns": st.st_mtime_ns,
        }
        atomic_write(self._record(entry), json.dumps(rec).encode())

    # -- parts ---------------------------------------------------------------------------------

    def resumable(self, entry: FileEntry, chunk_bytes: int) -> PartState | None:
        """The part file left by an earlier run and its finished chunks, if it can be resumed:
        same size, digest and chunk size. Reads only."""
        if not entry.ranged or not self.chunk_log(entry).exists():
            return None
        ranges = chunks(entry.size, chunk_bytes, entry.ranged)
        done = self._read_log(self.chunk_log(entry), self._header(entry, ranges), len(ranges))
        try:
            if done is None or self.part(entry).stat().st_size != entry.size:
                return None
        except FileNotFoundError:
            return None
        return PartState(self.part(entry), ranges, frozenset(done))

    @staticmethod
    def _header(entry: FileEntry, ranges: list[tuple[int, int]]) -> dict[str, object]:
        return {"size": entry.size, "checksum": str(entry.checksum), "chunks": ranges[0][1]}

    def prepare(self, entry: FileEntry, chunk_bytes: int) -> PartState:
        """Resume the part file of `entry`, or start a new one (a part left by another
        revision, another chunk size or a crash before its header was written starts over)."""
        state = self.resumable(entry, chunk_bytes)
        if state is not None:
            return state
        ranges = chunks(entry.size, chunk_bytes, entry.ranged)
        part, log = self.part(entry), self.chunk_log(entry)
        part.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, entry.size)  # sparse: chunks land at their offsets in any order
        except OSError as exc:
            raise disk_error(exc, part) from exc
        finally:
            os.close(fd)
        with log.open("w") as f:
            f.write(json.dumps(self._header(entry, ranges)) + "\n")
        return PartState(part, ranges, frozenset())

    @staticmethod
    def _read_log(log: Path, header: dict[str, object], n: int) -> set[int] | None:
        try:
            lines = log.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            if not lines or json.loads(lines[0]) != header:
                return None
        except ValueError:
            return None
        # A kill can tear the last line; the chunk it named is simply fetched again.
        return {int(s) for s in lines[1:] if s.isdigit() and int(s) < n}

    def mark_chunk(self, entry: FileEntry, index: int) -> None:
        """Called after the chunk's bytes were written (not synced: see Fetcher._fetch_chunk)."""
        with self.chunk_log(entry).open("a") as f:
            f.write(f"{index}\n")

    def land(self, entry: FileEntry) -> None:
        """fsync the finished part, rename it onto its final name, then drop the chunk log."""
        part, target = self.part(entry), self.target(entry)
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, target)
        fsync_dir(target.parent)
        with contextlib.suppress(FileNotFoundError):
            self.chunk_log(entry).unlink()
        self.record_complete(entry)

    def discard(self, entry: FileEntry) -> None:
        for p in (self.part(entry), self.chunk_log(entry)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def check_space(self, needed: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise DiskFull(
                f"not enough space in {self.root}: {_gib(needed)} still to download, "
                f"{_gib(free)} free"
            )


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory is; some file systems refuse, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_error(exc: OSError, path: Path) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left on device writing {path}")
    if exc.errno == errno.EFBIG:
        return DiskFull(f"file too large for the file system (or a size limit) at {path}")
    return DownloadError(f"cannot write {path}: {exc.strerror or exc}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
