"""The `kv` policy's I/O side in one router process: event subscriptions and request chains.

Owns the `KvIndex` this process builds from the engines' KV events (through a `Feed`: the
subscriber `vfleet.kvsub.KvFeed`, handed in by the command that starts the router when a `kv`
policy is configured, so that nothing else in the router reaches ZeroMQ), the chains of requests
(`router.kvchain`), and what each engine says about its tokenizer (the simulator answers
GET /sim/tokenizer; a vLLM engine answers 404 and its model's own files are used).

`prepare` gives a request's routing key its chain: at once when the chain is cached, after a
pool thread computed it when that is quick (a prompt sharing a cached prefix: `Chains`' quick
lane), or without one (the policy then routes as `prefix`) when the model has no tokenizer,
when the prompt needs a full encode (done in the background for the next request), when the
pool has `max_pending` computations under way, or when it queued for a thread CHAIN_QUEUE_S
and got none. Each request `prepare` handles is counted once, by outcome (OUTCOMES), through
`count` (the router's `vfleet_router_kv_chains_total`). The block size is the one the engines'
events carry, or before any event the one their /metrics report in `vllm:cache_config_info`
(asked once per engine, with the tokenizer question).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Final, Protocol

import orjson

from vfleet.http import client
from vfleet.router.endpoints import Endpoint
from vfleet.router.kvchain import SIM_TOKENIZER, Chains, prompt_of
from vfleet.router.kvindex import KvIndex
from vfleet.router.kvwire import Publisher
from vfleet.router.state import Chain, RouteKey


class Feed(Protocol):
    """Subscriptions to engines' KV-event publishers that feed an index (vfleet.kvsub)."""

    def set_publishers(self, wanted: Mapping[str, str | Publisher]) -> None: ...

    async def close(self) -> None: ...


FeedFactory = Callable[[KvIndex], Feed]

log = logging.getLogger("vfleet.router.kv")

_BLOCK_SIZE: Final = re.compile(rb'vllm:cache_config_info\{[^}]*block_size="(\d+)"')
# A computation that had to queue for a quick-lane thread (the threads were busy when it was
# submitted) is given up after CHAIN_QUEUE_S without one: its request goes without a chain.
# One that got a thread is waited for: its work is bounded (kvchain.QUICK_CHARS, ~0.3-1 ms in
# benchmarks/kv_tokenize.py), and CHAIN_WAIT_S only bounds a starved machine's worst case (and
# a model's first requests, while its tokenizer loads: kvchain.LOAD_WAIT_S).
CHAIN_QUEUE_S: Final = 0.002
CHAIN_WAIT_S: Final = 0.05
HINT_TIMEOUT_S: Final = 2.0  # GET /sim/tokenizer
# Why a request had a chain or went without one (`count`'s outcome). Without: no_prompt (not
# one text or chat prompt), no_block_size (no engine told it yet), tokenizer_loading (not
# loaded within kvchain.LOAD_WAIT_S, or no engine told yet which tokenizer to use),
# no_tokenizer (the model has none the router can use), background (the prompt needs a full
# encode: done in the slow lane for the next request), busy (the quick lane at its bound, or
# no thread within CHAIN_QUEUE_S), timeout (CHAIN_WAIT_S), failed (the computation raised).
OUTCOMES: Final = (
    "cached",
    "computed",
    "no_prompt",
    "no_block_size",
    "tokenizer_loading",
    "no_tokenizer",
    "background",
    "busy",
    "timeout",
    "failed",
)


def _no_wait(model: str, seconds: float) -> None:
    pass


def _no_count(model: str, outcome: str) -> None:
    pass


class KvRouting:
    """One router process's KV-event index, subscriptions and chain cache."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        feed: FeedFactory | None = None,
        backend_auth: bytes = b"",
    ) -> None:
        self.loop = loop
        self.backend_auth = backend_auth
        self.index = KvIndex()
        self.chains = Chains()
        self._make_feed = feed  # None: no subscriptions (the policy routes as prefix)
        self._feed: Feed | None = None
        # engine url -> its tokenizer hint (None: it has none, use the model's files)
        self._hints: dict[str, str | None] = {}
        # engine url -> block size its vllm:cache_config_info reports (before any event does)
        self._block_sizes: dict[str, int] = {}
        self._asking: set[str] = set()
        # (model, one of OUTCOMES) per request prepared; the router sets its metrics' counter
        self.count: Callable[[str, str], None] = _no_count
        self.waited: Callable[[str, float], None] = _no_wait  # model, seconds (metrics)

    def set_publishers(self, publishers: Mapping[str, str | Publisher]) -> None:
        """Subscribe to exactly these engines' publishers (url -> ZMQ endpoint, or a
        `kvwire.Publisher` naming its data-parallel ranks)."""
        if self._feed is None:
            if not publishers or self._make_feed is None:
                return
            self._feed = self._make_feed(self.index)
        self._feed.set_publishers(publishers)
        for url in publishers:
            self.index.track(url)
        for url in [u for u in self._hints if u not in publishers]:
            del self._hints[url]
            self._block_sizes.pop(url, None)
        for url in publishers:  # ask now: the first requests need not go without a chain
            if url not in self._hints:
                self._ask(url)

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.close()
        self.chains.close()

    def prepare(
        self,
        key: RouteKey,
        fields: Mapping[str, Any],
        serving: Sequence[Endpoint],
        then: Callable[[RouteKey], None],
    ) -> None:
        """Call `then` with `key` and, when it can be had, the request's chain (maybe at once)."""
        key = dataclasses.replace(key, now=self.loop.time())
        prompt = prompt_of(fields)
        urls = [ep.url for ep in serving]
        size = 0
        if prompt is not None:
            size = self.index.block_size(urls) or next(
                (self._block_sizes[u] for u in urls if u in self._block_sizes), 0
            )
        card = self._card(key.model, serving) if size else None
        if prompt is None or card is None:
            why = "no_prompt" if prompt is None else "no_block_size" if not size else ""
            self.count(key.model, why or "tokenizer_loading")  # card None: no hint heard yet
            then(key)
            return
        chain = self.chains.lookup(key.model, size, prompt)
        if chain is not None:
            self.count(key.model, "cached")
            then(dataclasses.replace(key, chain=chain))
            return
        if self.chains.tokenizer_ready(key.model, card) is None:
            self.count(key.model, "no_tokenizer")
            then(key)  # the model has no tokenizer the router can use
            return
        # While the model's tokenizer loads, a computation waits for it (kvchain.LOAD_WAIT_S):
        # a quick one (the simulator's) serves even the first request.
        queued = self.chains.would_queue()
        future = self.chains.compute(key.model, card, size, prompt)
        if future is None:
            self.count(key.model, "busy")
            then(key)  # the pool is at its bound: no queueing behind a burst
            return
        self._wait(future, queued, key, card, then)

    def _wait(
        self,
        future: Future[Chain | None],
        queued: bool,
        key: RouteKey,
        card: Mapping[str, Any],
        then: Callable[[RouteKey], None],
    ) -> None:
        done = False
        timer: asyncio.TimerHandle

        def finish(chain: Chain | None, outcome: str) -> None:
            nonlocal done
            if done:
                return
            done = True
            timer.cancel()
            self.count(key.model, outcome)
            self.waited(key.model, self.loop.time() - key.now)
            then(key if chain is None else dataclasses.replace(key, chain=chain))

        def computed(fut: asyncio.Future[Chain | None]) -> None:
            if fut.cancelled():
                finish(None, "busy")  # only queued_long cancels, and it finished first
            elif fut.exception() is not None:
                finish(None, "failed")
            elif (chain := fut.result()) is not None:  # cached by the thread that computed it
                finish(chain, "computed")
            else:
                # None: the tokenizer was not loaded in time, or the prompt needs a full
                # encode. Asked now, the tokenizer may have just finished loading: rare, and
                # then miscounted as background.
                ready = self.chains.tokenizer_ready(key.model, card)
                why = "background" if ready else "no_tokenizer" if ready is None else ""
                finish(None, why or "tokenizer_loading")

        def queued_long() -> None:
            nonlocal timer
            if future.cancel():  # still queued: skipped, and its request goes now
                finish(None, "busy")
            else:  # a thread has it: its work is bounded
                timer = self.loop.call_later(CHAIN_WAIT_S - CHAIN_QUEUE_S, finish, None, "timeout")

        if queued:
            timer = self.loop.call_later(CHAIN_QUEUE_S, queued_long)
        else:
            timer = self.loop.call_later(CHAIN_WAIT_S, finish, None, "timeout")
        asyncio.wrap_future(future, loop=self.loop).add_done_callback(computed)

    def _card(self, model: str, serving: Sequence[Endpoint]) -> dict[str, Any] | None:
        """The model's card with its engines' tokenizer hint (and, for a LoRA adapter, its base
        model's directory as `base_root`); None until one engine has told (asked here, in the
        background, the first time)."""
        for ep in serving:
            if ep.url not in self._hints:
                self._ask(ep.url)
                continue
            card = dict(next((c for c in ep.cards if c.get("id") == model), {"id": model}))
            parent = card.get("parent")
            if parent:
                base = next((c for c in ep.cards if c.get("id") == parent), {})
                card["base_root"] = base.get("root") or parent
            hint = self._hints[ep.url]
            return {**card, "tokenizer": hint} if hint else card
        return None

    def _ask(self, url: str) -> None:
        if url in self._asking or len(self._asking) > 64:
            return
        self._asking.add(url)
        self.loop.create_task(self._ask_hint(url))

    async def _ask_hint(self, url: str) -> None:
        try:
            got = await client.get(url, "/sim/tokenizer", HINT_TIMEOUT_S, self.backend_auth)
        except (OSError, TimeoutError, ValueError):
            return  # asked again by the next request
        finally:
            self._asking.discard(url)
        hint = None
        if got.status == 200:
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.loads(got.body)
                if isinstance(body, dict) and body.get("tokenizer") == SIM_TOKENIZER:
                    hint = SIM_TOKENIZER
        self._hints[url] = hint
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            metrics = await client.get(url, "/metrics", HINT_TIMEOUT_S, self.backend_auth)
            found = _BLOCK_SIZE.search(metrics.body) if metrics.status == 200 else None
            if found is not None:
                self._block_sizes[url] = int(found.group(1))
