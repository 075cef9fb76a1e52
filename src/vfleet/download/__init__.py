"""Model download: hubs, buckets, git and URL lists into a directory, sharded across workers,
verified, resumable. `download()` is the entry point; `command.download` is the CLI."""

from __future__ import annotations

from vfleet.download.api import DownloadResult, download, shard_from_env, wait_for_shards
from vfleet.download.errors import DownloadError
from vfleet.download.fetch import FetchSettings
from vfleet.download.plan import Shard

__all__ = [
    "DownloadError",
    "DownloadResult",
    "FetchSettings",
    "Shard",
    "download",
    "shard_from_env",
    "wait_for_shards",
]
