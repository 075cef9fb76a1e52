"""Scheduler.step: batching limits, chunked prefill, prefix hits, preemption, finishing, abort.

The property test drives random workloads to completion and checks the KV accounting and the
request lifecycle after every step; the example tests pin the individual behaviours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from vfleet.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent, block_hash
from vfleet.sim.profiles import PROFILES, LatencyProfile, custom_profile
from vfleet.sim.scheduler import (
    FILLER_TOKENS,
    Finish,
    Scheduler,
    SchedulerConfig,
    Sequence,
    StepOutput,
)

INSTANT = PROFILES["instant"]
MAX_STEPS = 20000


def make(profile: LatencyProfile = INSTANT, **kw: int | bool) -> Scheduler:
    cfg = {"num_gpu_blocks": 64, "block_size": 4, "max_model_len": 256, **kw}
    return Scheduler(SchedulerConfig(**cfg), profile)  # type: ignore[arg-type]


def filler(seed: int, n: int) -> list[int]:
    return [FILLER_TOKENS[(seed + i) % len(FILLER_TOKENS)] for i in range(n)]


def run(sched: Scheduler, t: float = 0.0, on_step: Callable[[StepOutput], None] | None = None):
    """Step until idle; returns the step outputs."""
    outs: list[StepOutput] = []
    while sched.has_work:
        assert len(outs) < MAX_STEPS, "scheduler made no progress"
        out = sched.step(t)
        t += out.duration_s
        outs.append(out)
        if on_step is not None:
            on_step(out)
    return outs


def visible(seq: Sequence) -> bytes:
    return bytes(seq.out_bytes[: seq.visible_bytes])


# -- config and add -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"max_num_seqs": 0},
        {"max_num_batched_tokens": 0},
        {"num_gpu_blocks": 0},
        {"block_size": 0},
        {"max_model_len": 1},
        {"num_gpu_blocks": 3, "block_size": 4, "max_model_len": 13},
    ],
)
def test_config_rejects_invalid_values(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(**kw)  # type: ignore[arg-type]


def test_config_accepts_exactly_fitting_model_len() -> None:
    assert SchedulerConfig(num_gpu_blocks=3, block_size=4, max_model_len=12).max_model_len == 12


def test_add_rejects_empty_prompt_and_overlong_requests() -> None:
    sched = make(max_model_len=32)
    with pytest.raises(ValueError, match="prompt token"):
        sched.add(Sequence([], 4, 0.0))
    with pytest.raises(ValueError, match="max_model_len"):
        sched.add(Sequence([1] * 30, 3, 0.0))
    assert not sched.has_work
    sched.add(Sequence([1] * 30, 2, 0.0))
    assert sched.has_work


def test_empty_step_takes_no_time() -> None:
    sched = make(custom_profile(1.0, 1.0, 1.0, 1.0))
    out = sched.step(5.0)
    assert out.duration_s == 0.0
    assert out.num_scheduled_tokens == 0
    assert out.sampled == out.finished == out.events == []


# -- a single request ---------------------------------------------------------------------------


def test_single_request_generates_max_tokens_of_filler() -> None:
    sched = make()
    seq = Sequence(list(range(10)), 5, 0.0, seed=3)
    sched.add(seq)
    outs = run(sched)
    assert seq.finish is Finish.LENGTH
    assert seq.output == filler(3, 5)
    assert bytes(seq.out_bytes) == b"".join(
        t.to_bytes(4, "little").rstrip(b"\x00") for t in filler(3, 5)
    )
    assert seq.visible_bytes == len(seq.out_bytes)
    assert len(outs) == 5  # one prefill step that samples, then four decode steps
    assert [o.num_scheduled_tokens for o in outs] == [10, 1, 1, 1, 1]
    assert [o.num_prefill_tokens for o in outs] == [10, 0, 0, 0, 0]
    assert all(o.sampled == [seq] for o in outs)
    assert [o.finished for o in outs] == [[], [], [], [], [seq]]
    assert sched.pool.num_free == sched.config.num_gpu_blocks
    assert sched.running == []
    assert not sched.waiting


def test_max_model_len_bounds_generation() -> None:
    sched = make(max_model_len=32, num_gpu_blocks=8)
    seq = Sequence([1] * 20, 12, 0.0)
    sched.add(seq)
    run(sched)
    assert seq.finish is Finish.LENGTH
    assert len(seq.output) == 12
    assert len(seq.prompt) + len(seq.output) == 32


def test_eos_after_ends_with_stop() -> None:
    sched = make()
    seq = Sequence([1, 2, 3], 10, 0.0, eos_after=3)
    sched.add(seq)
    run(sched)
    assert seq.finish is Finish.STOP
    assert len(seq.output) == 3
    assert seq.stop_reason is None
    assert seq.visible_bytes == len(seq.out_bytes)


def test_eos_after_beyond_max_tokens_ends_with_length() -> None:
    sched = make()
    seq = Sequence([1, 2, 3], 4, 0.0, eos_after=10)
    sched.add(seq)
    run(sched)
    assert seq.finish is Finish.LENGTH
    assert len(seq.output) == 4


# -- stop strings -------------------------------------------------------------------------------
# The filler text starts "The quick brown fox jumps over", in pieces "The |quic|k br|own |fox ".


def test_stop_string_truncates_visible_output() -> None:
    sched = make()
    seq = Sequence([1, 2, 3], 50, 0.0, stop=(b"fox",))
    sched.add(seq)
    run(sched)
    assert seq.finish is Finish.STOP
    assert seq.stop_reason == "fox"
    assert len(seq.output) == 5
    assert bytes(seq.out_bytes) == b"The quick brown fox "
    assert visible(seq) == b"The quick brown "


def test_stop_string_spanning_two_tokens() -> None:
    sched = make()
    seq = Sequence([1], 50, 0.0, stop=(b"quick",))
    sched.add(seq)
    run(sched)
    assert seq.finish is Finish.STOP
    assert seq.stop_reason == "quick"
    assert len(seq.output) == 3  # "The |quic|k br": the stop completes in the third piece
    assert visible(seq) == b"The "


def test_stop_string_at_the_very_start_hides_everything() -> None:
    sched = make()
    seq = Sequence([1], 50, 0.0, stop=(b"The",))
    sched.add(seq)
    run(sched)
    assert seq.finish is Finish.STOP
    assert len(seq.output) == 1
    assert seq.visible_bytes == 0


def test_earliest_completed_stop_string_wins_regardless_of_order() -> None:
    sched = make()
    seq = Sequence([1], 50, 0.0, stop=(b"jumps", b"brown"))
    sched.add(seq)
    run(sched)
    assert seq.stop_reason == "brown"
    assert visible(seq) == b"The quick "


def test_absent_stop_string_does_not_stop() -> None:
    sched = make()
    seq = Sequence([1], 8, 0.0, stop=(b"zebra",))
    sched.add(seq)
    run(sched)
    assert seq.finish is Finish.LENGTH
    assert seq.stop_reason is None
    assert len(seq.output) == 8
    assert seq.visible_bytes == len(seq.out_bytes)


def test_safe_bytes_hold_back_a_possible_stop_prefix() -> None:
    sched = make()
    seq = Sequence([1], 50, 0.0, stop=(b"zebra", b"ox"))
    sched.add(seq)
    sched.step(0.0)
    sched.step(0.0)
    assert bytes(seq.out_bytes) == b"The quic"
    assert seq.visible_bytes == -1
    assert seq.safe_bytes() == len(b"The quic") - (len(b"zebra") - 1)
    plain = Sequence([1], 50, 0.0)
    sched.add(plain)
    sched.step(0.0)
    assert plain.safe_bytes() == len(plain.out_bytes) == 4


# -- chunked prefill ----------------------------------------------------------------------------


def test_chunked_prefill_splits_a_long_prompt() -> None:
    sched = make(max_num_batched_tokens=32, num_gpu_blocks=64, block_size=16, max_model_len=512)
    seq = Sequence(list(range(100)), 3, 0.0)
    sched.add(seq)
    outs = run(sched)
    assert [o.num_scheduled_tokens for o in outs] == [32, 32, 32, 4, 1, 1]
    assert [o.num_prefill_tokens for o in outs] == [32, 32, 32, 4, 0, 0]
    assert [len(o.sampled) for o in outs] == [0, 0, 0, 1, 1, 1]
    assert seq.output == filler(0, 3)
    # Full blocks are cached as soon as their chunk is computed: 32 tokens = 2 blocks per chunk.
    stored = [len([e for e in o.events if isinstance(e, BlockStored)]) for o in outs]
    assert stored == [2, 2, 2, 0, 0, 0]


def test_chunked_prefill_shares_the_budget_with_decodes() -> None:
    sched = make(max_num_batched_tokens=8, num_gpu_blocks=64, block_size=4, max_model_len=64)
    a = Sequence([1] * 4, 10, 0.0)
    sched.add(a)
    sched.step(0.0)  # a prefilled and sampled its first token
    b = Sequence([2] * 20, 2, 0.0)
    sched.add(b)
    out = sched.step(0.0)
    assert out.num_scheduled_tokens == 8
    assert out.num_prefill_tokens == 7  # a decodes one token, b prefills the other seven
    assert out.sampled == [a]
    assert b.num_computed == 7


def test_prefill_only_sequence_finishes_without_output() -> None:
    sched = make(max_num_batched_tokens=8)
    seq = Sequence(list(range(20)), 0, 0.0)
    sched.add(seq)
    outs = run(sched)
    assert [o.num_scheduled_tokens for o in outs] == [8, 8, 4]
    assert seq.finish is Finish.STOP
    assert seq.output == []
    assert seq.visible_bytes == 0
    assert all(o.sampled == [] for o in outs)
    assert [o.finished for o in outs] == [[], [], [seq]]
    assert seq.first_token_at == seq.finished_at
    assert sched.pool.num_free == sched.config.num_gpu_blocks


# -- prefix caching -----------------------------------------------------------------------------


@pytest.mark.parametrize("plen", [1, 4, 5, 15, 16, 17, 31, 32, 33, 50])
def test_repeated_prompt_hits_all_but_the_last_token(plen: int) -> None:
    bs = 16
    sched = make(block_size=bs, num_gpu_blocks=32, max_model_len=128)
    prompt = list(range(1000, 1000 + plen))
    first = Sequence(prompt, 2, 0.0)
    sched.add(first)
    run(sched)
    assert first.cached_prompt_tokens == 0
    second = Sequence(list(prompt), 2, 0.0)
    sched.add(second)
    outs = run(sched)
    expect = (plen - 1) // bs * bs
    assert second.cached_prompt_tokens == expect
    assert outs[0].num_prefill_tokens == plen - expect
    assert sched.prefix_queries == 2 * plen
    assert sched.prefix_hits == expect


def test_shared_prefix_hits_only_the_common_full_blocks() -> None:
    sched = make(block_size=4)
    base = list(range(10))
    a = Sequence([*base, 100, 101, 102], 1, 0.0)
    b = Sequence([*base, 200, 201, 202], 1, 0.0)
    sched.add(a)
    run(sched)
    sched.add(b)
    run(sched)
    assert b.cached_prompt_tokens == 8  # blocks [0:4] and [4:8]; [8:12] differs


def test_concurrent_identical_prompts_in_one_step_do_not_hit() -> None:
    sched = make(block_size=4)
    a, b = Sequence([7] * 12, 2, 0.0), Sequence([7] * 12, 2, 0.0)
    sched.add(a)
    sched.add(b)
    out = sched.step(0.0)
    assert a.cached_prompt_tokens == b.cached_prompt_tokens == 0
    # The duplicate blocks are cached once.
    assert len([e for e in out.events if isinstance(e, BlockStored)]) == 3
    run(sched)
    assert sched.pool.num_free == sched.config.num_gpu_blocks


def test_lora_name_separates_the_cache() -> None:
    sched = make(block_size=4)
    a = Sequence(list(range(9)), 1, 0.0, lora_name="a")
    sched.add(a)
    run(sched)
    b = Sequence(list(range(9)), 1, 0.0, lora_name="b")
    base = Sequence(list(range(9)), 1, 0.0)
    same = Sequence(list(range(9)), 1, 0.0, lora_name="a")
    for s in (b, base, same):
        sched.add(s)
        run(sched)
    assert (b.cached_prompt_tokens, base.cached_prompt_tokens) == (0, 0)
    assert same.cached_prompt_tokens == 8


def test_prefix_caching_disabled_never_hits() -> None:
    sched = make(enable_prefix_caching=False)
    for _ in range(2):
        seq = Sequence(list(range(20)), 2, 0.0)
        sched.add(seq)
        outs = run(sched)
        assert seq.cached_prompt_tokens == 0
        assert all(o.events == [] for o in outs)
    assert sched.prefix_hits == 0


def test_block_stored_events_chain_prompt_and_output_blocks() -> None:
    sched = make(block_size=4)
    prompt = list(range(10))
    seq = Sequence(prompt, 7, 0.0, lora_name="lo")
    sched.add(seq)
    events = [e for o in run(sched) for e in o.events]
    assert all(isinstance(e, BlockStored) for e in events)
    stored = [e for e in events if isinstance(e, BlockStored)]
    tokens = prompt + seq.output
    # 16 tokens computed (the last sampled token never is): four full blocks, the last one
    # completed by the final step.
    assert len(stored) == 4
    parent = None
    for i, ev in enumerate(stored):
        chunk = tokens[4 * i : 4 * i + 4]
        assert ev.token_ids == tuple(chunk)
        assert ev.parent_block_hash == parent
        assert ev.block_hashes == (block_hash(parent, chunk, "lo"),)
        assert ev.block_size == 4
        assert ev.lora_name == "lo"
        parent = ev.block_hashes[0]
    assert seq.hashes[:4] == [e.block_hashes[0] for e in stored]


def test_reset_prefix_cache_refuses_while_running() -> None:
    sched = make(block_size=4)
    seq = Sequence(list(range(10)), 5, 0.0)
    sched.add(seq)
    sched.step(0.0)
    assert sched.reset_prefix_cache() is False
    run(sched)
    assert sched.reset_prefix_cache() is True
    assert sched.pool.drain_events() == [AllBlocksCleared()]
    again = Sequence(list(range(10)), 1, 0.0)
    sched.add(again)
    run(sched)
    assert again.cached_prompt_tokens == 0


# -- batching limits and preemption -------------------------------------------------------------


def test_max_num_seqs_limits_the_running_batch() -> None:
    sched = make(max_num_seqs=2)
    seqs = [Sequence([i + 1] * 3, 4, 0.0) for i in range(5)]
    for s in seqs:
        sched.add(s)
    batch: list[int] = []
    running: list[int] = []
    run(sched, on_step=lambda o: (batch.append(len(o.sampled)), running.append(len(sched.running))))
    assert max(batch) == 2
    assert max(running) == 2
    assert all(s.finish is Finish.LENGTH for s in seqs)


def test_fcfs_order_of_waiting_requests() -> None:
    sched = make(custom_profile(1.0, 0.0, 0.0, 0.0), max_num_seqs=1)
    seqs = [Sequence([i + 1], 2, 0.0) for i in range(3)]
    for s in seqs:
        sched.add(s)
    run(sched)
    assert [s.scheduled_at for s in seqs] == [0.0, 2.0, 4.0]
    assert [s.finished_at for s in seqs] == [2.0, 4.0, 6.0]


def test_preemption_when_kv_blocks_run_out() -> None:
    # 8 blocks of 4 tokens; each request grows to 12 + 16 - 1 = 27 tokens = 7 blocks.
    sched = make(num_gpu_blocks=8, block_size=4, max_model_len=32)
    a = Sequence([1] * 12, 16, 0.0)
    b = Sequence([2] * 12, 16, 0.0, seed=5)
    sched.add(a)
    sched.add(b)
    outs = run(sched)
    assert sched.preemptions_total > 0
    assert sum(o.num_preempted for o in outs) == sched.preemptions_total
    assert a.preemptions + b.preemptions == sched.preemptions_total
    assert b.preemptions > 0  # the newest request is the victim
    assert a.preemptions == 0
    # Recomputation after preemption does not change what is generated.
    assert a.output == filler(0, 16)
    assert b.output == filler(5, 16)
    assert a.finish is b.finish is Finish.LENGTH
    assert sched.pool.num_free == 8


def test_preempted_sequence_recomputes_its_output_tokens() -> None:
    sched = make(num_gpu_blocks=8, block_size=4, max_model_len=32)
    a = Sequence([1] * 12, 16, 0.0)
    b = Sequence([2] * 12, 16, 0.0)
    sched.add(a)
    sched.add(b)
    seen: list[StepOutput] = []
    while b.preemptions == 0:
        seen.append(sched.step(0.0))
        assert len(seen) < 100
    assert seen[-1].num_preempted == 1
    assert b in sched.waiting
    assert b.blocks == []
    assert b.num_computed == 0
    assert len(b.output) > 0
    # A preemption step admits nobody from the queue.
    assert seen[-1].sampled == [a]
    # On resuming, b recomputes prompt and output past whatever is still cached.
    n_out = len(b.output)
    while b.num_computed == 0:
        usable = (b.num_tokens - 1) // 4
        cached = len(sched.pool.lookup(b.hashes[:usable])) * 4
        tokens, a_running = b.num_tokens, a in sched.running
        out = sched.step(0.0)
        assert len(seen) < 100
        seen.append(out)
    assert out.num_scheduled_tokens == a_running + tokens - cached
    assert out.num_prefill_tokens == max(0, 12 - cached)
    assert b in out.sampled
    assert len(b.output) == n_out + 1


def test_a_spent_budget_admits_nobody() -> None:
    prof = custom_profile(1.0, 0.5, 0.0, 0.0)
    sched = make(prof, max_num_batched_tokens=8)
    a, b = Sequence([1] * 8, 5, 0.0), Sequence([2] * 4, 5, 0.0)
    sched.add(a)
    sched.add(b)
    out = sched.step(0.0)
    assert out.num_scheduled_tokens == 8
    assert out.duration_s == prof.step_time(1, 8, 8)
    assert sched.running == [a]
    assert b.scheduled_at is None
    assert list(sched.waiting) == [b]
    out = sched.step(out.duration_s)
    assert sched.running == [a, b]
    assert out.num_scheduled_tokens == 5


def test_no_preemption_when_blocks_suffice() -> None:
    sched = make(num_gpu_blocks=64, block_size=4)
    for i in range(4):
        sched.add(Sequence([i] * 12, 16, 0.0))
    run(sched)
    assert sched.preemptions_total == 0


# -- timing -------------------------------------------------------------------------------------


def test_step_durations_follow_the_profile() -> None:
    prof = custom_profile(0.5, 0.25, 0.125, 0.0625)
    sched = make(prof, block_size=4)
    a = Sequence([1] * 10, 3, 1.0)
    b = Sequence([2] * 20, 3, 1.0)
    sched.add(a)
    sched.add(b)
    outs = run(sched, t=1.0)
    # Step 1: two seqs, 30 prefill tokens, 30 context tokens.
    assert outs[0].duration_s == pytest.approx(prof.step_time(2, 30, 30))
    assert outs[0].duration_s == pytest.approx(0.5 + 0.5 + 30 * 0.125 + 30 * 0.0625)
    # Step 2: decodes attending over 11 and 21 tokens.
    assert outs[1].duration_s == pytest.approx(prof.step_time(2, 0, 32))
    assert outs[2].duration_s == pytest.approx(prof.step_time(2, 0, 34))
    t1 = 1.0 + outs[0].duration_s
    assert a.scheduled_at == 1.0
    assert a.first_token_at == pytest.approx(t1)
    assert a.last_itl == pytest.approx(outs[2].duration_s)
    assert a.finished_at == pytest.approx(1.0 + sum(o.duration_s for o in outs))


def test_profile_step_time_formula() -> None:
    prof = custom_profile(1.0, 2.0, 3.0, 4.0)
    assert prof.step_time(0, 100, 100) == 0.0
    assert prof.step_time(2, 5, 7) == 1.0 + 4.0 + 15.0 + 28.0
    assert PROFILES["instant"].step_time(10, 100, 1000) == 0.0
    assert PROFILES["small"].step_time(1, 0, 0) > 0
    with pytest.raises(ValueError):
        custom_profile(-1.0, 0.0, 0.0, 0.0)


# -- abort --------------------------------------------------------------------------------------


def test_abort_waiting_and_running_sequences() -> None:
    sched = make(max_num_seqs=1)
    a = Sequence([1] * 10, 20, 0.0)
    b = Sequence([2] * 10, 20, 0.0)
    sched.add(a)
    sched.add(b)
    sched.step(0.0)
    assert sched.running == [a]
    assert sched.pool.num_free < sched.config.num_gpu_blocks
    assert sched.abort(b, 0.0) is True
    assert b.finish is Finish.ABORT
    assert b not in sched.waiting
    assert sched.abort(a, 0.0) is True
    assert a.finish is Finish.ABORT
    assert a.visible_bytes == len(a.out_bytes)
    assert sched.running == []
    assert not sched.has_work
    assert sched.pool.num_free == sched.config.num_gpu_blocks
    assert sched.abort(a, 0.0) is False


def test_abort_of_finished_or_unknown_sequence_is_refused() -> None:
    sched = make()
    done = Sequence([1], 1, 0.0)
    sched.add(done)
    run(sched)
    assert sched.abort(done, 0.0) is False
    assert done.finish is Finish.LENGTH
    stranger = Sequence([1], 1, 0.0)
    assert sched.abort(stranger, 0.0) is False
    assert stranger.finish is None


def test_abort_holds_back_a_partial_stop_string() -> None:
    sched = make()
    seq = Sequence([1], 50, 0.0, stop=(b"zzz",))
    sched.add(seq)
    sched.step(0.0)
    sched.abort(seq, 0.0)
    assert seq.visible_bytes == len(seq.out_bytes) - 2


# -- random workloads ---------------------------------------------------------------------------

STOPS = (b"fox", b"e", b"lazy dog", b"zebra")


@dataclass
class Req:
    prefix: int  # index of a shared prefix
    prefix_len: int
    suffix: list[int]
    max_tokens: int
    eos_after: int | None
    stop: tuple[bytes, ...]
    lora: str | None
    arrive_step: int
    seed: int


@dataclass
class Workload:
    cfg: SchedulerConfig
    reqs: list[Req]
    aborts: list[tuple[int, int]]  # (step, request index)
    prefixes: list[list[int]] = field(default_factory=list)

    def sequences(self) -> list[Sequence]:
        return [
            Sequence(
                [*self.prefixes[r.prefix][: r.prefix_len], *r.suffix],
                r.max_tokens,
                0.0,
                eos_after=r.eos_after,
                stop=r.stop,
                lora_name=r.lora,
                seed=r.seed,
            )
            for r in self.reqs
        ]


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    # Under "pressure" every request arrives at once and runs to its full length in a KV cache
    # that fits only one max_model_len sequence, which forces preemption.
    pressure = draw(st.booleans())
    bs = draw(st.sampled_from([1, 2, 4, 8]))
    max_model_len = draw(st.integers(4, 48))
    min_blocks = -(-max_model_len // bs)
    cfg = SchedulerConfig(
        max_num_seqs=draw(st.integers(2 if pressure else 1, 5)),
        max_num_batched_tokens=draw(st.integers(1, 40)),
        num_gpu_blocks=min_blocks if pressure else draw(st.integers(min_blocks, min_blocks + 6)),
        block_size=bs,
        max_model_len=max_model_len,
        enable_prefix_caching=draw(st.booleans() | st.just(True)),
    )
    prefixes = [draw(st.lists(st.integers(0, 3), min_size=48, max_size=48)) for _ in range(2)]
    reqs = []
    for _ in range(draw(st.integers(2 if pressure else 1, 8))):
        total = draw(st.integers(1, max_model_len - 1))
        plen = draw(st.integers(0, total))
        room = max_model_len - total
        reqs.append(
            Req(
                prefix=draw(st.integers(0, 1)),
                prefix_len=plen,
                suffix=draw(
                    st.lists(st.integers(0, 3), min_size=total - plen, max_size=total - plen)
                ),
                max_tokens=room if pressure else draw(st.integers(0, room)),
                eos_after=None if pressure else draw(st.none() | st.integers(0, 10)),
                stop=() if pressure else tuple(draw(st.lists(st.sampled_from(STOPS), max_size=2))),
                lora=draw(st.sampled_from([None, None, "x"])),
                arrive_step=0 if pressure else draw(st.integers(0, 6)),
                seed=draw(st.integers(0, 40)),
            )
        )
    n = len(reqs)
    aborts = draw(st.lists(st.tuples(st.integers(0, 12), st.integers(0, n - 1)), max_size=4))
    return Workload(cfg, reqs, aborts, prefixes)


def check_invariants(sched: Scheduler) -> None:
    cfg, pool = sched.config, sched.pool
    assert len(sched.running) <= cfg.max_num_seqs
    holders = [0] * cfg.num_gpu_blocks
    for seq in sched.running:
        ids = [b.block_id for b in seq.blocks]
        assert len(set(ids)) == len(ids), "a sequence holds one block twice"
        assert len(seq.blocks) * cfg.block_size >= seq.num_computed
        for i, blk in enumerate(seq.blocks):
            holders[blk.block_id] += 1
            assert blk.ref_cnt >= 1
            # A cached block a sequence uses holds exactly that sequence's tokens.
            if blk.hash is not None:
                assert blk.hash == seq.hashes[i]
    for seq in sched.waiting:
        assert seq.blocks == []
        assert seq.finish is None
    assert [b.ref_cnt for b in pool.blocks] == holders, "ref counts differ from holders"
    held = sum(1 for h in holders if h)
    assert held <= cfg.num_gpu_blocks
    assert 0 <= pool.num_free <= cfg.num_gpu_blocks
    assert pool.num_free == cfg.num_gpu_blocks - held
    assert pool.usage == pytest.approx(held / cfg.num_gpu_blocks)


def replay(events: list[KVEvent], live: set[int]) -> None:
    for ev in events:
        if isinstance(ev, BlockStored):
            assert not live & set(ev.block_hashes), "hash stored twice"
            live.update(ev.block_hashes)
        elif isinstance(ev, BlockRemoved):
            assert set(ev.block_hashes) <= live, "removed a hash never stored"
            live.difference_update(ev.block_hashes)
        else:
            live.clear()


@pytest.mark.timeout(240)  # 150 examples in plain Python on a busy 2-core machine
@settings(max_examples=150, deadline=None)
@given(workloads())
def test_random_workloads_run_to_completion(w: Workload) -> None:
    cfg = w.cfg
    sched = Scheduler(cfg, custom_profile(0.01, 0.001, 0.0001, 0.00001))
    seqs = w.sequences()
    finished_count = dict.fromkeys(map(id, seqs), 0)
    sampled_count = dict.fromkeys(map(id, seqs), 0)
    aborted: set[int] = set()
    live: set[int] = set()  # hashes stored and not removed, per the event stream
    t, step = 0.0, 0
    while step <= max(r.arrive_step for r in w.reqs) or sched.has_work:
        assert step < MAX_STEPS, "scheduler made no progress"
        for r, s in zip(w.reqs, seqs, strict=True):
            if r.arrive_step == step:
                s.arrival = t
                sched.add(s)
        for at, idx in w.aborts:
            if at == step and sched.abort(seqs[idx], t):
                assert seqs[idx].finish is Finish.ABORT
                assert id(seqs[idx]) not in aborted
                aborted.add(id(seqs[idx]))
        replay(sched.pool.drain_events(), live)
        unscheduled = [s for s in seqs if s.scheduled_at is None]
        before = set(live)
        preemptions = {id(s): s.preemptions for s in seqs}
        out = sched.step(t)
        step += 1
        victims = [s for s in seqs if s.preemptions > preemptions[id(s)]]
        assert len(victims) == out.num_preempted
        for s in victims:
            assert s.preemptions == preemptions[id(s)] + 1
            assert s.blocks == []
            assert s.num_computed == 0
            assert s not in out.sampled
        if out.num_preempted:
            # A step that preempts admits nobody from the queue, the victims included.
            assert not any(s in sched.running for s in victims)
            assert not any(s.scheduled_at is not None for s in unscheduled)

        assert out.num_scheduled_tokens <= cfg.max_num_batched_tokens
        assert out.num_prefill_tokens <= out.num_scheduled_tokens
        assert out.duration_s >= 0
        for s in unscheduled:
            if s.scheduled_at is not None:
                # A first-time hit only uses blocks whose BlockStored came before this step.
                nhit, rem = divmod(s.cached_prompt_tokens, cfg.block_size)
                assert rem == 0
                assert s.cached_prompt_tokens <= len(s.prompt) - 1
                assert set(s.hashes[:nhit]) <= before
                # Admitted only with at least one token to compute.
                assert s.num_computed > s.cached_prompt_tokens
                if not cfg.enable_prefix_caching:
                    assert nhit == 0
        for s in out.sampled:
            sampled_count[id(s)] += 1
            assert len(s.output) == sampled_count[id(s)]
        for s in out.finished:
            finished_count[id(s)] += 1
            assert s.finish in (Finish.STOP, Finish.LENGTH)
            assert s.finished_at == pytest.approx(t + out.duration_s)
        replay(out.events, live)
        assert pool_hashes(sched) == live
        check_invariants(sched)
        t += out.duration_s

    assert not sched.running
    assert not sched.waiting
    assert sched.pool.num_free == cfg.num_gpu_blocks
    assert all(b.ref_cnt == 0 for b in sched.pool.blocks)
    assert sum(s.preemptions for s in seqs) == sched.preemptions_total
    event(f"preempted: {sched.preemptions_total > 0}")
    event(f"prefix hit: {sched.prefix_hits > 0}")
    event(f"aborted: {bool(aborted)}")
    event(f"stopped by string: {any(s.stop_reason for s in seqs)}")
    for r, s in zip(w.reqs, seqs, strict=True):
        assert s.finish in (Finish.STOP, Finish.LENGTH, Finish.ABORT)
        # Every sequence ends exactly once: in a step's `finished`, or by abort.
        assert finished_count[id(s)] + (id(s) in aborted) == 1
        assert (s.finish is Finish.ABORT) == (id(s) in aborted)
        assert len(s.output) <= s.max_tokens
        assert len(s.prompt) + len(s.output) <= cfg.max_model_len
        assert s.output == filler(r.seed, len(s.output))
        assert 0 <= s.visible_bytes <= len(s.out_bytes)
        if s.finish is Finish.LENGTH:
            assert len(s.output) == s.max_tokens
            assert s.stop_reason is None
        elif s.finish is Finish.STOP:
            if s.max_tokens == 0:
                assert s.output == []
            elif s.stop_reason is not None:
                assert s.stop_reason.encode() in s.stop
                assert s.out_bytes.find(s.stop_reason.encode()) == s.visible_bytes
            else:
                assert s.eos_after is not None
                assert len(s.output) == max(1, s.eos_after)
        if s.finish is not Finish.ABORT:
            assert s.finished_at is not None
            assert s.scheduled_at is not None
            assert s.arrival <= s.scheduled_at <= s.finished_at
            if s.max_tokens > 0:
                assert s.first_token_at is not None
                assert s.scheduled_at < s.first_token_at <= s.finished_at


def pool_hashes(sched: Scheduler) -> set[int]:
    hashed = {b.hash for b in sched.pool.blocks if b.hash is not None}
    assert len(hashed) == sched.pool.num_cached
    assert all(sched.pool.is_cached(h) for h in hashed)
    return hashed


@settings(max_examples=40, deadline=None)
@given(workloads())
def test_random_workloads_are_deterministic(w: Workload) -> None:
    def once() -> list[tuple[object, ...]]:
        sched = Scheduler(w.cfg, PROFILES["small"])
        seqs = w.sequences()
        for s in seqs:
            sched.add(s)
        run(sched)
        return [
            (s.output, s.finish, s.first_token_at, s.finished_at, s.cached_prompt_tokens)
            for s in seqs
        ]

    assert once() == once()
