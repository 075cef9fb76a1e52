"""The simulator's engine core: a pure continuous-batching scheduler over virtual time.

`Scheduler.step(now)` picks the next batch the way vLLM's v1 scheduler does (running requests
first, then waiting ones, FCFS; chunked prefill under a token budget; preemption of the newest
running request when KV blocks run out), applies its results (computed tokens, one sampled token
per sequence whose prompt is fully computed, newly cached blocks, finished sequences) and returns
them with the step's modelled duration. It never reads a clock and does no I/O, so the same code
runs behind the HTTP server in wall time and in offline simulations in virtual time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from vfleet.sim import tokenizer
from vfleet.sim.kvcache import Block, BlockPool, KVEvent, block_hashes
from vfleet.sim.profiles import LatencyProfile

# Output text comes from cycling this text's tokens, so generations are readable and repeatable.
# Its length is a multiple of the tokenizer's piece size, so output token i is exactly bytes
# [4i, 4i + 4) of the output text and text can be cut out of the cycle without decoding.
FILLER_TEXT = (
    "The quick brown fox jumps over the lazy dog while the simulated engine keeps streaming "
    "tokens at a steady pace, one step at a time, until the request is finished.  "
)
FILLER_BYTES = FILLER_TEXT.encode()
FILLER_TOKENS: tuple[int, ...] = tuple(tokenizer.encode(FILLER_TEXT))
assert len(FILLER_BYTES) == tokenizer.PIECE_BYTES * len(FILLER_TOKENS)


def filler_bytes(seed: int, start: int, end: int) -> bytes:
    """Bytes [start, end) of the output text of a sequence whose generation starts at `seed`."""
    if end <= start:
        return b""
    size = len(FILLER_BYTES)
    base = ((seed % len(FILLER_TOKENS)) * tokenizer.PIECE_BYTES + start) % size
    laps = (base + end - start) // size + 1
    return (FILLER_BYTES * laps)[base : base + end - start]


def filler_tokens(seed: int, start: int, end: int) -> list[int]:
    """Output token ids [start, end) of a sequence whose generation starts at `seed`."""
    n = len(FILLER_TOKENS)
    first = (seed + start) % n
    if end - start <= n:  # the common case, a block or less: one C-level slice
        return list(_FILLER_TWICE[first : first + end - start])
    return [FILLER_TOKENS[(seed + i) % n] for i in range(start, end)]


_FILLER_TWICE = FILLER_TOKENS * 2

HASH_ALL = 1 << 62  # `Sequence.hash_blocks` default: every full block is hashed as it fills


class Owner(Protocol):
    """Whoever submitted a sequence (an HTTP request); told of its progress after each step."""

    def on_progress(self, seq: Sequence) -> None: ...

    def flush(self) -> None: ...


class Finish(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192  # token budget of one step (chunked prefill)
    num_gpu_blocks: int = 8192
    block_size: int = 16
    max_model_len: int = 4096
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "num_gpu_blocks", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.num_gpu_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"max_model_len {self.max_model_len} does not fit in the KV cache "
                f"({self.num_gpu_blocks} blocks x {self.block_size} tokens); "
                "raise num_gpu_blocks or lower max_model_len"
            )


@dataclass(slots=True, eq=False, repr=False)
class Sequence:
    """One sequence being generated (a request with `n` > 1 becomes `n` sequences)."""

    prompt: list[int]
    max_tokens: int  # 0 for pooling (embedding, score) requests: prefill only
    arrival: float
    eos_after: int | None = None  # natural end of the generation; None = ignore EOS
    stop: tuple[bytes, ...] = ()
    lora_name: str | None = None
    seed: int = 0  # picks where in FILLER_TOKENS the generation starts
    tag: Owner | None = None  # who to tell about progress; never called from here
    index: int = 0  # the owner's choice index for this sequence
    wants_tokens: bool = False  # owner is told of every token (streams), not only the finish
    n_out: int = 0  # tokens generated; their ids and text follow from `seed`
    n_sched: int = 0  # tokens scheduled for the step being built
    num_computed: int = 0  # tokens whose KV is computed
    blocks: list[Block] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # hashes of the full blocks of all tokens
    # Leading blocks hashed (so cacheable) as they fill. A caller that knows no other sequence
    # can ever share the blocks past these (a virtual-time plan knows its whole workload) sets
    # fewer: hashing is most of what a block costs, and a block nobody else can look up is
    # only ever found again by this sequence after a preemption, so `_preempt` hashes and
    # caches the rest then; the timings come out as with every block hashed.
    hash_blocks: int = HASH_ALL
    num_cached_blocks: int = 0  # of `blocks`, those already in the prefix cache
    finish: Finish | None = None
    stop_reason: str | None = None
    visible_bytes: int = -1  # output bytes a client may see; -1 while unfinished
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    queued_at: float | None = None  # when the engine queued it (after the API server's work)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    last_itl: float = 0.0  # seconds between the last two tokens
    finished_at: float | None = None
    num_tokens: int = field(init=False)  # prompt + output, kept up to date on the hot path
    out_limit: int = field(init=False)  # output length at which EOS, max_tokens or the context ends

    def __post_init__(self) -> None:
        self.num_tokens = len(self.prompt)
        self.out_limit = self.max_tokens

    @property
    def output(self) -> list[int]:
        """Generated token ids."""
        return filler_tokens(self.seed, 0, self.n_out)

    @property
    def out_bytes(self) -> bytes:
        """Generated text as UTF-8, stop strings included."""
        return filler_bytes(self.seed, 0, self.n_out * tokenizer.PIECE_BYTES)

    def text_bytes(self, start: int, end: int) -> bytes:
        return filler_bytes(self.seed, start, end)

    def all_tokens(self, start: int, end: int) -> list[int]:
        """Token ids [start, end) of prompt followed by output."""
        p = len(self.prompt)
        if end <= p:
            return self.prompt[start:end]
        return self.prompt[start:] + filler_tokens(self.seed, max(0, start - p), end - p)

    def safe_bytes(self) -> int:
        """Output bytes that can be shown without revealing the start of a stop string."""
        if self.visible_bytes >= 0:
            return self.visible_bytes
        n = self.n_out * tokenizer.PIECE_BYTES
        if not self.stop:
            return n
        hold = max(len(s) for s in self.stop) - 1
        return max(0, n - hold)


@dataclass(slots=True)
class StepOutput:
    duration_s: float
    num_scheduled_tokens: int
    num_prefill_tokens: int
    sampled: list[Sequence]  # sequences that got one new token (at the end of the step)
    finished: list[Sequence]
    num_preempted: int
    events: list[KVEvent]
    # Per-token facts gathered while sampling, so that metrics and the engine need not walk
    # `sampled` again: sequences that got their first token, sequences whose owners want
    # every token, and inter-token latencies (most equal `itl_common`: sequences also sampled
    # in the previous step; the rest are listed).
    first_tokens: list[Sequence] = field(default_factory=list)
    streamed: list[Sequence] = field(default_factory=list)
    itl_common: float = 0.0
    itl_common_count: int = 0
    itl_other: list[float] = field(default_factory=list)


@dataclass(slots=True, repr=False)
class Scheduler:
    config: SchedulerConfig
    profile: LatencyProfile
    record_events: bool = True  # keep KV-cache events for a publisher
    pool: BlockPool = field(init=False)
    waiting: deque[Sequence] = field(init=False, default_factory=deque)
    running: list[Sequence] = field(init=False, default_factory=list)
    # Counters a /metrics endpoint reports; never reset.
    prefix_queries: int = 0
    prefix_hits: int = 0
    preemptions_total: int = 0
    _prev_done_at: float = -1.0  # when the previous step's tokens came out

    def __post_init__(self) -> None:
        cfg = self.config
        self.pool = BlockPool(
            cfg.num_gpu_blocks, cfg.block_size, cfg.enable_prefix_caching, self.record_events
        )

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence, now: float | None = None) -> None:
        """Queue `seq` at `now` (default: its arrival, when no API-server delay is modelled)."""
        if len(seq.prompt) < 1:
            raise ValueError("a sequence needs at least one prompt token")
        if len(seq.prompt) + seq.max_tokens > self.config.max_model_len:
            raise ValueError("prompt plus max_tokens exceed max_model_len")
        seq.queued_at = seq.arrival if now is None else now
        limit = min(seq.max_tokens, self.config.max_model_len - len(seq.prompt))
        seq.out_limit = limit if seq.eos_after is None else min(limit, seq.eos_after)
        self._extend_hashes(seq)
        self.waiting.append(seq)

    def abort(self, seq: Sequence, now: float) -> bool:
        """Drop an unfinished sequence at time `now`; True if it was queued or running."""
        if seq.finish is not None:
            return False
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        else:
            return False
        self._free(seq)
        seq.finish = Finish.ABORT
        seq.finished_at = now
        seq.visible_bytes = seq.safe_bytes()
        return True

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset()

    def step(self, now: float, slowdown: int = 1) -> StepOutput:
        """One step from `now`; `slowdown` stretches it (engines time-slicing a GPU: the number
        of them busy, `sim.gpushare`)."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[Sequence] = []
        preempted, budget = self._schedule_running(scheduled, budget)
        if not preempted:
            budget = self._schedule_waiting(scheduled, budget, now)
        total = self.config.max_num_batched_tokens - budget
        return self._execute(scheduled, preempted, total, now, slowdown)

    # -- scheduling -------------------------------------------------------------------------

    def _schedule_running(self, scheduled: list[Sequence], budget: int) -> tuple[int, int]:
        preempted = 0
        running = self.running
        i = 0
        bs = self.config.block_size
        while i < len(running) and budget > 0:
            seq = running[i]
            n = seq.num_tokens - seq.num_computed
            if n > budget:
                n = budget
            # Fast path first: most decode steps fit in the blocks the sequence already holds.
            while len(seq.blocks) * bs < seq.num_computed + n and not self._reserve(
                seq, seq.num_computed + n
            ):
                victim = running.pop()
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    break
            else:
                seq.n_sched = n
                scheduled.append(seq)
                budget -= n
                i += 1
        return preempted, budget

    def _schedule_waiting(self, scheduled: list[Sequence], budget: int, now: float) -> int:
        pool = self.pool
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            # Leave at least one token to compute so the step produces logits for it.
            usable = (seq.num_tokens - 1) // self.config.block_size
            hits = pool.lookup(seq.hashes[:usable])
            pool.acquire(hits)
            cached = len(hits) * self.config.block_size
            n = min(seq.num_tokens - cached, budget)
            seq.blocks = hits
            seq.num_cached_blocks = len(hits)
            seq.num_computed = cached
            if not self._reserve(seq, cached + n):
                pool.release(hits)
                seq.blocks = []
                seq.num_cached_blocks = 0
                seq.num_computed = 0
                break
            self.waiting.popleft()
            self.running.append(seq)
            if seq.scheduled_at is None:
                seq.scheduled_at = now
                seq.cached_prompt_tokens = min(cached, len(seq.prompt))
                self.prefix_queries += len(seq.prompt)
                self.prefix_hits += seq.cached_prompt_tokens
            seq.n_sched = n
            scheduled.append(seq)
            budget -= n
        return budget

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Make `seq` hold enough blocks for `num_tokens` tokens."""
        need = -(-num_tokens // self.config.block_size) - len(seq.blocks)
        if need <= 0:
            return True
        got = self.pool.allocate(need)
        if got is None:
            return False
        seq.blocks.extend(got)
        return True

    def _preempt(self, seq: Sequence) -> None:
        if seq.hash_blocks != HASH_ALL:  # its recompute may find its own blocks: cache them now
            seq.hash_blocks = HASH_ALL
            self._extend_hashes(seq)
            self._cache_full_blocks(seq)
        self._free(seq)
        seq.num_computed = 0
        seq.preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(seq)

    def _free(self, seq: Sequence) -> None:
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.num_cached_blocks = 0

    # -- execution --------------------------------------------------------------------------

    def _execute(
        self, scheduled: list[Sequence], preempted: int, total: int, now: float, slowdown: int
    ) -> StepOutput:
        prefill = 0
        context = total
        for seq in scheduled:
            computed = seq.num_computed
            context += computed
            todo = len(seq.prompt) - computed
            if todo > 0:
                n = seq.n_sched
                prefill += n if n < todo else todo
        duration = self.profile.step_time(len(scheduled), prefill, context)
        if slowdown != 1:
            duration *= slowdown
        done_at = now + duration
        prev = self._prev_done_at
        sampled: list[Sequence] = []
        finished: list[Sequence] = []
        firsts: list[Sequence] = []
        streamed: list[Sequence] = []
        itl_other: list[float] = []
        itl_common_count = 0
        bs = self.config.block_size
        for seq in scheduled:
            computed = seq.num_computed = seq.num_computed + seq.n_sched
            if computed // bs > seq.num_cached_blocks:
                self._cache_full_blocks(seq)
            if computed < seq.num_tokens:
                continue  # prompt still being prefilled in chunks
            if seq.max_tokens == 0:
                self._finish(seq, Finish.STOP, done_at, finished)
                continue
            # Sampling, inlined: this runs once per generated token.
            seq.n_out += 1
            seq.num_tokens += 1
            last = seq.last_token_at
            if last is None:
                seq.first_token_at = done_at
                firsts.append(seq)
            else:
                seq.last_itl = done_at - last
                if last == prev:
                    itl_common_count += 1
                else:
                    itl_other.append(done_at - last)
            seq.last_token_at = done_at
            if seq.num_tokens % bs == 0:
                self._extend_hashes(seq)
            sampled.append(seq)
            if seq.wants_tokens:
                streamed.append(seq)
            if seq.stop or seq.n_out >= seq.out_limit:
                reason = self._check_finish(seq)
                if reason is not None:
                    self._finish(seq, reason, done_at, finished)
        if finished:
            self.running = [s for s in self.running if s.finish is None]
        if scheduled:
            self._prev_done_at = done_at
        return StepOutput(
            duration,
            total,
            prefill,
            sampled,
            finished,
            preempted,
            self.pool.drain_events(),
            firsts,
            streamed,
            done_at - prev,
            itl_common_count,
            itl_other,
        )

    def _check_finish(self, seq: Sequence) -> Finish | None:
        end = seq.n_out * tokenizer.PIECE_BYTES
        for s in seq.stop:
            # Only the newest token can complete a match: search the window that ends with it.
            start = max(0, end - len(s) - tokenizer.PIECE_BYTES)
            at = seq.text_bytes(start, end).find(s)
            if at >= 0:
                seq.stop_reason = s.decode("utf-8", errors="replace")
                seq.visible_bytes = start + at
                return Finish.STOP
        n_out = seq.n_out
        if seq.eos_after is not None and n_out >= seq.eos_after:
            return Finish.STOP
        if n_out >= seq.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return Finish.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: Finish, t: float, out: list[Sequence]) -> None:
        seq.finish = reason
        if seq.visible_bytes < 0:
            seq.visible_bytes = seq.n_out * tokenizer.PIECE_BYTES
        seq.finished_at = t
        if seq.first_token_at is None:
            seq.first_token_at = t
        self._free(seq)
        out.append(seq)

    def _extend_hashes(self, seq: Sequence) -> None:
        bs = self.config.block_size
        hashes = seq.hashes
        done = len(hashes)
        full = min(seq.num_tokens // bs, seq.hash_blocks)
        if done >= full:
            return
        # all missing blocks at once (a new prompt, or a preempted sequence lagging several)
        if done == 0 and full * bs <= len(seq.prompt) < (full + 1) * bs:  # a whole new prompt
            hashes.extend(block_hashes(None, seq.prompt, bs, seq.lora_name))  # (no copy)
            return
        tokens = seq.all_tokens(done * bs, full * bs)
        hashes.extend(block_hashes(hashes[-1] if hashes else None, tokens, bs, seq.lora_name))

    def _cache_full_blocks(self, seq: Sequence) -> None:
        if not self.pool.enable_prefix_caching:
            return
        bs = self.config.block_size
        full = min(seq.num_computed // bs, len(seq.hashes))
        if seq.num_cached_blocks >= full:
            return
        pool = self.pool
        if not pool.record_events:
            pool.cache_quiet(seq.blocks, seq.hashes, seq.num_cached_blocks, full)
            seq.num_cached_blocks = full
            return
        for i in range(seq.num_cached_blocks, full):
            parent = seq.hashes[i - 1] if i else None
            tokens = seq.all_tokens(i * bs, (i + 1) * bs) if pool.record_events else ()
            pool.cache(seq.blocks[i], seq.hashes[i], parent, tokens, seq.lora_name)
        seq.num_cached_blocks = full
