"""Which engine holds a stored response: the decisions of response-id affinity. Pure, no I/O.

vLLM keeps a `/v1/responses` conversation in the engine that answered it: a request that names a
`previous_response_id`, and a GET, DELETE or cancel of a stored response, must reach that engine;
any other answers 404. The router learns each response's engine from the answer itself (the id is
the first `"id"` of the body, or of a stream's first event) into a bounded LRU per process. A
process that has not seen the answer (another worker, another router replica, a restart) asks
the engines (`router.locator`), so the rule holds without any shared memory.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final

from vfleet.router.endpoints import Endpoint

MAX_OWNERS: Final = 65_536  # ids remembered per router process (about 10 MB at most)
SNIFF_BYTES: Final = 8192  # how far into an answer its id is looked for
# The first "id" of a Responses answer is the response's own: the body's first field, and the
# first field of the `response` in a stream's first event (`response.created`).
_ID: Final = re.compile(rb'"id"\s*:\s*"([^"\\]{1,256})"')


def find_id(data: bytes) -> str | None:
    """The response id in the first bytes of a 200 answer to POST /v1/responses, if there."""
    m = _ID.search(data)
    return m.group(1).decode("utf-8", "replace") if m else None


class Owners:
    """Response id -> (URL of the engine that made it, the model it answered as: what a key's
    allowlist is checked against on a GET or DELETE, which names no model; "" when not known);
    least recently used ids go first."""

    __slots__ = ("_lru", "capacity")

    def __init__(self, capacity: int = MAX_OWNERS) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, rid: str) -> str | None:
        found = self._lru.get(rid)
        if found is None:
            return None
        self._lru.move_to_end(rid)
        return found[0]

    def model(self, rid: str) -> str:
        """The model `rid` was made by ("" when not known)."""
        found = self._lru.get(rid)
        return "" if found is None else found[1]

    def learn(self, rid: str, url: str, model: str = "") -> None:
        lru = self._lru
        lru[rid] = (url, model)
        lru.move_to_end(rid)
        while len(lru) > self.capacity:
            lru.popitem(last=False)


def owner(owners: Owners, rid: str, endpoints: Mapping[str, Endpoint]) -> Endpoint | None:
    """The engine known to hold `rid`, if it is still listed (down or not: the state is there,
    and nowhere else). None: not known here, ask the engines."""
    url = owners.get(rid)
    return None if url is None else endpoints.get(url)


def candidates(endpoints: Iterable[Endpoint], model: str | None = None) -> list[str]:
    """The engines to ask for a response: the healthy ones serving `model` (any model when
    None, for a GET by id, which names none)."""
    return [
        ep.url
        for ep in endpoints
        if ep.healthy and (model in ep.models if model is not None else bool(ep.models))
    ]
