"""`download()`: the one call behind `vfleet download`, `vfleet up` and the chart's download Job.

list (pinned revision) -> select globs -> this shard's files -> skip what is complete ->
resume or start part files -> fetch -> write this shard's marker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from vfleet.download.errors import SourceNotFound
from vfleet.download.fetch import Fetcher, FetchSettings
from vfleet.download.markers import Marker, clear_marker, wait_all, write_marker
from vfleet.download.plan import (
    FileEntry,
    Shard,
    check_unique,
    plan_digest,
    select,
    shard_files,
)
from vfleet.download.progress import NullReporter, Reporter, Summary
from vfleet.download.sources import open_source
from vfleet.download.store import Store, disk_error
from vfleet.download.transport import Http, HttpSettings


@dataclass(frozen=True, slots=True)
class DownloadResult:
    source: str
    revision: str  # resolved (a commit sha for hubs and git)
    shard: str  # "I/N"
    digest: str  # plan digest shared by every shard
    files: int  # in this shard
    bytes: int  # in this shard
    skipped_files: int  # already complete before this run
    downloaded_bytes: int  # fetched over the network by this run
    marker: str  # path of this shard's marker
    elapsed_s: float


def shard_from_env(env: dict[str, str] | None = None) -> Shard | None:
    """Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX; the chart adds JOB_COMPLETION_TOTAL."""
    env = dict(os.environ) if env is None else env
    index, total = env.get("JOB_COMPLETION_INDEX"), env.get("JOB_COMPLETION_TOTAL")
    if index is None or total is None:
        return None
    return Shard.parse(f"{index}/{total}")


def download(
    source: str | Sequence[str],
    to: Path,
    *,
    revision: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    shard: Shard | None = None,
    workers: int = 8,
    endpoint: str | None = None,
    reporter: Reporter | None = None,
    settings: FetchSettings | None = None,
) -> DownloadResult:
    """Download one shard (all files when `shard` is None) of `source` into `to`.

    Raises `vfleet.download.DownloadError` subclasses with one-line messages.
    """
    t0 = time.monotonic()
    sources = [source] if isinstance(source, str) else list(source)
    shard = shard or Shard(0, 1)
    settings = replace(settings or FetchSettings(), workers=workers)
    reporter = reporter or NullReporter()
    http = Http(HttpSettings(max_connections=max(workers, 1)))
    src = open_source(sources, revision, endpoint, http)
    try:
        listing = src.listing()
        selected = select(listing.files, include, exclude)
        if not selected:
            what = "matches the --include/--exclude globs" if include or exclude else "is listed"
            raise SourceNotFound(f"{src.url}: no file {what}")
        check_unique(selected)
        digest = plan_digest(listing.revision, selected)
        mine = shard_files(selected, shard.count)[shard.index]
        store = Store(to)
        clear_marker(to, shard)
        pending = _still_needed(store, mine, settings.workers, reporter)
        resumable = [store.resumable(e, settings.chunk_bytes) for e in pending]
        needed = sum(
            e.size - (r.done_bytes() if r else 0) for e, r in zip(pending, resumable, strict=True)
        )
        store.check_space(needed)
        parts = [(e, store.prepare(e, settings.chunk_bytes)) for e in pending]
        done_bytes = sum(e.size for e in mine) - needed
        reporter.begin(
            Summary(
                source=src.url,
                revision=listing.revision,
                shard=str(shard),
                files=len(mine),
                bytes=sum(e.size for e in mine),
                done_files=len(mine) - len(pending),
                done_bytes=done_bytes,
            )
        )
        stats = Fetcher(store, src, settings, reporter).run(parts)
        marker = write_marker(
            to,
            Marker(
                shard=shard.index,
                count=shard.count,
                digest=digest,
                revision=listing.revision,
                source=src.url,
                files=len(mine),
                bytes=sum(e.size for e in mine),
            ),
        )
    except OSError as exc:
        # Local file system trouble outside the fetch workers (they map their own).
        err = disk_error(exc, Path(exc.filename) if exc.filename else to)
        reporter.fail(str(err))
        raise err from exc
    except Exception as exc:
        reporter.fail(str(exc))
        raise
    finally:
        src.close()
    result = DownloadResult(
        source=src.url,
        revision=listing.revision,
        shard=str(shard),
        digest=digest,
        files=len(mine),
        bytes=sum(e.size for e in mine),
        skipped_files=len(mine) - len(pending),
        downloaded_bytes=stats.fetched_bytes,
        marker=str(marker),
        elapsed_s=round(time.monotonic() - t0, 3),
    )
    reporter.end(asdict(result))
    return result


def _still_needed(
    store: Store, entries: list[FileEntry], workers: int, reporter: Reporter
) -> list[FileEntry]:
    """Entries not yet complete on disk. Files of the right size with no record (copied in by
    hand, or landed by an older vfleet) are hashed once in parallel and kept if they match."""
    status = {e.path: store.is_complete(e) for e in entries}
    unsure = [e for e in entries if status[e.path] is None]
    if unsure:
        reporter.note(f"verifying {len(unsure)} file(s) already in {store.root}")
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for entry, ok in zip(unsure, pool.map(store.verify_existing, unsure), strict=True):
                status[entry.path] = ok
    return [e for e in entries if not status[e.path]]


def wait_for_shards(
    to: Path,
    count: int,
    *,
    digest: str | None = None,
    timeout_s: float = 86400.0,
    reporter: Reporter | None = None,
) -> list[Marker]:
    """Block until `count` shard markers from one plan exist under `to` (engine pods call this)."""
    rep = reporter or NullReporter()
    return wait_all(to, count, digest=digest, timeout_s=timeout_s, on_wait=rep.note)
