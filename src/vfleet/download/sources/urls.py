"""Plain file URLs: `https://host/dir/model.safetensors[#sha256=HEX]`, several at once, or
`@FILE` naming a local file with one URL per line (blank lines and `#` comments skipped).

Each file lands under its URL's last path segment. A HEAD request gives its size and whether
the server does ranges; the optional fragment gives a digest to verify.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vfleet.download.errors import BadSource
from vfleet.download.plan import Checksum, FileEntry, safe_path
from vfleet.download.sources.base import HttpSource, Listing
from vfleet.download.transport import Http, HttpTarget


def expand(sources: Sequence[str]) -> list[str]:
    out: list[str] = []
    for s in sources:
        if s.startswith("@"):
            try:
                lines = Path(s[1:]).read_text().splitlines()
            except OSError as exc:
                raise BadSource(f"cannot read URL list {s[1:]}: {exc.strerror}") from exc
            out.extend(x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#"))
        else:
            out.append(s)
    for url in out:
        if urlsplit(url).scheme not in ("http", "https"):
            raise BadSource(f"{url!r} is not an http(s) URL")
    return out


def parse_url(url: str) -> tuple[str, str, Checksum | None]:
    """-> (url without fragment, file name, checksum from `#sha256=HEX` or `#md5=HEX`)."""
    base, _, frag = url.partition("#")
    checksum = None
    if frag:
        algo, sep, hexdigest = frag.partition("=")
        if not sep:
            raise BadSource(f"{url}: the fragment must be #sha256=HEX")
        checksum = Checksum.parse(f"{algo}:{hexdigest}")
    name = posixpath.basename(unquote(urlsplit(base).path))
    if not name:
        raise BadSource(f"{url}: the URL names no file")
    return base, safe_path(name), checksum


class UrlSource(HttpSource):
    def __init__(self, sources: Sequence[str], http: Http) -> None:
        urls = expand(sources)
        super().__init__(urls[0] if len(urls) == 1 else f"{len(urls)} URLs", http)
        self._files = [parse_url(u) for u in urls]
        self._urls: dict[str, str] = {}

    def listing(self) -> Listing:
        files = []
        for url, name, checksum in self._files:
            resp, _ = self.http.request("HEAD", HttpTarget(url))
            size = resp.headers.get("content-length")
            if size is None or not size.isdigit():
                raise BadSource(f"{url}: the server does not say how large the file is")
            ranged = resp.headers.get("accept-ranges", "").lower() == "bytes"
            files.append(FileEntry(name, int(size), checksum, ranged))
            self._urls[name] = url
        return Listing("-", files)

    def target(self, entry: FileEntry) -> HttpTarget:
        return HttpTarget(self._urls[entry.path])
