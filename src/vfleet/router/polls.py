"""Long-polls of `GET /vfleet/demand?wait_s=S`: answered as soon as some worker holds a request,
or at their deadline.

One task per worker reads the demand table all workers share every POLL_S while any poll waits (a
hold in this worker answers at once, through `answer_all`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import orjson

from vfleet.http.server import Connection
from vfleet.router.demand import DemandTable

MAX_WAIT_S: Final = 30.0  # longest GET /vfleet/demand?wait_s= long-poll
MAX_POLLS: Final = 64  # long-polls waiting at once per worker; more get 429
POLL_S: Final = 0.01  # how often a long-poll reads the demand table


class Polls:
    __slots__ = ("table", "task", "waiting")

    def __init__(self, table: DemandTable) -> None:
        self.table = table
        self.waiting: dict[int, tuple[Connection, float]] = {}  # id(conn) -> (conn, deadline)
        self.task: asyncio.Task[None] | None = None

    def add(self, conn: Connection, wait_s: float) -> bool:
        """Wait up to `wait_s`; False (not added) when MAX_POLLS already wait."""
        if len(self.waiting) >= MAX_POLLS:
            return False
        key = id(conn)
        self.waiting[key] = (conn, time.monotonic() + min(wait_s, MAX_WAIT_S))
        conn.on_close = lambda: self._left(key)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return True

    def answer_all(self) -> None:
        if self.waiting:
            self._answer(list(self.waiting))

    def _left(self, key: int) -> None:
        self.waiting.pop(key, None)

    async def _run(self) -> None:
        table = self.table
        try:
            while self.waiting:
                await asyncio.sleep(POLL_S)
                if table.held() > 0:
                    self.answer_all()
                    continue
                now = time.monotonic()
                due = [key for key, (_, deadline) in self.waiting.items() if deadline <= now]
                if due:
                    self._answer(due)
        finally:
            self.task = None

    def _answer(self, keys: list[int]) -> None:
        body = orjson.dumps(self.table.as_dict())
        for key in keys:
            entry = self.waiting.pop(key, None)
            if entry is not None:
                entry[0].on_close = None
                entry[0].respond(200, body)
