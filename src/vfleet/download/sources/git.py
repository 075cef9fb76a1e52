"""Git repositories with LFS: `git+https://host/org/repo(.git)` (also `git+http://`, `git+file://`).

Only git itself is needed, not git-lfs: a shallow, blobless fetch of one revision gives the tree;
small blobs that are LFS pointers name the real file's sha256 and size, which come from the LFS
batch API as plain HTTP hrefs, through our ranged fetcher like any other file. Ordinary blobs
are read with `git cat-file` (git fetches them lazily and checks their hashes itself).
Credentials: user:token in the URL, used for git and as Basic auth for LFS.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from vfleet.download.errors import (
    AuthError,
    BadSource,
    DownloadError,
    RevisionNotFound,
    SourceNotFound,
    TransferError,
)
from vfleet.download.fetch import ByteStream
from vfleet.download.plan import Checksum, FileEntry, safe_path
from vfleet.download.sources.base import HttpSource, Listing
from vfleet.download.transport import Http, HttpTarget

POINTER_MAX = 1024  # bytes; git-lfs pointers are ~130, so larger blobs cannot be pointers
LFS_MEDIA = "application/vnd.git-lfs+json"
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1", "GIT_ASKPASS": "true"}


def parse_pointer(data: bytes) -> tuple[str, int] | None:
    """(sha256, size) of a git-lfs pointer file, or None when the blob is not one."""
    if not data.startswith(b"version https://git-lfs.github.com/spec/"):
        return None
    fields = dict(
        line.split(" ", 1) for line in data.decode("utf-8", "replace").splitlines() if " " in line
    )
    oid, size = fields.get("oid", ""), fields.get("size", "")
    if not oid.startswith("sha256:") or len(oid) != 71 or not size.isdigit():
        return None
    return oid[7:].lower(), int(size)


class _BlobStream:
    """`git cat-file blob` output as a byte stream."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        assert proc.stdout is not None
        self._out: IO[bytes] = proc.stdout

    def readinto(self, buf: memoryview) -> int:
        return self._out.readinto(buf)  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self._out.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


class GitSource(HttpSource):
    def __init__(self, url: str, revision: str | None, http: Http) -> None:
        super().__init__(f"git+{url}", http)
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http", "file") or not (parts.netloc or parts.path):
            raise BadSource(f"{self.url}: expected git+https://host/org/repo")
        self.git_url = url
        self.revision = revision or "HEAD"
        self._dir: Path | None = None
        self._blobs: dict[str, str] = {}  # path -> blob sha, for non-LFS files
        self._oids: dict[str, str] = {}  # path -> LFS sha256
        self._hrefs: dict[str, tuple[HttpTarget, float]] = {}  # sha256 -> (href, expires)
        self._href_lock = threading.Lock()
        self._lfs_url = ""
        self._auth: dict[str, str] = {}
        if parts.username:
            cred = f"{parts.username}:{parts.password or ''}".encode()
            self._auth = {"Authorization": "Basic " + base64.b64encode(cred).decode()}

    def _git(self, *args: str, input: bytes | None = None) -> bytes:
        assert self._dir is not None
        try:
            proc = subprocess.run(
                ["git", "-C", str(self._dir), *args],
                input=input,
                capture_output=True,
                env={**os.environ, **_GIT_ENV},
                check=False,
                timeout=3600,
            )
        except FileNotFoundError as exc:
            raise DownloadError("git is not installed") from exc
        if proc.returncode != 0:
            raise self._map(proc.stderr.decode("utf-8", "replace"))
        return proc.stdout

    def listing(self) -> Listing:
        self._dir = Path(tempfile.mkdtemp(prefix="vfleet-git-"))
        self._git("init", "-q", "--bare")
        self._git("remote", "add", "origin", self.git_url)
        self._git("config", "remote.origin.promisor", "true")
        self._git("config", "remote.origin.partialclonefilter", f"blob:limit={POINTER_MAX}")
        self._git(
            "fetch",
            "-q",
            "--depth",
            "1",
            f"--filter=blob:limit={POINTER_MAX}",
            "origin",
            self.revision,
        )
        commit = self._git("rev-parse", "FETCH_HEAD").decode().strip()
        tree = self._git("ls-tree", "-r", "-l", "-z", commit).split(b"\0")
        small: list[tuple[str, str, int]] = []
        files = []
        for line in filter(None, tree):
            meta, _, raw_path = line.partition(b"\t")
            mode, kind, sha, size = meta.decode().split()
            path = raw_path.decode("utf-8", "surrogateescape")
            if kind != "blob" or mode == "120000":
                continue  # submodules and symlinks are not model files
            if int(size) <= POINTER_MAX:
                small.append((path, sha, int(size)))
            else:
                files.append(
                    FileEntry(safe_path(path), int(size), Checksum("git-sha1", sha), False)
                )
                self._blobs[path] = sha
        files.extend(self._classify_small(small))
        self._lfs_url = self._find_lfs_url(commit)
        return Listing(commit, files)

    def _classify_small(self, small: list[tuple[str, str, int]]) -> list[FileEntry]:
        """Read every small blob in one `git cat-file --batch`: LFS pointer or plain file."""
        if not small:
            return []
        out = self._git(
            "cat-file", "--batch", input="".join(f"{s}\n" for _, s, _ in small).encode()
        )
        files, pos = [], 0
        for path, sha, size in small:
            header_end = out.index(b"\n", pos)
            body = out[header_end + 1 : header_end + 1 + size]
            pos = header_end + 1 + size + 1
            pointer = parse_pointer(body)
            if pointer is None:
                files.append(FileEntry(safe_path(path), size, Checksum("git-sha1", sha), False))
                self._blobs[path] = sha
            else:
                oid, real_size = pointer
                files.append(FileEntry(safe_path(path), real_size, Checksum("sha256", oid)))
                self._oids[path] = oid
        return files

    def _find_lfs_url(self, commit: str) -> str:
        try:
            cfg = self._git("config", "--blob", f"{commit}:.lfsconfig", "--get", "lfs.url")
            return cfg.decode().strip()
        except DownloadError:
            pass
        parts = urlsplit(self.git_url)
        path = parts.path.rstrip("/")
        path = path + "/info/lfs" if path.endswith(".git") else path + ".git/info/lfs"
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, path, "", ""))

    def open(self, entry: FileEntry, start: int, end: int) -> ByteStream:
        sha = self._blobs.get(entry.path)
        if sha is None:
            return super().open(entry, start, end)
        assert self._dir is not None
        proc = subprocess.Popen(
            ["git", "-C", str(self._dir), "cat-file", "blob", sha],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **_GIT_ENV},
        )
        return _BlobStream(proc)

    def target(self, entry: FileEntry) -> HttpTarget:
        oid = self._oids[entry.path]
        with self._href_lock:
            cached = self._hrefs.get(oid)
        if cached is not None and cached[1] > time.time() + 60:
            return cached[0]
        target, expires = self._batch(oid, entry.size)
        with self._href_lock:
            self._hrefs[oid] = (target, expires)
        return target

    def _batch(self, oid: str, size: int) -> tuple[HttpTarget, float]:
        body = json.dumps(
            {
                "operation": "download",
                "transfers": ["basic"],
                "objects": [{"oid": oid, "size": size}],
                "hash_algo": "sha256",
            }
        ).encode()
        headers = {"Accept": LFS_MEDIA, "Content-Type": LFS_MEDIA, **self._auth}
        url = f"{self._lfs_url}/objects/batch"
        resp, _ = self.http.request("POST", HttpTarget(url, headers), body=body)
        try:
            obj = json.loads(resp.data)["objects"][0]
        except (ValueError, KeyError, IndexError) as exc:
            raise TransferError(f"{url}: not an LFS batch answer") from exc
        if "error" in obj:
            code = obj["error"].get("code")
            msg = f"{self.url}: LFS object {oid[:12]}: {obj['error'].get('message')}"
            raise SourceNotFound(msg) if code == 404 else TransferError(msg)
        action = obj.get("actions", {}).get("download", {})
        href = action.get("href")
        if not href:
            raise TransferError(f"{self.url}: LFS server gave no download link for {oid[:12]}")
        expires = time.time() + float(action.get("expires_in", 3600))
        return HttpTarget(href, dict(action.get("header", {}))), expires

    def _map(self, stderr: str) -> DownloadError:
        low = stderr.lower()
        line = stderr.strip().splitlines()[-1] if stderr.strip() else "git failed"
        if "authentication" in low or "could not read username" in low or "403" in low:
            return AuthError(f"{self.url}: access denied: {line}")
        if "couldn't find remote ref" in low or "not our ref" in low or "invalid refspec" in low:
            return RevisionNotFound(f"{self.url}: revision {self.revision!r} not found")
        if "not found" in low or "does not appear to be a git repository" in low:
            return SourceNotFound(f"{self.url}: repository not found")
        return TransferError(f"{self.url}: {line}")

    def close(self) -> None:
        super().close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
