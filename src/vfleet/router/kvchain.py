"""A request's KV-block chain, computed the way its engine computes it.

Owns prompts, their chains and the cache of chains, and the pool threads that compute them. An
engine caches a prompt as blocks of `block_size` token ids; the router hashes the same blocks
(`kvindex.chain_hash`) to look them up in the index its events built. The token ids are the
model's tokenizer's (`router.kvtokenizer`: a chat rendered with its template, a completion's
prompt with special tokens); token-id prompts are taken as they are. No tokenizer: no chain, and
the policy falls back to `prefix`.

A LoRA adapter's chains start from `kvindex.lora_root(adapter)`: vLLM hashes the adapter into
its blocks, so only blocks stored for that adapter are hits (see `router.kvindex`).

Tokenizing runs in pool threads, never on the event loop (a Hugging Face tokenizer lets go of
the GIL while it encodes); one that passed its self-check encodes incrementally, a prompt
sharing a cached prompt's long text prefix reusing its ids and its block hashes. Two lanes,
each bounded:
- quick (QUICK_THREADS threads, at most MAX_PENDING computations): a prompt with at most
  QUICK_CHARS characters left to encode gets its chain here, while its request waits;
- slow (one thread, at most MAX_SLOW; tokenizer loads too): the rest are encoded in full, after
  their request was answered "no chain" at once (it routes as `prefix`), so that the next
  prompt with that prefix is quick. Beyond either bound a prompt goes without a chain.
Chains are cached per prompt (bounded by count, tokens and characters of their keys); the
simulator's and token-id prompts memoize block hashes per (parent, block).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from vfleet.router.kvindex import chain_hash, chain_run, lora_root
from vfleet.router.kvtokenizer import (
    CHATML,
    SIM_TOKENIZER,
    HfTokenizer,
    SimTokenizer,
    Tokenizer,
    load_logged,
    load_tokenizer,
)
from vfleet.router.kvtokens import Plan
from vfleet.router.state import Chain

# the tokenizers' names, for the callers that take them from here
__all__ = [
    "CHATML",
    "SIM_TOKENIZER",
    "BlockMemo",
    "Chains",
    "HfTokenizer",
    "Prompt",
    "SimTokenizer",
    "Tokenizer",
    "chain_root",
    "load_tokenizer",
    "prompt_of",
    "text_chain",
    "tokens_of",
]

log = logging.getLogger("vfleet.router.kv")

MAX_CHAINS: Final = 4096  # prompts whose chains are kept
MAX_CHAIN_TOKENS: Final = 16 * 2**20  # tokens kept over all of them (~ 64 MB of hashes, bounded)
MAX_KEY_CHARS: Final = 2**24  # characters (or ids) of their prompts, which key them
MAX_BLOCK_MEMO: Final = 262_144  # (parent, block) -> hash entries kept
MAX_PROMPT_CHARS: Final = 4 * 2**20  # longer prompts are not tokenized (no chain)
# The lanes (benchmarks/kv_tokenize.py measured them). A quick chain costs ~0.3-1 ms, a full
# encode ~1 ms per 5,000 characters (Rust time, GIL released): with 4,096 characters left at
# most, a waiting request's chain takes about a millisecond. Two threads: one encodes while the
# other runs Python (GIL held); 1, 2 and 4 threads served 100 req/s alike. Beyond MAX_PENDING
# computations a request would queue for several milliseconds (kvroute gives up on a queued
# one after CHAIN_QUEUE_S anyway), so it goes without at once.
QUICK_THREADS: Final = 2
QUICK_CHARS: Final = 4096
MAX_PENDING: Final = 8
MAX_SLOW: Final = 2  # full encodes queued or running (they only warm the cache)
LOAD_WAIT_S: Final = 0.05  # a quick-lane computation waits this long for its tokenizer's load


def chain_root(model: str, card: Mapping[str, Any]) -> int | None:
    """Where `model`'s chains start: from its adapter's root when the card names a LoRA adapter
    (vLLM lists one with its base model as `parent`), from nothing for a base model."""
    parent = card.get("parent")
    return lora_root(model) if isinstance(parent, str) and parent and parent != model else None


# -- prompts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prompt:
    """What of a request is tokenized: chat messages, a text prompt, or token ids."""

    messages: tuple[Any, ...] | None = None
    text: str | None = None
    ids: tuple[int, ...] | None = None
    # its chain's cache key, and that key's size (characters or ids), computed once
    key: Any = field(default=None, init=False, compare=False, repr=False)
    size: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        key: tuple[str, Any]
        if self.text is not None:
            key = ("t", self.text)
        elif self.ids is not None:
            key = ("i", self.ids)
        else:
            key = ("m", json.dumps(self.messages, sort_keys=True, default=str))
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "size", len(key[1]))

    def cache_key(self) -> Any:
        return self.key


def prompt_of(fields: Mapping[str, Any]) -> Prompt | None:
    """The prompt of a chat or completion body; None for anything else (a list of prompts,
    embeddings inputs, over MAX_PROMPT_CHARS)."""
    messages = fields.get("messages")
    if isinstance(messages, list):
        if sum(len(str(m)) for m in messages) > MAX_PROMPT_CHARS:
            return None
        return Prompt(messages=tuple(messages))
    prompt = fields.get("prompt")
    if isinstance(prompt, str):
        return Prompt(text=prompt) if len(prompt) <= MAX_PROMPT_CHARS else None
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return Prompt(ids=tuple(prompt))
    return None


def tokens_of(tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """The prompt's token ids as the engine computes them."""
    if prompt.ids is not None:
        return list(prompt.ids)
    if prompt.text is not None:
        return tokenizer.encode(prompt.text, True)
    return tokenizer.encode(tokenizer.render_chat(list(prompt.messages or ())), False)


class BlockMemo:
    """(parent hash, block tokens) -> router block hash, bounded (the oldest go first): prompts
    that share a prefix hash its blocks once. Pool threads share it (under its lock)."""

    def __init__(self, max_entries: int = MAX_BLOCK_MEMO) -> None:
        self.max_entries = max_entries
        self._memo: OrderedDict[tuple[int | None, tuple[int, ...]], int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memo)

    def hashes(
        self, tokens: Sequence[int], block_size: int, root: int | None = None
    ) -> tuple[int, ...]:
        """The chain of `tokens`' full blocks from `root` (a LoRA adapter's, or None)."""
        with self._lock:
            return self._hashes(tokens, block_size, root)

    def _hashes(self, tokens: Sequence[int], block_size: int, root: int | None) -> tuple[int, ...]:
        memo = self._memo
        out: list[int] = []
        parent: int | None = root
        for start in range(0, len(tokens) - block_size + 1, block_size):
            block = tuple(tokens[start : start + block_size])
            key = (parent, block)
            h = memo.get(key)
            if h is None:
                h = memo[key] = chain_hash(parent, block)
                if len(memo) > self.max_entries:
                    memo.popitem(last=False)
            out.append(h)
            parent = h
        return tuple(out)


# -- the cache and the thread pool --------------------------------------------------------------


class Chains:
    """Chains of prompts per model, computed in pool threads and cached.

    `lookup` answers at once from the cache (the event loop's side); `compute` returns a future
    that a quick-lane thread fulfils, with None at once when the prompt has too much left to
    encode (the slow lane then computes it for the cache). A model whose tokenizer cannot be had
    gives None chains, and is tried again only when its card changes.
    """

    def __init__(
        self,
        threads: int = QUICK_THREADS,
        max_chains: int = MAX_CHAINS,
        max_pending: int = MAX_PENDING,
        quick_chars: int = QUICK_CHARS,
        max_key_chars: int = MAX_KEY_CHARS,
    ) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="vfleet-kvchain")
        # full encodes and tokenizer loads (file reads, the self-check): never in the quick lane
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="vfleet-kvchain-slow")
        self.threads = threads
        self.max_pending = max_pending
        self._in_flight = 0  # quick-lane computations submitted and not finished
        self._slow_in_flight = 0
        self._count = threading.Lock()  # the two counts: the loop adds, pool threads subtract
        self.max_chains = max_chains
        self.max_key_chars = max_key_chars
        self.quick_chars = quick_chars
        self._chains: OrderedDict[tuple[str, int, Any], tuple[Chain, int]] = OrderedDict()
        self._tokens = 0  # summed over _chains
        self._chars = 0  # their keys' sizes, summed
        self._lock = threading.Lock()  # _chains: looked up on the loop, stored by pool threads
        self._tokenizers: dict[tuple[str, str], Future[Tokenizer | None]] = {}
        self._memo = BlockMemo()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._slow.shutdown(wait=False, cancel_futures=True)

    def __len__(self) -> int:
        return len(self._chains)

    def would_queue(self) -> bool:
        """Whether a computation submitted now would wait for a quick-lane thread."""
        return self._in_flight >= self.threads

    def lookup(self, model: str, block_size: int, prompt: Prompt) -> Chain | None:
        key = (model, block_size, prompt.key)
        with self._lock:
            got = self._chains.get(key)
            if got is None:
                return None
            self._chains.move_to_end(key)
            return got[0]

    def tokenizer_ready(self, model: str, card: Mapping[str, Any]) -> bool | None:
        """True when the model's tokenizer is loaded, False while it loads, None when it cannot
        be had (its load is started on first call)."""
        future = self._tokenizer(model, card)
        if not future.done():
            return False
        return None if future.exception() is not None or future.result() is None else True

    def compute(
        self, model: str, card: Mapping[str, Any], block_size: int, prompt: Prompt
    ) -> Future[Chain | None] | None:
        """The prompt's chain, computed in the quick lane and cached there; None when
        `max_pending` computations are already under way (the request goes without). The future
        is running once a thread took it (cancel it before: it is skipped); it gives None when
        the tokenizer is not loaded within LOAD_WAIT_S, or when the chain would take a full
        encode (then computed and cached in the slow lane, for the next request)."""
        tokenizer = self._tokenizer(model, card)
        with self._count:
            if self._in_flight >= self.max_pending:
                return None
            self._in_flight += 1
        out: Future[Chain | None] = Future()
        root = chain_root(model, card)
        try:
            self._pool.submit(self._quick, out, tokenizer, model, block_size, prompt, root)
        except RuntimeError:  # closed
            self._done(slow=False)
            return None
        return out

    def _done(self, slow: bool) -> None:
        with self._count:
            if slow:
                self._slow_in_flight -= 1
            else:
                self._in_flight -= 1

    def store(self, model: str, block_size: int, prompt: Prompt, chain: Chain) -> None:
        key = (model, block_size, prompt.key)
        with self._lock:
            old = self._chains.pop(key, None)
            if old is not None:
                self._tokens -= old[0].tokens
                self._chars -= old[1]
            self._chains[key] = (chain, prompt.size)
            self._tokens += chain.tokens
            self._chars += prompt.size
            while (
                len(self._chains) > self.max_chains
                or self._tokens > MAX_CHAIN_TOKENS
                or self._chars > self.max_key_chars
            ):
                _, (dropped, size) = self._chains.popitem(last=False)
                self._tokens -= dropped.tokens
                self._chars -= size

    def _tokenizer(self, model: str, card: Mapping[str, Any]) -> Future[Tokenizer | None]:
        key = (model, f"{card.get('tokenizer')}|{card.get('root')}|{card.get('base_root')}")
        future = self._tokenizers.get(key)
        if future is None:
            if len(self._tokenizers) > 64:  # models come and go: keep the table bounded
                self._tokenizers.clear()
            future = self._tokenizers[key] = self._slow.submit(load_logged, dict(card))
        return future

    def _quick(
        self,
        out: Future[Chain | None],
        tokenizer: Future[Tokenizer | None],
        model: str,
        block_size: int,
        prompt: Prompt,
        root: int | None,
    ) -> None:
        try:
            if not out.set_running_or_notify_cancel():
                return  # its request went without it
            try:
                tok = tokenizer.result(timeout=LOAD_WAIT_S)
            except Exception:  # still loading (ready for a later request), or it failed
                tok = None
            if tok is None:
                out.set_result(None)
            elif isinstance(tok, HfTokenizer) and prompt.ids is None:
                self._quick_hf(out, tok, model, block_size, prompt, root)
            else:
                ids = tokens_of(tok, prompt)
                chain = Chain(self._memo.hashes(ids, block_size, root), len(ids), block_size)
                self.store(model, block_size, prompt, chain)
                out.set_result(chain)
        except Exception as exc:  # a template that rejects the chat, a broken prompt: no chain
            if not out.done():
                out.set_exception(exc)
        finally:
            self._done(slow=False)

    def _quick_hf(
        self,
        out: Future[Chain | None],
        tok: HfTokenizer,
        model: str,
        block_size: int,
        prompt: Prompt,
        root: int | None,
    ) -> None:
        special = prompt.text is not None
        text = (
            prompt.text if prompt.text is not None else tok.render_chat(list(prompt.messages or ()))
        )
        plan = tok.plan(text, special)
        if (len(text) if plan is None else plan.todo) > self.quick_chars:
            out.set_result(None)  # the request goes now; the next one with this prefix is quick
            with self._count:
                if self._slow_in_flight >= MAX_SLOW:
                    return  # a later request with this prefix tries again
                self._slow_in_flight += 1
            try:
                self._slow.submit(self._slow_hf, tok, model, block_size, prompt, root, text)
            except RuntimeError:  # closed
                self._done(slow=True)
            return
        out.set_result(self._hf_chain(tok, model, block_size, prompt, root, text, plan))

    def _slow_hf(
        self,
        tok: HfTokenizer,
        model: str,
        block_size: int,
        prompt: Prompt,
        root: int | None,
        text: str,
    ) -> None:
        try:
            # planned again: a prompt with the same prefix may have been cached meanwhile
            plan = tok.plan(text, prompt.text is not None)
            self._hf_chain(tok, model, block_size, prompt, root, text, plan)
        except Exception as exc:  # only the cache misses it
            log.debug("kv: no chain for a prompt of %s: %s", model, exc)
        finally:
            self._done(slow=True)

    def _hf_chain(
        self,
        tok: HfTokenizer,
        model: str,
        block_size: int,
        prompt: Prompt,
        root: int | None,
        text: str,
        plan: Plan | None,
    ) -> Chain:
        chain = text_chain(tok, text, prompt.text is not None, block_size, root, plan)
        self.store(model, block_size, prompt, chain)
        return chain


def text_chain(
    tok: HfTokenizer,
    text: str,
    special: bool,
    block_size: int,
    root: int | None = None,
    plan: Plan | None = None,
) -> Chain:
    """The chain of `text` (with special tokens when `special`) as `plan` says to compute it
    (`tok.plan`; None: in full): the block hashes of the cached text its tokens were reused
    from (the blocks that lie in the reused tokens), then those of the new blocks."""
    if plan is None:
        ids: Sequence[int] = tok.encode(text, special)
        hashes = tuple(chain_run(root, ids, block_size, len(ids) // block_size))
        return Chain(hashes, len(ids), block_size)
    got = tok.finish(plan, special)
    memo_key = (block_size, root, special)
    known = got.source.memo.get(memo_key) if got.source is not None else None
    head: tuple[int, ...] = known[: got.reused // block_size] if known else ()
    parent = head[-1] if head else root
    count = len(got.ids) // block_size - len(head)
    hashes = head + tuple(chain_run(parent, got.ids[len(head) * block_size :], block_size, count))
    if got.entry is not None:  # bounded: a few block sizes and adapters per text
        memo = got.entry.memo
        if len(memo) >= 4 and memo_key not in memo:
            memo.clear()
        memo[memo_key] = hashes
    return Chain(hashes, len(got.ids), block_size)
