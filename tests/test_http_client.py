"""`vfleet.http.client`: the control plane's bounded GET, against real sockets on 127.0.0.1.

A scripted server answers with exact bytes (each framing HTTP/1.1 allows, and each way a peer can
misbehave); a real `vfleet sim` answers /health and /metrics as the probes read them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from conftest import SimProcess
from vfleet.http import client

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _serve(script: Script) -> AsyncIterator[str]:
    """A server running `script` per connection; on exit it stops and every connection's
    script has ended and closed its socket (bounded)."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await script(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
        if handlers:
            await asyncio.wait(handlers, timeout=10)


def _answer(raw: bytes, close: bool = True, seen: list[bytes] | None = None) -> Script:
    """Read the request head, then write `raw` (and close unless told to keep it open)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(raw)
        await writer.drain()
        if not close:
            await reader.read()  # keep the connection until the client closes it

    return script


def _get(script: Script, path: str = "/x", **kw: object) -> client.Response:
    async def main() -> client.Response:
        async with _serve(script) as url:
            return await client.get(url, path, **kw)  # type: ignore[arg-type]

    return asyncio.run(main())


def test_content_length_body_and_the_request_it_sends() -> None:
    seen: list[bytes] = []
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    resp = _get(_answer(raw, seen=seen), "/v1/models", timeout_s=5, auth=client.bearer("k1"))
    assert resp == client.Response(200, b"hello")
    (head,) = seen
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /v1/models HTTP/1.1"
    assert "authorization: Bearer k1" in lines
    assert "connection: close" in lines
    assert any(line.startswith("host: 127.0.0.1:") for line in lines)


def test_chunked_body_is_decoded() -> None:
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert _get(_answer(raw), timeout_s=5) == client.Response(200, b"abcde")


def test_body_until_close() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it"
    assert _get(_answer(raw), timeout_s=5) == client.Response(200, b"all of it")


def test_a_peer_that_keeps_the_connection_open_is_answered_at_the_end_of_the_message() -> None:
    """The peer ignores `connection: close`: the answer is complete at its declared length,
    so the client returns then instead of waiting (until the timeout) for the peer to close."""
    raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno"
    assert _get(_answer(raw, close=False), timeout_s=30) == client.Response(404, b"no")


def test_body_over_the_limit_is_an_error() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 100
    with pytest.raises(client.ClientError, match="over 99 bytes"):
        _get(_answer(raw), timeout_s=5, max_body=99)
    assert _get(_answer(raw), timeout_s=5, max_body=100).body == b"x" * 100


def test_endless_head_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(2 * client.MAX_HEAD // 1000 + 2):
            writer.write(b"x-filler: " + b"y" * 1000 + b"\r\n")
            await writer.drain()

    with pytest.raises(client.ClientError, match="head over"):
        _get(script, timeout_s=10)


def test_truncated_body_is_an_error() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"
    with pytest.raises(client.ClientError, match="closed before a complete answer"):
        _get(_answer(raw), timeout_s=5)


def test_garbage_is_an_error() -> None:
    with pytest.raises(client.ClientError, match="malformed"):
        _get(_answer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), timeout_s=5)


def test_silent_peer_times_out() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; ends when the client gives up and closes

    with pytest.raises(TimeoutError):
        _get(script, timeout_s=0.2)


def test_refused_connection_is_an_oserror() -> None:
    async def main() -> None:
        async with _serve(_answer(b"")) as url:
            pass  # stopped: nothing listens on that port any more
        with pytest.raises(OSError):
            await client.get(url, "/", 5)
        assert await client.answers(url, "/", 5) is False

    asyncio.run(main())


def test_answers_is_true_only_for_200() -> None:
    async def main() -> list[bool]:
        out = []
        for raw in (
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            b"nonsense\r\n\r\n",
        ):
            async with _serve(_answer(raw)) as url:
                out.append(await client.answers(url, "/health", 5))
        return out

    assert asyncio.run(main()) == [True, False, False]


def test_bearer_and_urls() -> None:
    assert client.bearer(None) == b""
    assert client.bearer("") == b""
    assert client.bearer("abc") == b"authorization: Bearer abc\r\n"
    with pytest.raises(ValueError, match="line break"):
        client.bearer("abc\r\nx-evil: 1")
    assert client.split_url("http://10.0.0.1:8001/v1") == ("10.0.0.1", 8001, "10.0.0.1:8001")
    assert client.split_url("http://[::1]:9000") == ("::1", 9000, "[::1]:9000")
    assert client.split_url("http://engine") == ("engine", 80, "engine")
    with pytest.raises(ValueError, match="no host"):
        client.split_url("http://:80/")


def test_a_real_engine_health_and_metrics(gen_sim: SimProcess) -> None:
    async def main() -> tuple[bool, client.Response]:
        ok = await client.answers(gen_sim.url, "/health", 5)
        return ok, await client.get(gen_sim.url, "/metrics", 5)

    ok, metrics = asyncio.run(main())
    assert ok
    assert metrics.status == 200
    assert b"vllm:num_requests_running" in metrics.body
