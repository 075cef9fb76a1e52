"""Turn SOURCE text into a source object: hf://, modelscope://, s3://, git+..., http(s)://."""

from __future__ import annotations

from collections.abc import Sequence

from vfleet.download.errors import BadSource
from vfleet.download.sources.base import Listing, Source
from vfleet.download.transport import Http

SCHEMES = ("hf://", "modelscope://", "s3://", "git+https://", "git+http://", "git+file://")


def open_source(
    sources: Sequence[str], revision: str | None, endpoint: str | None, http: Http
) -> Source:
    """One repository/bucket source, or one or more plain http(s) file URLs."""
    if not sources:
        raise BadSource("no SOURCE given")
    first = sources[0]
    if first.startswith(("https://", "http://", "@")):
        from vfleet.download.sources.urls import UrlSource

        return UrlSource(sources, http)
    if len(sources) > 1:
        raise BadSource("only plain http(s) URLs can be given several at a time")
    scheme, _, rest = first.partition("://")
    if scheme == "hf":
        from vfleet.download.sources.hf import HfSource

        return HfSource(rest, revision, http, endpoint)
    if scheme == "modelscope":
        from vfleet.download.sources.modelscope import ModelScopeSource

        return ModelScopeSource(rest, revision, http, endpoint)
    if scheme == "s3":
        from vfleet.download.sources.s3 import S3Source

        return S3Source(rest, http, endpoint)
    if scheme in ("git+https", "git+http", "git+file"):
        from vfleet.download.sources.git import GitSource

        return GitSource(first.removeprefix("git+"), revision, http)
    raise BadSource(f"unknown source {first!r}: use one of {', '.join(SCHEMES)} or https://")


__all__ = ["Listing", "Source", "open_source"]
