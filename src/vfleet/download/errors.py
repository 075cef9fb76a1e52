"""The download error tree: every failure a user can act on, with a one-line message.

Sources and the fetcher raise these; `command.py` turns them into `click.ClickException`s and the
local supervisor can catch `DownloadError` as a whole.
"""

from __future__ import annotations


class DownloadError(Exception):
    """Base class: the message is a complete sentence fit for a terminal."""


class SourceNotFound(DownloadError):
    """The repository, bucket, prefix or URL does not exist (or is hidden from us)."""


class RevisionNotFound(DownloadError):
    """The repository exists but the branch, tag or commit does not."""


class AuthError(DownloadError):
    """The hub refused our credentials, or needs some and we had none."""


class BadSource(DownloadError):
    """The SOURCE text or an option cannot be understood."""


class UnsafePath(DownloadError):
    """A listed file name would land outside `--to` (absolute, `..`, or a reserved name)."""


class ChecksumMismatch(DownloadError):
    """The bytes received do not hash to what the hub published."""


class SizeMismatch(DownloadError):
    """The server sent a different number of bytes than the listing promised."""


class DiskFull(DownloadError):
    """No space left on the target file system."""


class TransferError(DownloadError):
    """The network or the server failed and retries did not help."""


class TransientError(TransferError):
    """A failure worth retrying: connection reset, timeout, 5xx, 429."""


class WaitTimeout(DownloadError):
    """`--wait-all` gave up before every shard's marker appeared."""
