"""The pure download plan: safe paths, globs, byte-balanced shards, chunks, marker logic."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfleet.download.errors import BadSource, UnsafePath
from vfleet.download.markers import Marker, evaluate
from vfleet.download.plan import (
    Checksum,
    FileEntry,
    Shard,
    check_unique,
    chunks,
    plan_digest,
    safe_path,
    select,
    shard_files,
)


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/.",
        "",
        "a\\..\\b",
        "C:x",
        "a\0b",
        ".vfleet/download/shards/x",
        "dir/.f.vfleet-part",
    ],
)
def test_unsafe_paths_are_refused(name: str) -> None:
    with pytest.raises(UnsafePath):
        safe_path(name)


@pytest.mark.parametrize("name", ["a", "a/b.safetensors", ".gitattributes", "x/.hidden", "a..b"])
def test_safe_paths_pass(name: str) -> None:
    assert safe_path(name) == name


def _e(path: str, size: int = 1) -> FileEntry:
    return FileEntry(path, size)


def test_select_globs_like_allow_patterns() -> None:
    files = [_e("config.json"), _e("m-1.safetensors"), _e("sub/m-2.safetensors"), _e("o/x.bin")]
    names = [e.path for e in select(files, ["*.safetensors", "*.json"])]
    assert names == ["config.json", "m-1.safetensors", "sub/m-2.safetensors"]
    assert [e.path for e in select(files, ["o/"])] == ["o/x.bin"]
    assert [e.path for e in select(files, (), ["*.safetensors"])] == ["config.json", "o/x.bin"]
    assert select(files, ["*.gguf"]) == []


def test_check_unique_refuses_file_dir_clash_and_duplicates() -> None:
    with pytest.raises(UnsafePath):
        check_unique([_e("a"), _e("a/b")])
    with pytest.raises(UnsafePath):
        check_unique([_e("a"), _e("a")])
    check_unique([_e("a/b"), _e("a/c")])


sizes = st.lists(st.integers(0, 10**6), min_size=0, max_size=40)


@given(sizes, st.integers(1, 8), st.randoms())
def test_shards_partition_balance_and_are_order_independent(
    sz: list[int], n: int, rnd: random.Random
) -> None:
    entries = [_e(f"f{i:03d}", s) for i, s in enumerate(sz)]
    shards = shard_files(entries, n)
    assert sorted(e.path for s in shards for e in s) == [e.path for e in entries]
    loads = [sum(e.size for e in s) for s in shards]
    # Greedy largest-first: no shard is heavier than the lightest by more than one file.
    assert max(loads) - min(loads) <= max(sz, default=0)
    shuffled = entries[:]
    rnd.shuffle(shuffled)
    assert shard_files(shuffled, n) == shards


def test_shards_balance_bytes_not_counts() -> None:
    # The TKE downloader splits by file count; one 10 GB file plus nine small ones shows why
    # bytes matter: the big file gets a shard of its own.
    entries = [_e("big", 10 * 2**30)] + [_e(f"s{i}", 2**20) for i in range(9)]
    shards = shard_files(entries, 2)
    assert [e.path for e in shards[0]] == ["big"]
    assert len(shards[1]) == 9


def test_plan_digest_changes_with_revision_and_selection() -> None:
    a = [_e("x", 1), _e("y", 2)]
    assert plan_digest("r1", a) == plan_digest("r1", list(reversed(a)))
    assert plan_digest("r1", a) != plan_digest("r2", a)
    assert plan_digest("r1", a) != plan_digest("r1", a[:1])


def test_chunks_cover_the_file() -> None:
    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunks(10, 4, ranged=False) == [(0, 10)]
    assert chunks(0, 4) == [(0, 0)]


def test_checksums_and_git_blob_hash() -> None:
    data = b"hello\n"
    c = Checksum("git-sha1", hashlib.sha1(b"blob 6\0" + data).hexdigest())
    h = c.hasher(len(data))
    h.update(data)
    assert h.hexdigest() == c.hex
    assert Checksum.parse("sha256:" + "A" * 64).hex == "a" * 64
    with pytest.raises(BadSource):
        Checksum.parse("sha256:abc")
    with pytest.raises(BadSource):
        Checksum.parse("crc:00")


def test_shard_parse() -> None:
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3/3", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(BadSource):
            Shard.parse(bad)


def _m(i: int, n: int, digest: str = "d") -> Marker:
    return Marker(i, n, digest, "rev-" + digest, "hf://o/m", 1, 1)


def test_wait_all_logic() -> None:
    assert evaluate([_m(0, 2), _m(1, 2)], 2, None) is None
    assert "shard(s) 1" in (evaluate([_m(0, 2)], 2, None) or "")
    assert "disagree" in (evaluate([_m(0, 2, "a"), _m(1, 2, "b")], 2, None) or "")
    # A waiter that knows the plan ignores markers from an older revision.
    assert evaluate([_m(0, 2, "a"), _m(1, 2, "b"), _m(1, 2, "a")], 2, "a") is None
    assert evaluate([_m(0, 3), _m(1, 3), _m(2, 3)], 2, None) is not None
