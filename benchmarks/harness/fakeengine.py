"""A stand-in vLLM engine for router benchmarks: answers at once, from bytes built at start-up.

A router benchmark must measure the router, so the engine behind it has to cost next to nothing
per request. This one parses requests with httptools on uvloop (both vfleet dependencies, so any
vfleet venv runs it) and writes precomputed answers. It speaks enough of vLLM's OpenAI server for
the routers under test to start and route: `/health`, `/v1/models`, `/metrics` (a few `vllm:*`
gauges), `/version`, chat and text completions (plain or streamed), embeddings. `/bench/stats`
returns how many requests each path got, so a run can check how a router split the load.

Streamed answers send one SSE event per output token, each in its own chunk and its own write,
as vLLM does. The request's `max_tokens` sets how many (default 16, at most 4096); a
`bench-gap-ms=<ms>` marker anywhere in the body (e.g. in a message) spaces them out, since
routers forward message text untouched. With no gap the stream still yields to the event loop
between events, so concurrent streams interleave.

usage: python fakeengine.py [--port 0] [--model fake-model]
Prints `ready on http://127.0.0.1:PORT` on stderr once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvloop

MAX_TOKENS_RE = re.compile(rb'"max_tokens"\s*:\s*(\d+)')
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
GAP_RE = re.compile(rb"bench-gap-ms=([0-9.]+)")
DEFAULT_TOKENS = 16
MAX_TOKENS = 4096
MAX_REQUEST = 1 << 20  # bytes: larger requests close the connection
MAX_PENDING = 64  # pipelined requests queued behind a stream on one connection
MAX_PATHS = 50  # distinct paths counted for /bench/stats


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _answer(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
    return head % (status, ctype, len(body)) + body


def _event(obj: Any) -> bytes:
    data = b"data: " + _compact(obj) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Answers:
    """Every byte the engine sends, built once for one model name."""

    model: str
    chat: bytes = b""
    text: bytes = b""
    embedding: bytes = b""
    models: bytes = b""
    ok: bytes = b""
    version: bytes = b""
    not_found: bytes = b""
    stream_head: bytes = b""
    chat_token: bytes = b""
    chat_last: bytes = b""
    text_token: bytes = b""
    text_last: bytes = b""
    stream_end: bytes = b""
    counts: dict[str, int] = field(default_factory=dict)
    running: int = 0

    def __post_init__(self) -> None:
        m = self.model
        usage = {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}
        message = {"role": "assistant", "content": "A canned reply."}
        chat = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": m}
        chat["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        self.chat = _answer(b"200 OK", _compact({**chat, "usage": usage}))
        text = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": m}
        text["choices"] = [{"index": 0, "text": " A canned reply.", "finish_reason": "stop"}]
        self.text = _answer(b"200 OK", _compact({**text, "usage": usage}))
        vector = [0.5, -0.25, 0.125, 0.75]
        emb = {"object": "list", "model": m, "usage": {"prompt_tokens": 4, "total_tokens": 4}}
        emb["data"] = [{"index": 0, "object": "embedding", "embedding": vector}]
        self.embedding = _answer(b"200 OK", _compact(emb))
        card = {"id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m}
        self.models = _answer(b"200 OK", _compact({"object": "list", "data": [card]}))
        self.ok = _answer(b"200 OK", b"", b"text/plain")
        self.version = _answer(b"200 OK", _compact({"version": "0.0.0+bench"}))
        missing = {"message": "no such route on the bench engine", "type": "NotFoundError"}
        self.not_found = _answer(b"404 Not Found", _compact({"error": missing}))
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        piece = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0}
        piece["model"] = m
        delta = {"index": 0, "delta": {"content": " tok"}, "finish_reason": None}
        self.chat_token = _event({**piece, "choices": [delta]})
        self.chat_last = _event({**piece, "choices": [{**delta, "finish_reason": "stop"}]})
        tpiece = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": m}
        tchoice = {"index": 0, "text": " tok", "finish_reason": None}
        self.text_token = _event({**tpiece, "choices": [tchoice]})
        self.text_last = _event({**tpiece, "choices": [{**tchoice, "finish_reason": "stop"}]})
        done = b"data: [DONE]\n\n"
        self.stream_end = b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)

    def metrics(self) -> bytes:
        lab = f'{{model_name="{self.model}"}}'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{lab} {self.running}.0",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{lab} 0.0",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{lab} 0.0",
        ]
        return _answer(b"200 OK", ("\n".join(lines) + "\n").encode(), b"text/plain")


class EngineConn(asyncio.Protocol):
    """One client connection: requests are answered in order, a stream holds the ones behind it."""

    def __init__(self, answers: Answers) -> None:
        self.a = answers
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.body = bytearray()
        self.pending: deque[tuple[bytes, bytes, bytes]] = deque()
        self.streaming = False
        self.writable: asyncio.Event | None = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.writable is not None:
            self.writable.set()

    def pause_writing(self) -> None:
        self.writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self.writable is not None:
            self.writable.set()
            self.writable = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_REQUEST:
            self.transport.close()

    def on_message_complete(self) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.transport.close()
            return
        self.pending.append((self.parser.get_method(), self.url, bytes(self.body)))
        if not self.streaming:
            self.drain()

    def drain(self) -> None:
        while self.pending and not self.streaming and not self.closed:
            method, url, body = self.pending.popleft()
            self.answer(method, url.partition(b"?")[0], body)

    def answer(self, method: bytes, path: bytes, body: bytes) -> None:
        a = self.a
        key = path.decode("latin-1")
        if key in a.counts or len(a.counts) < MAX_PATHS:
            a.counts[key] = a.counts.get(key, 0) + 1
        write = self.transport.write
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            chat = path == b"/v1/chat/completions"
            if STREAM_RE.search(body):
                self.streaming = True
                asyncio.get_running_loop().create_task(self.stream(chat, body))
            else:
                write(a.chat if chat else a.text)
        elif method == b"POST" and path == b"/v1/embeddings":
            write(a.embedding)
        elif path in (b"/health", b"/ping"):
            write(a.ok)
        elif path == b"/v1/models":
            write(a.models)
        elif path == b"/metrics":
            write(a.metrics())
        elif path == b"/version":
            write(a.version)
        elif path == b"/bench/stats":
            write(_answer(b"200 OK", _compact({"counts": a.counts, "running": a.running})))
        else:
            write(a.not_found)

    async def stream(self, chat: bool, body: bytes) -> None:
        a = self.a
        m = MAX_TOKENS_RE.search(body)
        n = max(1, min(MAX_TOKENS, int(m.group(1)))) if m else DEFAULT_TOKENS
        g = GAP_RE.search(body)
        gap_s = float(g.group(1)) / 1000.0 if g else 0.0
        token, last = (a.chat_token, a.chat_last) if chat else (a.text_token, a.text_last)
        a.running += 1
        try:
            self.transport.write(a.stream_head)
            for i in range(n):
                if self.writable is not None:
                    await self.writable.wait()
                if self.closed:
                    return
                self.transport.write(last if i == n - 1 else token)
                if i < n - 1:
                    await asyncio.sleep(gap_s)
            self.transport.write(a.stream_end)
        finally:
            a.running -= 1
            self.streaming = False
        self.drain()


async def serve(host: str, port: int, model: str) -> None:
    answers = Answers(model)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EngineConn(answers), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready on http://{host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--model", default="fake-model")
    args = ap.parse_args()
    uvloop.run(serve(args.host, args.port, args.model))


if __name__ == "__main__":
    main()
