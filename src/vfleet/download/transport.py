"""HTTP for file bytes: pooled keep-alive connections (urllib3), redirects, ranges, error mapping.

Every source ends in plain HTTP GETs with a Range header (a hub's resolve URL, a presigned S3
URL, an LFS href), so one transport serves them all. urllib3 exceptions and status codes become
`vfleet.download.errors` here; nothing above this module sees urllib3.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, SSLError

from vfleet.download.errors import (
    AuthError,
    SizeMismatch,
    SourceNotFound,
    TransferError,
    TransientError,
)

MAX_REDIRECTS = 10
# Hosts that redirect to a CDN must not see our token leave with the request.
_PRIVATE_HEADERS = ("authorization", "cookie", "proxy-authorization")


@dataclass(frozen=True, slots=True)
class HttpTarget:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # longest silence on a connection before it counts as failed
    max_connections: int = 8  # per host, kept alive between requests


class Stream:
    """The body of one ranged GET; `readinto` fills a caller's buffer without growing memory."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, url: str) -> None:
        self._resp = resp
        self.url = url  # after redirects: later ranges of the same file can go straight there

    def readinto(self, buf: memoryview) -> int:
        try:
            return self._resp.readinto(buf)
        except HTTPError as exc:
            raise TransientError(f"connection to {_host(self.url)} failed: {exc}") from exc
        except OSError as exc:
            raise TransientError(f"connection to {_host(self.url)} failed: {exc}") from exc

    def close(self) -> None:
        # A half-read body cannot go back to the pool; a finished one can.
        finished = isinstance(self._resp, urllib3.HTTPResponse) and self._resp.isclosed()
        if finished:
            self._resp.release_conn()
        else:
            self._resp.close()


class Http:
    """Thread-safe: one instance is shared by every download worker."""

    def __init__(self, settings: HttpSettings | None = None) -> None:
        self.settings = settings or HttpSettings()
        self._lock = threading.Lock()
        self._managers: dict[str | None, urllib3.PoolManager] = {}

    def _manager(self, url: str) -> urllib3.PoolManager:
        proxy = _proxy_for(url)
        with self._lock:
            mgr = self._managers.get(proxy)
            if mgr is None:
                kw = {
                    "maxsize": self.settings.max_connections,
                    "block": False,
                    "retries": False,
                    "timeout": urllib3.Timeout(
                        connect=self.settings.connect_timeout_s, read=self.settings.read_timeout_s
                    ),
                }
                mgr = (
                    urllib3.ProxyManager(proxy, **kw) if proxy else urllib3.PoolManager(**kw)  # type: ignore[arg-type]
                )
                self._managers[proxy] = mgr
            return mgr

    def request(
        self,
        method: str,
        target: HttpTarget,
        *,
        extra: Mapping[str, str] | None = None,
        body: bytes | None = None,
        stream: bool = False,
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """Send one request following redirects; returns the response and the final URL.

        Non-2xx statuses raise (401/403 AuthError, 404/410 SourceNotFound, 429/5xx transient).
        """
        url = target.url
        headers = {**target.headers, **(extra or {}), "Accept-Encoding": "identity"}
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self._manager(url).request(
                    method,
                    url,
                    headers=headers,
                    body=body,
                    redirect=False,
                    preload_content=not stream,
                    decode_content=False,
                )
            except SSLError as exc:
                raise TransferError(f"TLS failure talking to {_host(url)}: {exc}") from exc
            except HTTPError as exc:
                raise TransientError(f"cannot reach {_host(url)}: {exc}") from exc
            if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                resp.drain_conn()
                resp.release_conn()
                nxt = urljoin(url, resp.headers["location"])
                if _host(nxt) != _host(url):
                    headers = {
                        k: v for k, v in headers.items() if k.lower() not in _PRIVATE_HEADERS
                    }
                if resp.status == 303:
                    method, body = "GET", None
                url = nxt
                continue
            if resp.status >= 300:
                detail = _error_detail(resp)
                resp.drain_conn()
                resp.release_conn()
                raise status_error(resp.status, target.url, detail)
            return resp, url
        raise TransferError(f"too many redirects fetching {target.url}")

    def get_range(
        self, target: HttpTarget, start: int, end: int, size: int, ranged: bool
    ) -> Stream:
        """GET bytes [start, end) of a file of `size` bytes."""
        extra = {"Range": f"bytes={start}-{end - 1}"} if ranged and end > start else {}
        resp, url = self.request("GET", target, extra=extra, stream=True)
        if resp.status == 206:
            got = resp.headers.get("content-range", "")
            if not got.startswith(f"bytes {start}-{end - 1}/"):
                resp.close()
                raise TransferError(f"{target.url}: server sent the wrong byte range ({got!r})")
            total = got.rpartition("/")[2]
        elif start != 0 or (ranged and end != size):
            resp.close()
            raise TransferError(f"{target.url}: server ignored the byte range (no Range support)")
        else:
            total = resp.headers.get("content-length", str(size))
        if total not in ("*", str(size)):
            resp.close()
            raise SizeMismatch(
                f"{target.url}: the server has {total} bytes, the listing said {size}"
            )
        return Stream(resp, url)

    def close(self) -> None:
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for mgr in managers:
            mgr.clear()


def status_error(status: int, url: str, detail: str = "") -> Exception:
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return AuthError(f"{url}: access denied (HTTP {status}); check the token{suffix}")
    if status in (404, 410):
        return SourceNotFound(f"{url}: not found (HTTP {status}){suffix}")
    if status == 429 or status >= 500:
        return TransientError(f"{url}: server busy or failing (HTTP {status}){suffix}")
    return TransferError(f"{url}: HTTP {status}{suffix}")


def _error_detail(resp: urllib3.BaseHTTPResponse) -> str:
    msg = resp.headers.get("x-error-message")
    return msg.strip()[:200] if msg else ""


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _proxy_for(url: str) -> str | None:
    # The usual HTTPS_PROXY / HTTP_PROXY / NO_PROXY variables, as requests and httpx read them.
    host = urlsplit(url).hostname or ""
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(urlsplit(url).scheme)
