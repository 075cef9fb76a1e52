"""What makes `vfleet bench plan` fast must not change what it plans: hashing only the KV blocks
another sequence could share, generating only the requests sent, cutting words past a prompt's
end, summing decode steps in one loop."""

from __future__ import annotations

import random

import pytest

from vfleet.bench import workloads
from vfleet.bench.plan import simulate_fleet
from vfleet.bench.sharing import hash_limits
from vfleet.bench.workloads import WorkloadSpec, generate
from vfleet.sim.profiles import PROFILES, custom_profile
from vfleet.sim.scheduler import HASH_ALL, SchedulerConfig

SMALL = PROFILES["small"]
CONFIG = SchedulerConfig(max_num_seqs=32, num_gpu_blocks=2048, max_model_len=2048)


def _words_then_cut(rng: random.Random, tokens: int) -> str:
    """`workloads.text` as it was: every word the budget allows drawn at once, then cut."""
    size = tokens * workloads.CHARS_PER_TOKEN
    words = rng.choices(workloads._WORDS, k=size // (workloads._SHORTEST + 1) + 1)
    return " ".join(words)[:size]


def test_prompt_text_and_every_later_draw_are_those_of_drawing_all_words() -> None:
    for seed in range(200):
        new, old = random.Random(seed), random.Random(seed)
        for tokens in (1, 2, 3, 7, 16, 64, 255, 256, 1000, 4096):
            assert workloads.text(new, tokens) == _words_then_cut(old, tokens), (seed, tokens)
        assert new.random() == old.random()  # the generator is where it was


@pytest.mark.parametrize("name", ["random", "shared-prefix", "multi-round", "embeddings", "rerank"])
def test_a_workloads_first_requests_do_not_depend_on_how_many_follow(name: str) -> None:
    # `plan` generates only the requests sent before --duration (workloads.py's generators
    # draw request by request, so the first k are the same whatever the total)
    spec = WorkloadSpec(name, 60, seed=5, users=4, rounds=5, documents=3, input_len=40)
    assert (
        generate(WorkloadSpec(name, 23, seed=5, users=4, rounds=5, documents=3, input_len=40))
        == (generate(spec)[:23])
    )


def test_hash_limits_cover_every_prefix_two_prompts_share() -> None:
    reqs = generate(WorkloadSpec("shared-prefix", 40, seed=3, groups=2, users=4, prefix_len=100))
    limits = hash_limits(reqs, 16)
    # a group's 100-token system prompt (6 full blocks) and the odd question starting alike
    assert all(6 <= lim[0] < HASH_ALL for lim in limits), limits
    assert hash_limits(generate(WorkloadSpec("random", 50, seed=3)), 16) == [(0,)] * 50
    rounds = generate(WorkloadSpec("multi-round", 8, seed=3, users=2, rounds=4))
    # a round's prompt starts the next round's: all its blocks, outputs included, are hashed
    assert [lim[0] == HASH_ALL for lim in hash_limits(rounds, 16)] == [True] * 6 + [False] * 2


@pytest.mark.parametrize(
    ("name", "policy", "kw"),
    [
        ("random", "least_load", {"input_len": 200, "output_len": 40, "range_ratio": 0.5}),
        ("shared-prefix", "prefix", {"groups": 3, "users": 4, "prefix_len": 200}),
        ("multi-round", "session", {"users": 12, "rounds": 4, "input_len": 64, "output_len": 48}),
        ("rerank", "round_robin", {"documents": 3, "input_len": 48}),
        ("embeddings", "least_load", {"input_len": 80}),
    ],
)
def test_hashing_only_shareable_blocks_gives_the_timings_of_hashing_all(
    name: str, policy: str, kw: dict[str, int]
) -> None:
    reqs = generate(WorkloadSpec(name, 150, seed=4, **kw))
    offsets = workloads.poisson_offsets(len(reqs), 400.0, 4)
    # as is; with so little KV cache that sequences are preempted (and find their own blocks
    # again); with chunked prefill
    small_kv = SchedulerConfig(max_num_seqs=16, num_gpu_blocks=160, max_model_len=1024)
    chunked = SchedulerConfig(max_num_batched_tokens=33, num_gpu_blocks=512, max_model_len=1024)
    for config in (CONFIG, small_kv, chunked):
        for load in ({}, {"concurrency": 8, "num_requests": 150}):
            args = (reqs, [] if load else offsets, 3, config, SMALL, policy)
            some = simulate_fleet(*args, **load)  # type: ignore[arg-type]
            every = simulate_fleet(*args, **load, hash_every_block=True)  # type: ignore[arg-type]
            assert [(r.id, r.sent, r.ttft, r.e2e, r.output_tokens) for r in some.records] == [
                (r.id, r.sent, r.ttft, r.e2e, r.output_tokens) for r in every.records
            ]
            assert some.per_engine == every.per_engine


def test_decode_step_ends_sum_as_step_time_does() -> None:
    profiles = [*PROFILES.values(), custom_profile(1, 2, 3, 4), custom_profile(1e-3, 3e-7, 1, 1e-9)]
    rng = random.Random(1)
    for prof in profiles:
        for _ in range(100):
            start, n = rng.random() * 1000, rng.randrange(1, 300)
            ctx, steps = n + rng.randrange(100_000), rng.randrange(70)
            want, end = [], start
            for i in range(steps):
                end += prof.step_time(n, 0, ctx + i * n)
                want.append(end)
            assert prof.decode_ends(start, n, ctx, steps) == want  # equal, not approximately
