"""What to download, decided without I/O: file entries, globs, safe paths, shards and chunks.

Every shard process of a download Job computes the same plan from the same listing, so nothing
here may depend on the clock, the host or the order a server happened to list files in.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal, Protocol

from vfleet.download.errors import BadSource, UnsafePath

# Where vfleet keeps its own bookkeeping inside `--to`; a listed file may not land there.
STATE_DIR = ".vfleet"
PART_SUFFIX = ".vfleet-part"

Algo = Literal["sha256", "git-sha1", "md5"]
ALGOS: tuple[Algo, ...] = ("sha256", "git-sha1", "md5")
_HEX_LEN = {"sha256": 64, "git-sha1": 40, "md5": 32}


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Checksum:
    """A digest published by the source: sha256 (LFS, ModelScope), git blob sha1, or S3 md5."""

    algo: Algo
    hex: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algo, sep, hexdigest = text.partition(":")
        hexdigest = hexdigest.lower()
        if not sep or algo not in ALGOS:
            raise BadSource(f"checksum {text!r} is not ALGO:HEX with ALGO one of {ALGOS}")
        if len(hexdigest) != _HEX_LEN[algo] or any(c not in "0123456789abcdef" for c in hexdigest):
            raise BadSource(f"checksum {text!r} is not a {algo} hex digest")
        return cls(algo, hexdigest)

    def __str__(self) -> str:
        return f"{self.algo}:{self.hex}"

    def hasher(self, size: int) -> Hasher:
        if self.algo == "sha256":
            return hashlib.sha256()
        if self.algo == "md5":
            return hashlib.md5(usedforsecurity=False)
        # Git names a blob by sha1("blob <size>\0" + content): what a hub lists for non-LFS files.
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % size)
        return h


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a listing. `path` is relative, '/'-separated and already checked safe."""

    path: str
    size: int  # bytes
    checksum: Checksum | None = None
    ranged: bool = True  # the source can serve byte ranges of it (resume, parallel chunks)


@dataclass(frozen=True, slots=True)
class Shard:
    index: int  # 0-based, as Kubernetes' JOB_COMPLETION_INDEX
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        left, sep, right = text.partition("/")
        try:
            index, count = int(left), int(right)
        except ValueError:
            index, count = -1, 0
        if not sep or count < 1 or not 0 <= index < count:
            raise BadSource(f"shard {text!r} is not I/N with 0 <= I < N (I counts from 0)")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def safe_path(name: str) -> str:
    """`name` as a relative path that stays inside the target directory, or UnsafePath."""
    bad = (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")  # a Windows drive, never a repo path
    )
    parts = name.split("/")
    if bad or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"refusing file name {name!r}: it would escape the target directory")
    if parts[0] == STATE_DIR or parts[-1].endswith(PART_SUFFIX):
        raise UnsafePath(f"refusing file name {name!r}: it clashes with vfleet's own files")
    return posixpath.normpath(name)


def _normalize_pattern(pattern: str) -> str:
    # As huggingface_hub's allow_patterns: "dir/" means everything under dir.
    return pattern + "*" if pattern.endswith("/") else pattern


def select(
    entries: Iterable[FileEntry], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[FileEntry]:
    """Entries whose path matches an include glob (all if none) and no exclude glob, sorted.

    Globs are fnmatch patterns on the whole path; `*` also matches `/`, so `*.safetensors`
    matches at any depth (huggingface_hub's allow_patterns behave the same).
    """
    inc = [_normalize_pattern(p) for p in include]
    exc = [_normalize_pattern(p) for p in exclude]
    out = [
        e
        for e in entries
        if (not inc or any(fnmatchcase(e.path, p) for p in inc))
        and not any(fnmatchcase(e.path, p) for p in exc)
    ]
    return sorted(out, key=lambda e: e.path)


def check_unique(entries: Sequence[FileEntry]) -> None:
    """A path may not be listed twice, nor be both a file and a directory."""
    paths = {e.path for e in entries}
    if len(paths) != len(entries):
        raise UnsafePath("the listing names the same file twice")
    for e in entries:
        parent = posixpath.dirname(e.path)
        while parent:
            if parent in paths:
                raise UnsafePath(f"{parent!r} is listed both as a file and as a directory")
            parent = posixpath.dirname(parent)


def shard_files(entries: Sequence[FileEntry], count: int) -> list[list[FileEntry]]:
    """Split entries into `count` shards of nearly equal bytes.

    Greedy largest-first onto the lightest shard (ties: lower shard index), over entries ordered
    by (size desc, path) so every process computes the same split. A shard's own files come back
    sorted by path.
    """
    shards: list[list[FileEntry]] = [[] for _ in range(count)]
    loads = [0] * count
    for entry in sorted(entries, key=lambda e: (-e.size, e.path)):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        shards[lightest].append(entry)
        loads[lightest] += entry.size
    return [sorted(s, key=lambda e: e.path) for s in shards]


def plan_digest(revision: str, entries: Iterable[FileEntry]) -> str:
    """A short fingerprint of the whole selection; shard markers carry it so waiters can tell
    that every shard worked from the same revision and the same globs."""
    h = hashlib.sha256(revision.encode())
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"\n{e.path}\0{e.size}\0{e.checksum or ''}".encode())
    return h.hexdigest()[:32]


def chunks(size: int, chunk_bytes: int, ranged: bool = True) -> list[tuple[int, int]]:
    """[start, end) byte ranges covering a file; one range when the source cannot do ranges."""
    if size <= 0:
        return [(0, 0)]
    if not ranged:
        return [(0, size)]
    return [(start, min(start + chunk_bytes, size)) for start in range(0, size, chunk_bytes)]
