"""Asking the engines which of them holds a stored response: the I/O half of `router.affinity`.

`GET /v1/responses/{id}` goes to every candidate engine at once, at most LOOKUP_CONCURRENCY
requests in flight per router process, the whole lookup bounded by LOOKUP_TIMEOUT_S; the first
engine to answer 200 holds it, and the answer (with the stored response's `model`, which a key's
allowlist is checked against) is remembered in the process's `Owners`. Lookups of
one id at the same moment share one round of questions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import quote

import orjson

from vfleet.http import client
from vfleet.router.affinity import Owners

LOOKUP_TIMEOUT_S: Final = 3.0
LOOKUP_CONCURRENCY: Final = 32  # engine GETs in flight per router process
# A stored response is read whole by the GET; a larger one is taken for "not here" (the
# request then goes where the policy says, and that engine answers its own 404).
LOOKUP_MAX_BODY: Final = 16 * 1024 * 1024

Get = Callable[[str, str, float, bytes, int], Awaitable[client.Response]]


class Locator:
    __slots__ = ("_get", "_pending", "_sem", "owners", "timeout_s")

    def __init__(
        self, owners: Owners, timeout_s: float = LOOKUP_TIMEOUT_S, get: Get = client.get
    ) -> None:
        self.owners = owners
        self.timeout_s = timeout_s
        self._get = get
        self._sem = asyncio.Semaphore(LOOKUP_CONCURRENCY)
        self._pending: dict[str, asyncio.Task[str | None]] = {}

    def locate(self, rid: str, urls: list[str], auth: bytes) -> asyncio.Task[str | None]:
        """A task whose result is the URL of the engine holding `rid` (None: none of `urls`
        said so in time); learned into `owners` when found."""
        task = self._pending.get(rid)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask_all(rid, urls, auth))
            self._pending[rid] = task
            task.add_done_callback(lambda _: self._pending.pop(rid, None))
        return task

    async def _ask_all(self, rid: str, urls: list[str], auth: bytes) -> str | None:
        path = "/v1/responses/" + quote(rid, safe="")
        asks = [asyncio.ensure_future(self._ask(url, path, auth)) for url in urls]
        try:
            async with asyncio.timeout(self.timeout_s):
                for next_answer in asyncio.as_completed(asks):
                    found = await next_answer
                    if found is not None:
                        url, model = found
                        self.owners.learn(rid, url, model)
                        return url
        except TimeoutError:
            pass
        finally:
            for ask in asks:
                ask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*asks, return_exceptions=True)
        return None

    async def _ask(self, url: str, path: str, auth: bytes) -> tuple[str, str] | None:
        """(url, the stored response's model, "" if it names none) when `url` holds it."""
        async with self._sem:
            try:
                got = await self._get(url, path, self.timeout_s, auth, LOOKUP_MAX_BODY)
            except (OSError, ValueError):
                return None
        if got.status != 200:
            return None
        try:
            body = orjson.loads(got.body)
        except orjson.JSONDecodeError:
            return url, ""
        model = body.get("model") if isinstance(body, dict) else None
        return url, model if isinstance(model, str) else ""
