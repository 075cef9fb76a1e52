"""Offline virtual-time runs: exact timings, idle gaps, determinism, load and prefix sharing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.sim.profiles import PROFILES, custom_profile
from vfleet.sim.scheduler import SchedulerConfig
from vfleet.sim.virtual import Arrival, RequestResult, RunResult, simulate

PROF = custom_profile(0.01, 0.001, 0.0001, 0.00001)
CFG = SchedulerConfig(num_gpu_blocks=256, block_size=16, max_model_len=1024)
H100 = PROFILES["llama-8b-h100"]


def by_arrival(res: RunResult) -> dict[float, RequestResult]:
    out = {r.arrival: r for r in res.requests}
    assert len(out) == len(res.requests), "test arrivals must have distinct times"
    return out


def test_no_arrivals() -> None:
    res = simulate(CFG, PROF, [])
    assert res.requests == []
    assert res.duration_s == 0.0
    assert res.steps == 0
    assert res.output_tokens_per_s == 0.0


def test_single_request_timings_are_exact() -> None:
    res = simulate(CFG, PROF, [Arrival(2.0, [1] * 100, 5)])
    (r,) = res.requests
    prefill = PROF.step_time(1, 100, 100)
    decodes = [PROF.step_time(1, 0, 100 + i) for i in range(1, 5)]
    assert r.arrival == 2.0
    assert r.queue == 0.0
    assert r.ttft == pytest.approx(prefill)
    assert r.e2e == pytest.approx(prefill + sum(decodes))
    assert r.output_tokens == 5
    assert r.cached_prompt_tokens == 0
    assert r.preemptions == 0
    assert r.finish == "length"
    assert res.steps == 5
    # The run starts at the first arrival, not at zero.
    assert res.duration_s == pytest.approx(r.e2e)
    assert res.output_tokens_per_s == pytest.approx(5 / r.e2e)


def test_ignore_eos_false_ends_with_stop() -> None:
    res = simulate(CFG, PROF, [Arrival(0.0, [1] * 8, 4, ignore_eos=False)])
    (r,) = res.requests
    assert r.finish == "stop"
    assert r.output_tokens == 4


def test_prefill_only_request() -> None:
    (r,) = simulate(CFG, PROF, [Arrival(0.0, [1] * 40, 0)]).requests
    assert r.output_tokens == 0
    assert r.finish == "stop"
    assert r.ttft == pytest.approx(PROF.step_time(1, 40, 40))
    assert r.e2e == r.ttft


def test_arrival_joins_at_the_next_step_boundary() -> None:
    first_step = PROF.step_time(1, 100, 100)
    late = first_step / 2
    res = by_arrival(simulate(CFG, PROF, [Arrival(0.0, [1] * 100, 3), Arrival(late, [2] * 4, 1)]))
    assert res[late].queue == pytest.approx(first_step - late)
    assert res[late].ttft > res[late].queue


def test_idle_engine_jumps_to_the_next_arrival() -> None:
    arrivals = [Arrival(0.0, [1] * 50, 4), Arrival(100.0, [2] * 50, 4)]
    res = simulate(CFG, PROF, arrivals)
    a, b = by_arrival(res)[0.0], by_arrival(res)[100.0]
    assert b.queue == 0.0
    assert b.ttft == pytest.approx(a.ttft)
    assert b.e2e == pytest.approx(a.e2e)
    assert res.duration_s == pytest.approx(100.0 + b.e2e)
    assert res.steps == 8


def test_results_match_arrivals_given_out_of_order() -> None:
    arrivals = [Arrival(float(t), [t + 1] * (t + 1), t + 1) for t in (5, 1, 3, 0)]
    res = by_arrival(simulate(CFG, PROF, arrivals))
    assert sorted(res) == [0.0, 1.0, 3.0, 5.0]
    for a in arrivals:
        assert res[a.at].output_tokens == a.max_tokens


def test_too_long_arrival_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        simulate(CFG, PROF, [Arrival(0.0, [1] * 1000, 100)])


arrivals_st = st.lists(
    st.builds(
        Arrival,
        at=st.floats(0.0, 0.5, allow_nan=False),
        prompt=st.lists(st.integers(0, 3), min_size=1, max_size=64),
        max_tokens=st.integers(0, 32),
        ignore_eos=st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(arrivals_st, st.integers(12, 20))
def test_simulate_is_deterministic_and_complete(arrivals: list[Arrival], blocks: int) -> None:
    cfg = SchedulerConfig(num_gpu_blocks=blocks, block_size=8, max_model_len=96)
    one = simulate(cfg, H100, arrivals)
    two = simulate(cfg, H100, list(arrivals))
    assert one == two
    assert len(one.requests) == len(arrivals)
    assert sorted(r.arrival for r in one.requests) == sorted(a.at for a in arrivals)
    for r in one.requests:
        assert r.finish in ("stop", "length")
        assert 0.0 <= r.queue <= r.ttft <= r.e2e
        assert r.e2e <= one.duration_s + 1e-9
    assert sum(r.output_tokens for r in one.requests) == sum(a.max_tokens for a in arrivals)


def burst(n: int) -> RunResult:
    return simulate(SchedulerConfig(), H100, [Arrival(0.0, [i] * 256, 32) for i in range(n)])


def test_ttft_grows_with_load() -> None:
    mean_ttft = []
    for n in (1, 4, 16, 64):
        res = burst(n)
        mean_ttft.append(sum(r.ttft for r in res.requests) / n)
    assert mean_ttft == sorted(mean_ttft)
    assert len(set(mean_ttft)) == len(mean_ttft)
    assert mean_ttft[-1] > 10 * mean_ttft[0]


def test_batching_raises_throughput() -> None:
    assert burst(64).output_tokens_per_s > 4 * burst(1).output_tokens_per_s


def test_max_num_seqs_queues_requests() -> None:
    cfg = SchedulerConfig(max_num_seqs=2)
    res = simulate(cfg, H100, [Arrival(0.0, [i] * 64, 8) for i in range(6)])
    queued = [r.queue for r in res.requests]
    assert queued[:2] == [0.0, 0.0]
    assert all(q > 0 for q in queued[2:])


def test_scarce_kv_blocks_cause_preemptions() -> None:
    cfg = SchedulerConfig(num_gpu_blocks=16, block_size=16, max_model_len=256)
    res = simulate(cfg, H100, [Arrival(0.0, [i] * 64, 128) for i in range(4)])
    assert sum(r.preemptions for r in res.requests) > 0
    assert all(r.output_tokens == 128 for r in res.requests)


def test_prefix_sharing_raises_cached_prompt_tokens() -> None:
    system = list(range(512))

    def run(shared: bool) -> RunResult:
        return simulate(
            SchedulerConfig(),
            H100,
            [
                Arrival(float(i), (system if shared else [i] * 512) + [10_000 + i] * 32, 16)
                for i in range(20)
            ],
        )

    shared, unique = run(True), run(False)
    assert [r.cached_prompt_tokens for r in unique.requests] == [0] * 20
    assert [r.cached_prompt_tokens for r in shared.requests] == [0] + [512] * 19
    mean = [sum(r.ttft for r in x.requests[1:]) / 19 for x in (shared, unique)]
    assert mean[0] < mean[1]


def test_request_overhead_delays_the_first_token_but_is_not_queue_time() -> None:
    prof = custom_profile(0.01, 0.0, 0.0, 0.0, request_overhead_s=0.5)
    res = simulate(SchedulerConfig(), prof, [Arrival(1.0, [1] * 8, 4)])
    [r] = res.requests
    assert r.ttft == pytest.approx(0.5 + 0.01)
    assert r.e2e == pytest.approx(0.5 + 4 * 0.01)
    assert r.queue == 0.0
