"""A Hugging-Face-Hub-compatible file server on 127.0.0.1 for tests and benchmarks.

It speaks what `huggingface_hub` (2.x) calls for downloads: repo info
(`/api/{models,datasets}/REPO[/revision/REV]`), the paginated tree listing (`.../tree/REV[/PATH]`
with a `Link: rel="next"` header), `paths-info`, and `/[datasets/]REPO/resolve/REV/PATH` with
HEAD and Range, `ETag`, `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`. LFS files can be
redirected to a second "CDN" port (another host name as far as a client can tell) that accepts
no token. Errors carry `X-Error-Code` as the Hub's do: RepoNotFound, RevisionNotFound,
EntryNotFound; a private repo without the right bearer token gets 401.

Files are real files on disk (sparse ones cost nothing), described by `Repo.from_dir`. Knobs for
tests: a global bandwidth cap (bytes/s over all connections), a per-connection cap, a file
served corrupted, connections that drop after N bytes, and a log of what was served.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_THRESHOLD = 10 * 1024  # bytes; larger files are listed as LFS, as the Hub would store them
PAGE_SIZE = 50  # tree entries per page: small, so tests exercise pagination


@dataclass(frozen=True)
class HubFile:
    path: str  # in the repo
    disk: Path
    size: int
    sha256: str
    git_sha1: str  # of the blob (for LFS files: of the pointer, as the Hub lists it)
    lfs: bool


@dataclass
class Repo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str
    branches: dict[str, str] = field(default_factory=dict)
    private: bool = False
    repo_type: str = "model"

    @classmethod
    def from_dir(
        cls,
        repo_id: str,
        root: Path,
        *,
        private: bool = False,
        repo_type: str = "model",
        known_sha256: dict[str, str] | None = None,
    ) -> Repo:
        """`known_sha256` skips hashing files whose digest a test already knows (multi-GB ones)."""
        files = {}
        for disk in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = disk.relative_to(root).as_posix()
            files[rel] = describe(rel, disk, (known_sha256 or {}).get(rel))
        commit = hashlib.sha1(
            "".join(f"{f.path}{f.sha256}" for f in files.values()).encode()
        ).hexdigest()
        return cls(repo_id, files, commit, {"main": commit}, private, repo_type)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.branches.values() else None


def describe(rel: str, disk: Path, sha256: str | None = None) -> HubFile:
    size = disk.stat().st_size
    if sha256 is None:
        with disk.open("rb") as f:
            sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    lfs = size > LFS_THRESHOLD
    if lfs:
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
        ).encode()
        blob = pointer
    else:
        blob = disk.read_bytes()
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
    return HubFile(rel, disk, size, sha256, git_sha1, lfs)


class Throttle:
    """A token bucket shared by every connection: the server's total bandwidth cap."""

    def __init__(self, rate_bps: float) -> None:
        self.rate = rate_bps
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
            wait = self._next - now - 0.05  # up to 50 ms of burst
        if wait > 0:
            time.sleep(wait)


@dataclass
class Served:
    method: str
    path: str
    range: str | None
    bytes: int
    auth: str | None
    status: int


class HubState:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.token: str | None = None  # required for private repos
        self.throttle: Throttle | None = None
        self.per_conn_bps: float | None = None
        self.redirect_lfs = False
        self.cdn_url = ""
        self.corrupt: set[str] = set()  # repo paths served with a flipped byte
        self.drop_after: dict[str, int] = {}  # path -> bytes; the next GET of it dies there
        self.log: list[Served] = []
        self.lock = threading.Lock()

    def record(self, s: Served) -> None:
        with self.lock:
            self.log.append(s)
            del self.log[:-10000]  # bounded


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    # -- routing -------------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        segs = split.path.strip("/").split("/")
        query = parse_qs(split.query)
        try:
            if segs[0] == "_cdn" and len(segs) == 2:
                return self._cdn(method, segs[1])
            if self.server.cdn_only:
                return self._error(404, "not found")
            if segs[:2] == ["api", "v1"] and len(segs) >= 6:
                return self._modelscope(method, segs[2:], query)
            if segs[0] == "api" and len(segs) >= 4:
                return self._api(method, segs[1:], query)
            if method == "POST" and segs[-4:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch("/".join(segs[:-4]).removesuffix(".git"))
            repo_type = "model"
            if segs[0] in ("datasets", "spaces"):
                repo_type = segs.pop(0)[:-1]
            if len(segs) >= 5 and segs[2] == "resolve":
                repo = self._repo(repo_type, f"{segs[0]}/{segs[1]}")
                if repo is None:
                    return None
                return self._resolve(method, repo, unquote(segs[3]), unquote("/".join(segs[4:])))
            return self._error(404, "not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return None

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        auth = self.headers.get("authorization")
        if self.state.token and auth and auth != f"Bearer {self.state.token}":
            self._error(401, "Invalid credentials in Authorization header")
            return None
        if repo is None or (repo.private and auth != f"Bearer {self.state.token}"):
            # The Hub says the same for missing and for private repos without a token.
            self._error(401, "Repository not found", code="RepoNotFound")
            return None
        return repo

    def _api(self, method: str, segs: list[str], query: dict[str, list[str]]) -> None:
        kind, rest = segs[0], segs[1:]
        repo_type = {"models": "model", "datasets": "dataset", "spaces": "space"}.get(kind)
        if repo_type is None or len(rest) < 2:
            return self._error(404, "not found")
        repo = self._repo(repo_type, f"{rest[0]}/{rest[1]}")
        if repo is None:
            return None
        rest = rest[2:]
        if not rest or rest[0] == "revision":
            return self._info(repo, unquote(rest[1]) if len(rest) > 1 else "main")
        if rest[0] == "tree" and len(rest) >= 2:
            cursor = int(query.get("cursor", ["0"])[0])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            sub = unquote("/".join(rest[2:]))
            return self._tree(repo, unquote(rest[1]), sub, recursive, cursor)
        if rest[0] == "paths-info" and len(rest) == 2 and method == "POST":
            return self._paths_info(repo, unquote(rest[1]))
        return self._error(404, "not found")

    # -- API -----------------------------------------------------------------------------------

    def _commit(self, repo: Repo, rev: str) -> str | None:
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return commit

    def _info(self, repo: Repo, rev: str) -> None:
        commit = self._commit(repo, rev)
        if commit is None:
            return
        siblings = [{"rfilename": p} for p in repo.files]
        body = {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "sha": commit,
            "private": repo.private,
            "siblings": siblings,
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }
        self._json(body)

    def _entry(self, f: HubFile) -> dict[str, object]:
        out: dict[str, object] = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": f.path}
        if f.lfs:
            out["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return out

    def _listing(self, repo: Repo, sub: str, recursive: bool) -> list[dict[str, object]]:
        prefix = f"{sub}/" if sub else ""
        dirs: set[str] = set()
        files = []
        for path, f in repo.files.items():
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            parts = rel.split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                files.append(self._entry(f))
        folders = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(dirs)
        ]
        return folders + files

    def _tree(self, repo: Repo, rev: str, sub: str, recursive: bool, cursor: int) -> None:
        commit = self._commit(repo, rev)
        if commit is None:
            return None
        entries = self._listing(repo, sub, recursive)
        if sub and not entries:
            return self._error(404, f"Entry not found: {sub}", code="EntryNotFound")
        page = entries[cursor : cursor + PAGE_SIZE]
        headers = {}
        if cursor + PAGE_SIZE < len(entries):
            base = urlsplit(self.path)
            q = f"recursive={str(recursive).lower()}&cursor={cursor + PAGE_SIZE}"
            headers["Link"] = f'<{self.server.base_url}{base.path}?{q}>; rel="next"'
        self._json(page, headers)
        return None

    def _paths_info(self, repo: Repo, rev: str) -> None:
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length).decode()
        commit = self._commit(repo, rev)
        if commit is None:
            return
        if self.headers.get("content-type", "").startswith("application/json"):
            paths = json.loads(raw).get("paths", [])
        else:
            paths = parse_qs(raw).get("paths", [])
        self._json([self._entry(repo.files[p]) for p in paths if p in repo.files])

    def _modelscope(self, method: str, segs: list[str], query: dict[str, list[str]]) -> None:
        """ModelScope's legacy file API: `models/ORG/NAME/repo/files` and `.../repo?FilePath=`."""
        if ("model", f"{segs[1]}/{segs[2]}") not in self.state.repos:
            return self._error(404, "model not found")  # ModelScope says 404, not the Hub's 401
        repo = self._repo("model", f"{segs[1]}/{segs[2]}")
        if repo is None:
            return None
        rev = query.get("Revision", ["master"])[0]
        if rev not in ("master", repo.commit):
            return self._json({"Code": 10010205001, "Success": False, "Message": "no revision"})
        if segs[3:] == ["repo", "files"]:
            files = [
                {
                    "Path": f.path,
                    "Name": f.path.rsplit("/", 1)[-1],
                    "Size": f.size,
                    "Sha256": f.sha256,
                    "Type": "blob",
                    "Revision": repo.commit,
                }
                for f in repo.files.values()
            ]
            return self._json({"Code": 200, "Success": True, "Data": {"Files": files}})
        if segs[3:] == ["repo"]:
            f = repo.files.get(query.get("FilePath", [""])[0])
            if f is None:
                return self._error(404, "file not found")
            return self._serve_file(method, f, {})
        return self._error(404, "not found")

    def _lfs_batch(self, repo_id: str) -> None:
        """The git-lfs batch API (download only): an href on the CDN port for each object."""
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        repo = self._repo("model", repo_id)
        if repo is None:
            return None
        by_sha = {f.sha256: f for f in repo.files.values() if f.lfs}
        objects: list[dict[str, object]] = []
        for obj in body.get("objects", []):
            oid = obj.get("oid")
            if oid not in by_sha:
                objects.append({"oid": oid, "error": {"code": 404, "message": "Object not found"}})
                continue
            href = f"{self.state.cdn_url}/_cdn/{quote(repo.repo_id, safe='')}:{oid}"
            action = {"href": href, "expires_in": 3600}
            objects.append({"oid": oid, "size": obj.get("size"), "actions": {"download": action}})
        return self._json({"transfer": "basic", "objects": objects})

    # -- bytes ---------------------------------------------------------------------------------

    def _resolve(self, method: str, repo: Repo, rev: str, path: str) -> None:
        commit = self._commit(repo, rev)
        if commit is None:
            return None
        f = repo.files.get(path)
        if f is None:
            return self._error(404, f"Entry not found: {path}", code="EntryNotFound")
        etag = f'"{f.sha256 if f.lfs else f.git_sha1}"'
        hub = {"X-Repo-Commit": commit, "ETag": etag}
        if f.lfs:
            hub["X-Linked-Etag"] = etag
            hub["X-Linked-Size"] = str(f.size)
        if f.lfs and self.state.redirect_lfs:
            hub["Location"] = f"{self.state.cdn_url}/_cdn/{quote(repo.repo_id, safe='')}:{f.sha256}"
            return self._send(302, b"", hub, method)
        self._serve_file(method, f, hub)
        return None

    def _cdn(self, method: str, key: str) -> None:
        repo_id, _, sha = unquote(key).partition(":")
        for (_, rid), repo in self.state.repos.items():
            if rid != repo_id:
                continue
            for f in repo.files.values():
                if f.sha256 == sha:
                    return self._serve_file(method, f, {"ETag": f'"{sha}"'})
        self._error(404, "not found")
        return None

    def _serve_file(self, method: str, f: HubFile, headers: dict[str, str]) -> None:
        start, end, status = 0, f.size, 200
        rng = self.headers.get("range")
        if rng:
            parsed = _parse_range(rng, f.size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{f.size}"
                return self._send(416, b"", headers, method)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Accept-Ranges"] = "bytes"
        headers["Content-Length"] = str(end - start)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        sent = 0
        if method == "GET":
            sent = self._stream(f, start, end)
        self.state.record(
            Served(method, f.path, rng, sent, self.headers.get("authorization"), status)
        )
        return None

    def _stream(self, f: HubFile, start: int, end: int) -> int:
        state = self.state
        with state.lock:
            drop = state.drop_after.pop(f.path, None)
        corrupt = f.path in state.corrupt
        sent, t0 = 0, time.monotonic()
        with f.disk.open("rb") as fh:
            if not corrupt and drop is None:
                # sendfile: the kernel moves the bytes, so the server costs the client little CPU.
                block = 1024 * 1024
                while sent < end - start:
                    n = min(block, end - start - sent)
                    if state.throttle is not None:
                        state.throttle.take(n)
                    k = self.connection.sendfile(fh, start + sent, n)
                    if k <= 0:
                        break
                    sent += k
                    if state.per_conn_bps:
                        ahead = sent / state.per_conn_bps - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
                return sent
            fh.seek(start)
            for raw in _blocks(fh, end - start):
                block = bytes([raw[0] ^ 0xFF]) + raw[1:] if corrupt and sent == 0 else raw
                if drop is not None and sent + len(block) > drop:
                    self.wfile.write(block[: max(0, drop - sent)])
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return drop
                if state.throttle is not None:
                    state.throttle.take(len(block))
                self.wfile.write(block)
                sent += len(block)
                if state.per_conn_bps:
                    ahead = sent / state.per_conn_bps - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        return sent

    # -- replies -------------------------------------------------------------------------------

    def _json(self, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._send(200, data, {"Content-Type": "application/json", **(headers or {})}, "GET")

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, self.command)

    def _send(self, status: int, body: bytes, headers: dict[str, str], method: str) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)


def _blocks(fh: object, n: int, size: int = 256 * 1024) -> Iterator[bytes]:
    read = fh.read  # type: ignore[attr-defined]
    while n > 0:
        block = read(min(size, n))
        if not block:
            return
        n -= len(block)
        yield block


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    unit, _, spec = value.partition("=")
    first, _, last = spec.partition("-")
    if unit.strip() != "bytes" or "," in spec:
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        return (max(0, size - n), size) if n > 0 else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    return (start, end) if start < end else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    base_url: str
    cdn_only: bool


class HubServer:
    """Two listeners on 127.0.0.1: the hub and its CDN, both with ephemeral ports."""

    def __init__(self, state: HubState | None = None) -> None:
        self.state = state or HubState()
        self._hub = self._listen(cdn_only=False)
        self._cdn = self._listen(cdn_only=True)
        self.url = self._hub.base_url
        self.state.cdn_url = self._cdn.base_url
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            for s in (self._hub, self._cdn)
        ]
        for t in self._threads:
            t.start()

    def _listen(self, cdn_only: bool) -> _Server:
        srv = _Server(("127.0.0.1", 0), HubHandler)
        srv.state = self.state
        srv.cdn_only = cdn_only
        srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}"
        return srv

    def add(self, repo: Repo) -> Repo:
        self.state.repos[(repo.repo_type, repo.repo_id)] = repo
        return repo

    def served_bytes(self, path: str) -> int:
        with self.state.lock:
            return sum(s.bytes for s in self.state.log if s.path == path and s.method == "GET")

    def stop(self) -> None:
        for s in (self._hub, self._cdn):
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_files(root: Path, spec: dict[str, int | bytes], seed: int = 0) -> Path:
    """Write a repo tree: bytes as given; an int N makes an N-byte sparse file with a few
    distinct bytes at its start, middle and end (so a wrong offset changes the hash)."""
    for rel, what in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, bytes):
            p.write_bytes(what)
            continue
        with p.open("wb") as f:
            f.truncate(what)
            for off in (0, what // 2, max(0, what - 64)):
                f.seek(off)
                f.write(hashlib.sha256(f"{seed}:{rel}:{off}".encode()).digest()[: min(32, what)])
            f.truncate(what)
    return root
