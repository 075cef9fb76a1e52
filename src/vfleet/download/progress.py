"""Progress reporting: a rich bar for people at a terminal, JSON lines for Jobs and log shippers.

Reporters are called from every download worker thread; `advance` is on the byte path, so it
only adds to counters and prints at most once per interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Protocol

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vfleet.download.plan import FileEntry


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run is about to do."""

    source: str
    revision: str
    shard: str  # "I/N"
    files: int  # in this shard
    bytes: int
    done_files: int  # already complete on disk
    done_bytes: int  # complete files plus chunks of partial ones


class Reporter(Protocol):
    def begin(self, summary: Summary) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self, entry: FileEntry) -> None: ...
    def note(self, message: str) -> None: ...
    def end(self, fields: dict[str, object]) -> None: ...
    def fail(self, message: str) -> None: ...


class NullReporter:
    def begin(self, summary: Summary) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self, entry: FileEntry) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def end(self, fields: dict[str, object]) -> None:
        pass

    def fail(self, message: str) -> None:
        pass


class JsonReporter:
    """One JSON object per line: start, progress (throttled), file, note, done."""

    def __init__(
        self,
        out: IO[str],
        interval_s: float = 1.0,  # seconds between progress lines
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._total = self._done = self._files_total = self._files_done = 0
        self._t0 = self._last = clock()
        self._start_bytes = 0

    def _emit(self, event: str, fields: dict[str, object]) -> None:
        self._out.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
        self._out.flush()

    def begin(self, summary: Summary) -> None:
        with self._lock:
            self._total, self._done = summary.bytes, summary.done_bytes
            self._files_total, self._files_done = summary.files, summary.done_files
            self._t0 = self._last = self._clock()
            self._start_bytes = summary.done_bytes
            self._emit("start", asdict(summary))

    def _progress_fields(self, now: float) -> dict[str, object]:
        elapsed = max(now - self._t0, 1e-9)
        return {
            "bytes_done": self._done,
            "bytes_total": self._total,
            "files_done": self._files_done,
            "files_total": self._files_total,
            "rate_bps": round((self._done - self._start_bytes) / elapsed),
        }

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
            now = self._clock()
            if now - self._last >= self._interval_s:
                self._last = now
                self._emit("progress", self._progress_fields(now))

    def file_done(self, entry: FileEntry) -> None:
        with self._lock:
            self._files_done += 1
            self._emit("file", {"path": entry.path, "size": entry.size})

    def note(self, message: str) -> None:
        with self._lock:
            self._emit("note", {"message": message})

    def end(self, fields: dict[str, object]) -> None:
        with self._lock:
            self._emit("done", fields)

    def fail(self, message: str) -> None:
        with self._lock:
            self._emit("error", {"message": message})


class RichReporter:
    """A byte bar with speed and ETA on stderr; finished files scroll above it."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=self._console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._lock = threading.Lock()
        self._files_done = self._files_total = 0

    def begin(self, summary: Summary) -> None:
        self._files_done, self._files_total = summary.done_files, summary.files
        self._console.print(
            f"{summary.source} @ {summary.revision[:12]} shard {summary.shard}: "
            f"{summary.files} files, {summary.bytes / 2**30:.2f} GiB"
            f" ({summary.done_files} already here)"
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "download", total=summary.bytes, completed=summary.done_bytes, files=self._files()
        )

    def _files(self) -> str:
        return f"{self._files_done}/{self._files_total} files"

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def file_done(self, entry: FileEntry) -> None:
        with self._lock:
            self._files_done += 1
            files = self._files()
        if self._task is not None:
            self._progress.update(self._task, files=files)

    def note(self, message: str) -> None:
        self._console.print(message)

    def fail(self, message: str) -> None:
        self._progress.stop()

    def end(self, fields: dict[str, object]) -> None:
        self._progress.stop()
        self._console.print(
            f"done: {fields.get('files')} files, {fields.get('downloaded_bytes')} bytes fetched "
            f"in {fields.get('elapsed_s')} s"
        )
