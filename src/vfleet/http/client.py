"""The control plane's HTTP client: one bounded GET, for probes, load and demand reads (and a
POST, for the OTLP span exporter).

Health probes, engine /metrics, the router's demand and `vfleet status` all need the same small
thing: GET a path, get the status and body, give up after a timeout. Each exchange is one
connection (`connection: close`), bounded in time (the whole exchange, connect included) and in
size (head and body), so a hung or hostile peer costs a caller at most `timeout_s` and
`max_body` bytes. The router's request hot path does not use this: it keeps pooled keep-alive
connections of its own (`router.upstream`).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import httptools

MAX_BODY = 8 * 1024 * 1024  # vLLM's /metrics with many LoRA adapters is a few hundred KB
MAX_HEAD = 64 * 1024  # status line and headers
READ_SIZE = 64 * 1024


class ClientError(OSError):
    """The peer answered, but not with a complete HTTP response within the size limits.

    An OSError, like the connection failures and timeouts `get` raises, so a caller that treats
    "no usable answer" as one case catches OSError alone."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


def bearer(key: str | None) -> bytes:
    """The Authorization header line `get` sends for `key` (nothing when there is no key)."""
    if not key:
        return b""
    if any(c in key for c in "\r\n"):
        raise ValueError("an API key cannot contain a line break")
    return f"authorization: Bearer {key}\r\n".encode()


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, authority) of `http://HOST[:PORT][/...]` (or `https://`, port 443 unless
    given); an IPv6 host is in brackets."""
    default = 443 if url.startswith("https://") else 80
    authority = url.removeprefix("https://").removeprefix("http://").partition("/")[0]
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit() or host.startswith("[") != host.endswith("]"):
        host, port = authority, ""
    if not host:
        raise ValueError(f"no host in {url!r}")
    return host.strip("[]"), int(port or default), authority


async def get(
    url: str,
    path: str,
    timeout_s: float,
    auth: bytes = b"",
    max_body: int = MAX_BODY,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Response:
    """GET `url` + `path` (`auth`: header lines from `bearer`). An `https://` URL is spoken
    over TLS with `tls` (what it verifies is the context's; default: the system's trust store
    and the URL's host), `server_name` the name sent and checked instead of the URL's host.

    Raises OSError when there is no usable answer: the connection failed, TimeoutError when the
    whole exchange took longer than `timeout_s`, ClientError for a malformed answer or one
    larger than `max_body`. ValueError for a URL without a host."""
    host, port, authority = split_url(url)
    request = b"GET %s HTTP/1.1\r\nhost: %s\r\nconnection: close\r\n%s\r\n" % (
        path.encode(),
        authority.encode(),
        auth,
    )
    if url.startswith("https://"):
        ctx = tls or ssl.create_default_context()
        return await _exchange(host, port, request, timeout_s, max_body, ctx, server_name)
    return await _exchange(host, port, request, timeout_s, max_body)


async def post(
    url: str,
    path: str,
    body: bytes,
    content_type: bytes,
    timeout_s: float,
    auth: bytes = b"",
    max_body: int = MAX_BODY,
) -> Response:
    """POST `body` to `url` + `path`, bounded and failing as `get` does (the OTLP exporter's
    batches: router.tracing)."""
    host, port, authority = split_url(url)
    head = b"POST %s HTTP/1.1\r\nhost: %s\r\nconnection: close\r\ncontent-type: %s\r\n" % (
        path.encode(),
        authority.encode(),
        content_type,
    )
    request = head + auth + b"content-length: %d\r\n\r\n" % len(body) + body
    return await _exchange(host, port, request, timeout_s, max_body)


async def _exchange(
    host: str,
    port: int,
    request: bytes,
    timeout_s: float,
    max_body: int,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Response:
    # the handshake is inside the timeout too: a peer that never finishes it costs timeout_s
    async with asyncio.timeout(timeout_s):
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=server_name or host
            )
        try:
            writer.write(request)
            return await _read_response(reader, max_body)
        finally:
            writer.close()


async def answers(url: str, path: str, timeout_s: float, auth: bytes = b"") -> bool:
    """Whether GET `url` + `path` answers 200 within `timeout_s`; any failure is a no."""
    try:
        response = await get(url, path, timeout_s, auth)
    except (OSError, ValueError):
        return False
    return response.status == 200


class _Answer:
    """httptools callbacks collecting one response; they never raise (httptools would wrap the
    error), they record what went wrong for `_read_response` to raise."""

    __slots__ = ("body", "complete", "framed", "head_done", "max_body", "overflow")

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.body = bytearray()
        self.head_done = False
        self.framed = False  # a length or chunked encoding: EOF before the end is truncation
        self.complete = False
        self.overflow = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        if len(self.body) + len(data) > self.max_body:
            self.overflow = True
        elif not self.overflow:
            self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


async def _read_response(reader: asyncio.StreamReader, max_body: int) -> Response:
    answer = _Answer(max_body)
    parser = httptools.HttpResponseParser(answer)
    head_bytes = 0
    while not answer.complete:
        data = await reader.read(READ_SIZE)
        if not data:
            if answer.head_done and not answer.framed:
                break  # the body ran until the peer closed, as HTTP/1.1 allows
            raise ClientError("the connection closed before a complete answer")
        if not answer.head_done:
            head_bytes += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ClientError(f"malformed HTTP answer: {exc}") from None
        if answer.overflow:
            raise ClientError(f"answer body over {max_body} bytes")
        if not answer.head_done and head_bytes > MAX_HEAD:
            raise ClientError(f"answer head over {MAX_HEAD} bytes")
    status: int = parser.get_status_code()
    return Response(status, bytes(answer.body))
