"""Hugging Face Hub (and mirrors that speak its API): `hf://[datasets/|spaces/]org/name`.

huggingface_hub resolves the revision to a commit and lists the tree with sizes and LFS sha256
(git blob sha1 for small files); the bytes then come from `/resolve/<commit>/<path>` through
our own ranged fetcher, so every shard reads the same commit even if the branch moves.
Endpoint: `--endpoint`, else `HF_ENDPOINT`; token: `HF_TOKEN` or the token file, as the hub
client finds it.
"""

from __future__ import annotations

import os

import httpx2
from huggingface_hub import HfApi, get_token, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

# Documented public API; the package re-exports it without listing it for type checkers.
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

from vfleet import __version__
from vfleet.download.errors import (
    AuthError,
    BadSource,
    DownloadError,
    RevisionNotFound,
    SourceNotFound,
    TransferError,
)
from vfleet.download.plan import Checksum, FileEntry, safe_path
from vfleet.download.sources.base import HttpSource, Listing
from vfleet.download.transport import Http, HttpTarget

DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO_TYPES = {"datasets": "dataset", "spaces": "space", "models": "model"}


def parse_repo(rest: str) -> tuple[str, str]:
    """`org/name`, `datasets/org/name` -> (repo_type, repo_id)."""
    parts = [p for p in rest.strip("/").split("/") if p]
    repo_type = "model"
    if len(parts) == 3 and parts[0] in _REPO_TYPES:
        repo_type = _REPO_TYPES[parts.pop(0)]
    if len(parts) != 2 or any(p in (".", "..") for p in parts):
        raise BadSource(f"hf://{rest}: expected hf://org/name or hf://datasets/org/name")
    return repo_type, "/".join(parts)


class HfSource(HttpSource):
    def __init__(
        self,
        rest: str,
        revision: str | None,
        http: Http,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(f"hf://{rest}", http)
        self.repo_type, self.repo_id = parse_repo(rest)
        self.revision = revision or "main"
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token if token is not None else get_token()
        self._commit = self.revision
        self._headers = build_hf_headers(
            token=self.token or False, library_name="vfleet", library_version=__version__
        )

    def listing(self) -> Listing:
        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        try:
            info = api.repo_info(self.repo_id, repo_type=self.repo_type, revision=self.revision)
            if not info.sha:
                raise TransferError(f"{self.url}: the hub did not say which commit it serves")
            self._commit = info.sha
            tree = api.list_repo_tree(
                self.repo_id, recursive=True, revision=info.sha, repo_type=self.repo_type
            )
            files = [_entry(f) for f in tree if isinstance(f, RepoFile)]
        except DownloadError:
            raise
        except Exception as exc:
            raise self._map(exc) from exc
        return Listing(info.sha, files)

    def target(self, entry: FileEntry) -> HttpTarget:
        url = hf_hub_url(
            self.repo_id,
            entry.path,
            repo_type=self.repo_type,
            revision=self._commit,
            endpoint=self.endpoint,
        )
        return HttpTarget(url, self._headers)

    def _map(self, exc: Exception) -> DownloadError:
        where = f"{self.url} (endpoint {self.endpoint})"
        if isinstance(exc, GatedRepoError):
            return AuthError(f"{where}: gated repository; accept its terms and set HF_TOKEN")
        if isinstance(exc, RevisionNotFoundError):
            return RevisionNotFound(f"{where}: revision {self.revision!r} not found")
        if isinstance(exc, RepositoryNotFoundError):
            hint = "" if self.token else " (if it is private, set HF_TOKEN)"
            return SourceNotFound(f"{where}: repository not found{hint}")
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status in (401, 403):
                return AuthError(f"{where}: access denied (HTTP {status}); check HF_TOKEN")
            return TransferError(f"{where}: hub answered HTTP {status}")
        if isinstance(exc, OfflineModeIsEnabled):
            return TransferError(f"{where}: HF_HUB_OFFLINE is set; unset it to download")
        if isinstance(exc, httpx2.HTTPError | OSError):
            return TransferError(f"{where}: cannot reach the hub: {exc}")
        return DownloadError(f"{where}: {type(exc).__name__}: {exc}")


def _entry(f: RepoFile) -> FileEntry:
    if f.lfs is not None:
        return FileEntry(safe_path(f.path), f.lfs.size, Checksum("sha256", f.lfs.sha256.lower()))
    checksum = Checksum("git-sha1", f.blob_id.lower()) if len(f.blob_id or "") == 40 else None
    return FileEntry(safe_path(f.path), f.size, checksum)
