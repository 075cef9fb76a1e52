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
from vfleet.sim.kvcache import Block, BlockPool, KVEvent, block_hash
from vfleet.sim.profiles import LatencyProfile

# Output text comes from cycling this text's tokens, so generations are readable and repeatable.
FILLER_TEXT = (
    "The quick brown fox jumps over the lazy dog while the simulated engine keeps streaming "
    "tokens at a steady pace, one step at a time, until the request is finished. "
)
FILLER_TOKENS: tuple[int, ...] = tuple(tokenizer.encode(FILLER_TEXT))


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


@dataclass(slots=True, eq=False)
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
    output: list[int] = field(default_factory=list)
    out_bytes: bytearray = field(default_factory=bytearray)
    num_computed: int = 0  # tokens whose KV is computed
    blocks: list[Block] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # hashes of the full blocks of all tokens
    num_cached_blocks: int = 0  # of `blocks`, those already in the prefix cache
    finish: Finish | None = None
    stop_reason: str | None = None
    visible_bytes: int = -1  # output bytes a client may see; -1 while unfinished
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    last_itl: float = 0.0  # seconds between the last two tokens
    finished_at: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def token(self, i: int) -> int:
        p = len(self.prompt)
        return self.prompt[i] if i < p else self.output[i - p]

    def safe_bytes(self) -> int:
        """Output bytes that can be shown without revealing the start of a stop string."""
        if self.visible_bytes >= 0:
            return self.visible_bytes
        if not self.stop:
            return len(self.out_bytes)
        hold = max(len(s) for s in self.stop) - 1
        return max(0, len(self.out_bytes) - hold)


@dataclass(slots=True)
class StepOutput:
    duration_s: float
    num_scheduled_tokens: int
    num_prefill_tokens: int
    sampled: list[Sequence]  # sequences that got one new token (at the end of the step)
    finished: list[Sequence]
    num_preempted: int
    events: list[KVEvent]


@dataclass(slots=True)
class Scheduler:
    config: SchedulerConfig
    profile: LatencyProfile
    pool: BlockPool = field(init=False)
    waiting: deque[Sequence] = field(init=False, default_factory=deque)
    running: list[Sequence] = field(init=False, default_factory=list)
    # Counters a /metrics endpoint reports; never reset.
    prefix_queries: int = 0
    prefix_hits: int = 0
    preemptions_total: int = 0

    def __post_init__(self) -> None:
        self.pool = BlockPool(
            self.config.num_gpu_blocks, self.config.block_size, self.config.enable_prefix_caching
        )

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if len(seq.prompt) < 1:
            raise ValueError("a sequence needs at least one prompt token")
        if len(seq.prompt) + seq.max_tokens > self.config.max_model_len:
            raise ValueError("prompt plus max_tokens exceed max_model_len")
        self._extend_hashes(seq)
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> bool:
        """Drop a sequence that has not finished; True if it was still queued or running."""
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
        seq.visible_bytes = seq.safe_bytes()
        return True

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset()

    def step(self, now: float) -> StepOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        preempted = self._schedule_running(scheduled, budget)
        budget -= sum(n for _, n in scheduled)
        if not preempted:
            self._schedule_waiting(scheduled, budget, now)
        return self._execute(scheduled, preempted, now)

    # -- scheduling -------------------------------------------------------------------------

    def _schedule_running(self, scheduled: list[tuple[Sequence, int]], budget: int) -> int:
        preempted = 0
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self._reserve(seq, seq.num_computed + n):
                victim = running.pop()
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    break
            else:
                scheduled.append((seq, n))
                budget -= n
                i += 1
        return preempted

    def _schedule_waiting(
        self, scheduled: list[tuple[Sequence, int]], budget: int, now: float
    ) -> None:
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
            scheduled.append((seq, n))
            budget -= n

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
        self, scheduled: list[tuple[Sequence, int]], preempted: int, now: float
    ) -> StepOutput:
        total = prefill = context = 0
        for seq, n in scheduled:
            total += n
            context += seq.num_computed + n
            plen = len(seq.prompt)
            if seq.num_computed < plen:
                prefill += min(n, plen - seq.num_computed)
        duration = self.profile.step_time(len(scheduled), prefill, context)
        done_at = now + duration
        sampled: list[Sequence] = []
        finished: list[Sequence] = []
        for seq, n in scheduled:
            seq.num_computed += n
            self._cache_full_blocks(seq)
            if seq.num_computed < seq.num_tokens:
                continue  # prompt still being prefilled in chunks
            if seq.max_tokens == 0:
                self._finish(seq, Finish.STOP, done_at, finished)
                continue
            self._sample(seq, done_at)
            sampled.append(seq)
            reason = self._check_finish(seq)
            if reason is not None:
                self._finish(seq, reason, done_at, finished)
        if finished:
            self.running = [s for s in self.running if s.finish is None]
        return StepOutput(
            duration, total, prefill, sampled, finished, preempted, self.pool.drain_events()
        )

    def _sample(self, seq: Sequence, t: float) -> None:
        tok = FILLER_TOKENS[(seq.seed + len(seq.output)) % len(FILLER_TOKENS)]
        seq.output.append(tok)
        seq.out_bytes += tokenizer.decode_bytes((tok,))
        if seq.first_token_at is None:
            seq.first_token_at = t
        elif seq.last_token_at is not None:
            seq.last_itl = t - seq.last_token_at
        seq.last_token_at = t
        self._extend_hashes(seq)

    def _check_finish(self, seq: Sequence) -> Finish | None:
        for s in seq.stop:
            start = max(0, len(seq.out_bytes) - len(s) - tokenizer.PIECE_BYTES)
            at = seq.out_bytes.find(s, start)
            if at >= 0:
                seq.stop_reason = s.decode("utf-8", errors="replace")
                seq.visible_bytes = at
                return Finish.STOP
        n_out = len(seq.output)
        if seq.eos_after is not None and n_out >= seq.eos_after:
            return Finish.STOP
        if n_out >= seq.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return Finish.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: Finish, t: float, out: list[Sequence]) -> None:
        seq.finish = reason
        if seq.visible_bytes < 0:
            seq.visible_bytes = len(seq.out_bytes)
        seq.finished_at = t
        if seq.first_token_at is None:
            seq.first_token_at = t
        self._free(seq)
        out.append(seq)

    def _extend_hashes(self, seq: Sequence) -> None:
        bs = self.config.block_size
        hashes = seq.hashes
        full = seq.num_tokens // bs
        if len(hashes) >= full:
            return
        all_tokens = seq.prompt + seq.output if seq.output else seq.prompt
        while len(hashes) < full:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(block_hash(parent, all_tokens[i * bs : (i + 1) * bs], seq.lora_name))

    def _cache_full_blocks(self, seq: Sequence) -> None:
        if not self.pool.enable_prefix_caching:
            return
        bs = self.config.block_size
        full = min(seq.num_computed // bs, len(seq.hashes))
        if seq.num_cached_blocks >= full:
            return
        all_tokens = seq.prompt + seq.output
        for i in range(seq.num_cached_blocks, full):
            parent = seq.hashes[i - 1] if i else None
            self.pool.cache(
                seq.blocks[i],
                seq.hashes[i],
                parent,
                all_tokens[i * bs : (i + 1) * bs],
                seq.lora_name,
            )
        seq.num_cached_blocks = full
