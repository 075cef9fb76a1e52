"""The bench's HTTP client keeps connections alive: a streamed answer that allows it leaves its
connection in the pool for the next request (a new connection per request puts a handshake in
every TTFT and doubles both sides' CPU), and one that says `connection: close` does not."""

from __future__ import annotations

import asyncio

import pytest

from vfleet.bench.client import Client

BODY = {"model": "m", "prompt": "hi", "max_tokens": 2, "stream": True}
EVENTS = b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}\n\ndata: [DONE]\n\n'


async def _serve(close: bool) -> tuple[asyncio.Server, list[int]]:
    """An SSE server on 127.0.0.1 that counts the connections it accepts."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)
                chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(EVENTS), EVENTS)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    + (b"connection: close\r\n" if close else b"")
                    + b"transfer-encoding: chunked\r\n\r\n"
                    + chunk
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted


async def _three_requests(close: bool) -> tuple[int, list[int]]:
    server, accepted = await _serve(close)
    port = server.sockets[0].getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}")
    try:
        for _ in range(3):
            ex = await client.post("/v1/completions", BODY, timeout_s=10)
            assert ex.status == 200 and ex.chunks == 2 and not ex.error
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    return len(accepted), accepted


@pytest.mark.timeout(30)
def test_a_streamed_answer_leaves_its_connection_for_the_next_request() -> None:
    connections, _ = asyncio.run(_three_requests(close=False))
    assert connections == 1


@pytest.mark.timeout(30)
def test_an_answer_that_closes_its_connection_is_not_reused() -> None:
    connections, _ = asyncio.run(_three_requests(close=True))
    assert connections == 3
