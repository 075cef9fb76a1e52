"""What every source provides (a listing pinned to one revision, a byte opener) and the shared
HTTP opener that remembers where a hub redirected each file."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from vfleet.download.errors import AuthError, SourceNotFound
from vfleet.download.fetch import ByteStream
from vfleet.download.plan import FileEntry
from vfleet.download.transport import Http, HttpTarget


@dataclass(frozen=True, slots=True)
class Listing:
    revision: str  # what was resolved: a commit sha where the source has one
    files: list[FileEntry]


class Source(Protocol):
    url: str  # as the user wrote it, for messages

    def listing(self) -> Listing: ...
    def open(self, entry: FileEntry, start: int, end: int) -> ByteStream: ...
    def close(self) -> None: ...


class HttpSource(ABC):
    """A source whose files are plain HTTP GETs; subclasses say where each file lives."""

    def __init__(self, url: str, http: Http) -> None:
        self.url = url
        self.http = http
        self._lock = threading.Lock()
        # A hub answers each file's URL with a redirect to a signed CDN URL; later chunks of
        # the same file go straight there instead of asking the hub again (one entry per file).
        self._final: dict[str, HttpTarget] = {}

    @abstractmethod
    def target(self, entry: FileEntry) -> HttpTarget: ...

    @abstractmethod
    def listing(self) -> Listing: ...

    def open(self, entry: FileEntry, start: int, end: int) -> ByteStream:
        with self._lock:
            cached = self._final.get(entry.path)
        if cached is not None:
            try:
                return self.http.get_range(cached, start, end, entry.size, entry.ranged)
            except (AuthError, SourceNotFound):
                pass  # the signed URL expired: ask the hub again
        target = self.target(entry)
        stream = self.http.get_range(target, start, end, entry.size, entry.ranged)
        if stream.url != target.url:
            same_host = urlsplit(stream.url).netloc == urlsplit(target.url).netloc
            headers = target.headers if same_host else {}
            with self._lock:
                self._final[entry.path] = HttpTarget(stream.url, headers)
        return stream

    def close(self) -> None:
        self.http.close()
