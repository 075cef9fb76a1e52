"""ModelScope: `modelscope://org/name` (or `modelscope://datasets/org/name`).

The ModelScope Hub SDK (`modelscope-hub`, the light part of `modelscope`, without its ML stack)
picks the site (.cn or .ai; `MODELSCOPE_ENDPOINT` or `--endpoint` override it), lists files with
sizes and sha256, and builds each file's download URL; the bytes come through our fetcher.
Token: `MODELSCOPE_API_TOKEN`.
"""

from __future__ import annotations

from modelscope_hub import HubApi, get_default_config
from modelscope_hub.errors import (
    AuthenticationError,
    HubError,
    NetworkError,
    NotExistError,
    NotFoundError,
    PermissionDeniedError,
)

from vfleet.download.errors import (
    AuthError,
    BadSource,
    DownloadError,
    SourceNotFound,
    TransferError,
)
from vfleet.download.plan import Checksum, FileEntry, safe_path
from vfleet.download.sources.base import HttpSource, Listing
from vfleet.download.transport import Http, HttpTarget

DEFAULT_REVISION = "master"


class ModelScopeSource(HttpSource):
    def __init__(
        self, rest: str, revision: str | None, http: Http, endpoint: str | None = None
    ) -> None:
        super().__init__(f"modelscope://{rest}", http)
        parts = [p for p in rest.strip("/").split("/") if p]
        self.repo_type = "model"
        if len(parts) == 3 and parts[0] in ("models", "datasets"):
            self.repo_type = parts.pop(0)[:-1]
        if len(parts) != 2:
            raise BadSource(f"{self.url}: expected modelscope://org/name")
        self.repo_id = "/".join(parts)
        self.revision = revision or DEFAULT_REVISION
        self.token = get_default_config().token
        self._endpoint = endpoint
        self._api: HubApi | None = None

    def listing(self) -> Listing:
        try:
            api = HubApi(endpoint=self._endpoint, token=self.token)
            endpoint = api.resolve_endpoint_for_read(self.repo_id, repo_type=self.repo_type)
            self._api = HubApi(endpoint=endpoint, token=self.token)
            infos = self._api.list_repo_files(
                self.repo_id, self.repo_type, revision=self.revision, recursive=True
            )
        except HubError as exc:
            raise self._map(exc) from exc
        files = []
        for info in infos:
            if info.is_dir:
                continue
            sha = (info.sha256 or "").lower()
            checksum = Checksum("sha256", sha) if len(sha) == 64 else None
            files.append(FileEntry(safe_path(info.path), info.size, checksum))
        if not files:
            raise SourceNotFound(f"{self.url}: no files at revision {self.revision!r}")
        return Listing(self.revision, files)

    def target(self, entry: FileEntry) -> HttpTarget:
        assert self._api is not None, "listing() first"
        url = self._api.legacy.get_download_url(
            self.repo_id, self.repo_type, entry.path, revision=self.revision
        )
        headers = {"User-Agent": "vfleet"}
        if self.token:
            # The file endpoint takes the session cookie; newer ones the bearer token.
            headers["Authorization"] = f"Bearer {self.token}"
            headers["Cookie"] = f"m_session_id={self.token}"
        return HttpTarget(url, headers)

    def _map(self, exc: HubError) -> DownloadError:
        if isinstance(exc, AuthenticationError | PermissionDeniedError):
            return AuthError(f"{self.url}: access denied; check MODELSCOPE_API_TOKEN")
        if isinstance(exc, NotExistError | NotFoundError):
            return SourceNotFound(f"{self.url}: repository or revision {self.revision!r} not found")
        if isinstance(exc, NetworkError):
            return TransferError(f"{self.url}: cannot reach ModelScope: {exc}")
        return DownloadError(f"{self.url}: {type(exc).__name__}: {exc}")
