"""Shard markers: each shard says "my files are in place" with a small file next to the weights,
and `--wait-all N` blocks until N shards that worked from the same plan have said so.

Markers live in `<to>/.vfleet/download/shards/`. A marker carries the plan digest (revision +
selected files), so a waiter never mistakes markers left by an older revision for a finished
download of the new one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vfleet.download.errors import WaitTimeout
from vfleet.download.plan import STATE_DIR, Shard
from vfleet.download.store import atomic_write

SHARDS_DIR = f"{STATE_DIR}/download/shards"


@dataclass(frozen=True, slots=True)
class Marker:
    shard: int
    count: int
    digest: str  # plan_digest of the whole selection, equal in every shard of one download
    revision: str
    source: str
    files: int  # in this shard
    bytes: int


def marker_path(root: Path, shard: Shard) -> Path:
    return root / SHARDS_DIR / f"shard-{shard.index:05d}-of-{shard.count:05d}.json"


def clear_marker(root: Path, shard: Shard) -> None:
    with contextlib.suppress(FileNotFoundError):
        marker_path(root, shard).unlink()


def write_marker(root: Path, marker: Marker) -> Path:
    path = marker_path(root, Shard(marker.shard, marker.count))
    atomic_write(path, json.dumps(asdict(marker)).encode())
    return path


def read_markers(root: Path, count: int) -> list[Marker]:
    out = []
    for i in range(count):
        try:
            data = json.loads(marker_path(root, Shard(i, count)).read_text())
            out.append(Marker(**data))
        except (OSError, ValueError, TypeError):
            continue  # absent, or being replaced right now
    return out


def evaluate(markers: list[Marker], count: int, digest: str | None) -> str | None:
    """None when all `count` shards are done from one plan; otherwise what is still missing."""
    if digest is not None:
        markers = [m for m in markers if m.digest == digest]
    have = {m.shard for m in markers if m.count == count}
    missing = [i for i in range(count) if i not in have]
    if missing:
        return f"waiting for shard(s) {', '.join(map(str, missing[:8]))} of {count}"
    digests = {m.digest for m in markers}
    if len(digests) > 1:
        revs = sorted({m.revision[:12] for m in markers})
        return f"shards disagree on what to download (revisions {', '.join(revs)})"
    return None


def wait_all(
    root: Path,
    count: int,
    *,
    digest: str | None = None,
    timeout_s: float = 86400.0,  # seconds before giving up
    poll_s: float = 2.0,  # seconds between looks
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[str], None] | None = None,
) -> list[Marker]:
    """Block until every shard's marker is there; WaitTimeout after `timeout_s`."""
    deadline = clock() + timeout_s
    last = ""
    while True:
        markers = read_markers(root, count)
        reason = evaluate(markers, count, digest)
        if reason is None:
            return markers
        if reason != last and on_wait is not None:
            on_wait(reason)
        last = reason
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(f"gave up after {timeout_s:g} s in {root}: {reason}")
        sleep(min(poll_s, remaining))
