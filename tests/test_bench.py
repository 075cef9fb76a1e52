"""`vfleet bench`'s pure parts: workloads, arrivals, statistics, engine metrics, reports."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DATA
from vfleet.bench import promtext, report, workloads
from vfleet.bench.stats import Record, Slo, percentile, summarize
from vfleet.bench.workloads import WorkloadSpec, generate
from vfleet.sim import tokenizer

SMALL = {"input_len": 24, "output_len": 6, "prefix_len": 40, "groups": 3, "users": 4}


@pytest.mark.parametrize("name", ["random", "shared-prefix", "multi-round", "embeddings", "rerank"])
def test_same_seed_same_requests_other_seed_other_requests(name: str) -> None:
    a = generate(WorkloadSpec(name, 30, seed=7, range_ratio=0.5, **SMALL))
    b = generate(WorkloadSpec(name, 30, seed=7, range_ratio=0.5, **SMALL))
    c = generate(WorkloadSpec(name, 30, seed=8, range_ratio=0.5, **SMALL))
    assert a == b
    assert [r.prompt for r in a] != [r.prompt for r in c]
    assert len({r.id for r in a}) == len(a)


@given(tokens=st.integers(0, 600), seed=st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_text_is_exactly_that_many_simulator_tokens(tokens: int, seed: int) -> None:
    import random

    t = workloads.text(random.Random(seed), tokens)
    assert t.isascii()
    assert len(tokenizer.encode(t)) == tokens


@pytest.mark.parametrize("name", ["random", "shared-prefix", "multi-round"])
def test_prompt_lengths_match_the_simulator_tokenizer(name: str) -> None:
    reqs = generate(WorkloadSpec(name, 25, seed=3, range_ratio=0.3, **SMALL))
    for r in reqs:
        assert len(tokenizer.encode(r.prompt)) == r.input_tokens
        assert r.max_tokens >= 1
        body = r.body("m")
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == r.max_tokens


def test_random_lengths_stay_in_their_range() -> None:
    reqs = generate(
        WorkloadSpec("random", 400, seed=1, input_len=100, output_len=20, range_ratio=0.5)
    )
    ins = [r.input_tokens for r in reqs]
    outs = [r.max_tokens for r in reqs]
    assert min(ins) >= 50 and max(ins) <= 150
    assert min(outs) >= 10 and max(outs) <= 30
    assert len(set(ins)) > 20  # a distribution, not a constant


def test_shared_prefix_groups_share_their_system_prompt_and_only_it() -> None:
    reqs = generate(WorkloadSpec("shared-prefix", 48, seed=2, **SMALL))
    n = SMALL["prefix_len"] * workloads.CHARS_PER_TOKEN
    by_group: dict[int, set[str]] = {}
    for r in reqs:
        by_group.setdefault(r.group, set()).add(r.prompt[:n])
    assert sorted(by_group) == [0, 1, 2]
    assert all(len(p) == 1 for p in by_group.values())
    assert len({next(iter(p)) for p in by_group.values()}) == 3
    # every (group, user) pair appears, and groups interleave rather than run in blocks
    assert {(r.group, r.user) for r in reqs} == {(g, u) for g in range(3) for u in range(4)}
    assert len({r.group for r in reqs[:6]}) > 1


def test_multi_round_conversations_grow_and_wait_for_their_previous_round() -> None:
    reqs = generate(WorkloadSpec("multi-round", 100, seed=4, rounds=3, **SMALL))
    assert len(reqs) == SMALL["users"] * 3  # capped by users x rounds
    by_id = {r.id: r for r in reqs}
    for r in reqs:
        if r.round == 0:
            assert r.after is None
            continue
        prev = by_id[r.after or ""]
        assert (prev.user, prev.round) == (r.user, r.round - 1)
        assert reqs.index(prev) < reqs.index(r)
        # the history (previous prompt and its answer) is a prefix of this prompt
        assert r.prompt.startswith(prev.prompt)
        assert r.input_tokens > prev.input_tokens + prev.max_tokens


def test_rerank_and_embeddings_bodies() -> None:
    (k,) = generate(WorkloadSpec("rerank", 1, seed=0, documents=5, input_len=16))
    assert k.path == "/v1/rerank"
    assert len(k.body("m")["documents"]) == 5
    (e,) = generate(WorkloadSpec("embeddings", 1, seed=0, input_len=16))
    assert e.path == "/v1/embeddings"
    assert e.body("m") == {"model": "m", "input": e.prompt}


def test_trace_replay_keeps_times_lengths_and_groups() -> None:
    lines = [
        json.dumps({"timestamp": 100.5, "input_tokens": 30, "output_tokens": 4, "group": 1}),
        "",
        json.dumps({"timestamp": 101.0, "input_tokens": 50, "output_tokens": 2, "group": 1}),
        json.dumps({"timestamp": 102.25, "input_tokens": 8, "output_tokens": 3}),
    ]
    trace = workloads.parse_trace(lines)
    reqs = generate(WorkloadSpec("trace", 0, seed=5, prefix_len=20, trace=trace))
    assert [r.at for r in reqs] == [0.0, 0.5, 1.75]
    assert [r.input_tokens for r in reqs] == [30, 50, 8]
    assert [len(tokenizer.encode(r.prompt)) for r in reqs] == [30, 50, 8]
    assert [r.max_tokens for r in reqs] == [4, 2, 3]
    assert reqs[0].prompt[:80] == reqs[1].prompt[:80]  # group 1's 20-token prefix


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("[1, 2]", "not an object"),
        ('{"timestamp": 1, "input_tokens": 3}', "output_tokens"),
        ('{"timestamp": "x", "input_tokens": 3, "output_tokens": 1}', "line 1"),
        ('{"timestamp": 1, "input_tokens": 0, "output_tokens": 1}', ">= 1"),
    ],
)
def test_bad_trace_lines_are_named(line: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        workloads.parse_trace([line])


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        WorkloadSpec("sharegpt", 1)
    with pytest.raises(ValueError, match="requests"):
        WorkloadSpec("random", 0)
    with pytest.raises(ValueError, match="range ratio"):
        WorkloadSpec("random", 1, range_ratio=1.0)


@given(seed=st.integers(0, 2**31), rate=st.floats(0.5, 5000))
@settings(max_examples=20, deadline=None)
def test_poisson_arrivals_have_the_asked_mean_rate(seed: int, rate: float) -> None:
    n = 4000
    offsets = workloads.poisson_offsets(n, rate, seed)
    assert offsets == sorted(offsets)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    # the mean of 4000 exponential gaps is within 10% of 1/rate far beyond 6 sigma (1.6% each)
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.1)
    # exponential gaps: standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.15)
    assert workloads.poisson_offsets(n, rate, seed) == offsets


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=200))
def test_percentiles_are_ordered_and_bounded(values: list[float]) -> None:
    ps = [percentile(values, p) for p in (0, 50, 90, 99, 100)]
    assert ps[0] == min(values) and ps[-1] == max(values)
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(ps))


def _rec(i: int, ttft: float, e2e: float, out: int, ok: bool = True) -> Record:
    return Record(
        f"r{i}",
        "completion",
        float(i),
        ok=ok,
        status=200 if ok else 503,
        ttft=ttft,
        e2e=e2e,
        itl=[(e2e - ttft) / max(1, out - 1)] * (out - 1),
        input_tokens=10,
        output_tokens=out,
    )


def test_summary_counts_throughput_and_goodput() -> None:
    recs = [
        _rec(0, 0.1, 1.1, 11),  # TPOT 0.1
        _rec(1, 0.5, 0.7, 3),  # TPOT 0.1, TTFT over the SLO
        _rec(2, 0.2, 2.2, 5),  # TPOT 0.5, over the ITL SLO
        _rec(3, 0.1, 0.1, 1, ok=False),
    ]
    s = summarize(recs, 2.0, Slo(ttft_s=0.3, itl_s=0.2))
    assert (s["requests"], s["completed"], s["failed"]) == (4, 3, 1)
    assert s["errors"] == {"503": 1}
    assert s["request_throughput"] == 1.5
    assert s["output_tokens"] == 19 and s["output_token_throughput"] == 9.5
    assert s["input_tokens"] == 30
    assert s["good_requests"] == 1 and s["goodput"] == 0.5
    assert s["ttft_s"]["p50"] == 0.2
    assert s["tpot_s"]["max"] == pytest.approx(0.5)
    assert summarize(recs, 2.0, Slo())["good_requests"] == 3  # no SLO: every success counts


def test_engine_metrics_are_summed_over_labels_and_diffed() -> None:
    before = promtext.parse(
        'vllm:prefix_cache_queries_total{engine="0",model_name="a"} 100.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="a"} 10.0\n'
        'vllm:request_success_total{finished_reason="length",model_name="a"} 4.0\n'
        'vllm:request_success_total{finished_reason="stop",model_name="a"} 1.0\n'
        "# HELP vllm:num_requests_waiting x\nvllm:num_requests_waiting 7\n"
        "vllm:prefix_cache_queries_created 1.7e9\n"
    )
    assert before["vllm:request_success_total"] == 5.0
    after = dict(before)
    after.update(
        {
            "vllm:prefix_cache_queries_total": 300.0,
            "vllm:prefix_cache_hits_total": 160.0,
            "vllm:request_success_total": 25.0,
            "vllm:num_requests_waiting": 0.0,
        }
    )
    d = promtext.delta(before, after)
    assert d["vllm:request_success_total"] == 20.0
    assert d["prefix_cache_hit_rate"] == 0.75
    assert d["vllm:num_requests_waiting"] == 0.0  # a gauge: its value at the end


def test_engine_metrics_of_a_real_vllm_scrape() -> None:
    got = promtext.parse((DATA / "metrics_qwen3_after_load.txt").read_text())
    assert got["vllm:request_success_total"] > 0
    assert "vllm:prefix_cache_queries_total" in got


def test_a_counter_family_is_summed_by_one_label() -> None:
    text = (
        "# TYPE vfleet_router_kv_decisions_total counter\n"
        'vfleet_router_kv_decisions_total{model="a",reason="hit"} 5.0\n'
        'vfleet_router_kv_decisions_total{model="b",reason="hit"} 2.0\n'
        'vfleet_router_kv_decisions_total{reason="miss",model="a"} 1.0 1700000000\n'
        'vfleet_router_kv_decisions_total{model="a",subreason="x"} 9.0\n'
        'vfleet_router_kv_decisions_totally{reason="hit"} 7.0\n'
        'vfleet_router_kv_chains_total{outcome="busy"} 3.0\n'
    )
    got = promtext.by_label(text, "vfleet_router_kv_decisions_total", "reason")
    assert got == {"hit": 7.0, "miss": 1.0}
    assert promtext.by_label(text, "vfleet_router_kv_chains_total", "outcome") == {"busy": 3.0}
    assert promtext.by_label(text, "vfleet_router_requests_total", "upstream") == {}


def test_compare_table_has_ratios_against_the_first_run() -> None:
    a = {"completed": 10, "request_throughput": 2.0, "ttft_s": {"p50": 0.1}}
    b = {"completed": 10, "request_throughput": 3.0, "ttft_s": {"p50": 0.05}}
    table = report.compare_table(["a", "b"], [a, b])
    lines = table.splitlines()
    assert lines[0] == "| metric | a | b |"
    assert "| request throughput (req/s) | 2 | 3 (x1.50) |" in lines
    assert "| TTFT p50 (ms) | 100 | 50 (x0.50) |" in lines
    assert not any(line.startswith("| ITL") for line in lines)  # absent everywhere: left out
    md = report.run_markdown({**a, "run": {"url": "http://x", "model": "m"}, "duration_s": 5})
    assert "- url: `http://x`" in md and "| TTFT p50 | 100 | ms |" in md
