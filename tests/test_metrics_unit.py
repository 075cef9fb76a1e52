"""EngineMetrics alone: histogram `le` semantics, counters from steps, the exposition text."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.prom import Histogram, fmt
from vfleet.sim.metrics import (
    FAMILIES,
    FINISH_REASONS,
    LATENCY_BUCKETS,
    TTFT_BUCKETS,
    EngineGauges,
    EngineMetrics,
    buckets_125,
)
from vfleet.sim.profiles import custom_profile
from vfleet.sim.scheduler import Scheduler, SchedulerConfig, Sequence, StepOutput

# vLLM 0.26's token-count buckets for max_model_len 4096, as in the capture.
TOKEN_BUCKETS_4096 = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
GAUGES = EngineGauges(running=3, waiting=2, kv_usage=0.25, sleep_level=0)


def metrics(max_loras: int = 4) -> EngineMetrics:
    info = {"block_size": "16", "num_gpu_blocks": "64"}
    return EngineMetrics("demo", info, 1700000000.0, max_loras=max_loras)


def parse(
    text: bytes,
) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """(family -> type, (sample name, labels) -> value); fails on any malformed line."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"malformed sample line {line!r}"
            labels = frozenset(LABEL.findall(m.group(2) or ""))
            key = (m.group(1), labels)
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(m.group(3))
    return types, samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **kw: str):
    labels = frozenset({"engine": "0", "model_name": "demo", **kw}.items())
    return samples[(f"vllm:{name}", labels)]


def buckets(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str):
    out = {}
    for (n, labels), v in samples.items():
        if n == f"vllm:{name}_bucket":
            out[float(dict(labels)["le"])] = v
    return dict(sorted(out.items()))


# -- Histogram ----------------------------------------------------------------------------------


def test_value_equal_to_a_bound_counts_in_that_bucket() -> None:
    h = Histogram((1.0, 2.0, 5.0))
    for v in (0.0, 1.0, 1.0000001, 2.0, 5.0, 5.5):
        h.observe(v)
    # Buckets: (-inf, 1], (1, 2], (2, 5], (5, +inf).
    assert h.counts == [2, 2, 1, 1]
    assert h.count == 6
    assert h.total == pytest.approx(14.5000001)


def test_empty_histogram() -> None:
    h = Histogram((1.0,))
    assert h.counts == [0, 0]
    assert h.count == 0
    assert h.total == 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 10_000.0, allow_nan=False), max_size=40))
def test_rendered_buckets_are_cumulative_le_counts(values: list[float]) -> None:
    m = metrics()
    hist = m.hists["e2e_request_latency_seconds"]
    for v in values:
        hist.observe(v)
    _, samples = parse(m.render(GAUGES, 0, 0))
    got = buckets(samples, "e2e_request_latency_seconds")
    assert list(got) == [*LATENCY_BUCKETS, math.inf]
    for le, n in got.items():
        assert n == sum(1 for v in values if v <= le)
    counts = list(got.values())
    assert counts == sorted(counts)
    assert value(samples, "e2e_request_latency_seconds_count") == len(values)
    assert value(samples, "e2e_request_latency_seconds_sum") == pytest.approx(sum(values))


# -- fmt ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "text"),
    [
        (0, "0.0"),
        (1, "1.0"),
        (0.25, "0.25"),
        (2560.0, "2560.0"),
        (123456.0, "123456.0"),
        (1234567.0, "1.234567e+06"),
        (1700000000.5, "1.7000000005e+09"),
        (float("inf"), "+Inf"),
        (-3.5, "-3.5"),
    ],
)
def test_fmt_writes_values_like_the_prometheus_client(v: float, text: str) -> None:
    assert fmt(v) == text
    assert float(fmt(v)) == v


# -- exposition ---------------------------------------------------------------------------------


def test_lora_info_is_exported_only_with_lora_enabled() -> None:
    with_lora, _ = parse(metrics(max_loras=4).render(GAUGES, 0, 0))
    without, _ = parse(metrics(max_loras=0).render(GAUGES, 0, 0))
    assert with_lora["vllm:lora_requests_info"] == "gauge"
    assert "vllm:lora_requests_info" not in without
    assert set(with_lora) - set(without) == {"vllm:lora_requests_info"}


def test_token_buckets_follow_max_model_len() -> None:
    assert buckets_125(4096) == TOKEN_BUCKETS_4096
    assert buckets_125(512) == (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)
    assert buckets_125(1) == (1.0,)
    m = EngineMetrics("demo", {}, 0.0, max_model_len=512)
    assert m.hists["request_prompt_tokens"].bounds == buckets_125(512)


def test_render_lists_every_family_with_its_type() -> None:
    types, samples = parse(metrics().render(GAUGES, 0, 0))
    for name, fam in FAMILIES.items():
        if fam.kind == "counter":
            assert types[f"vllm:{name}_total"] == "counter"
            assert types[f"vllm:{name}_created"] == "gauge"
        elif fam.kind == "histogram":
            assert types[f"vllm:{name}"] == "histogram"
            assert types[f"vllm:{name}_created"] == "gauge"
            assert value(samples, f"{name}_count") == 0
            assert value(samples, f"{name}_sum") == 0
            assert set(buckets(samples, name).values()) == {0.0}
        else:
            assert types[f"vllm:{name}"] == "gauge"
    assert len(types) == sum(2 if f.kind != "gauge" else 1 for f in FAMILIES.values())
    # Every sample belongs to a declared family.
    declared = set(types)
    for sample_name, _ in samples:
        base = re.sub(r"_(bucket|count|sum)$", "", sample_name)
        assert sample_name in declared or base in declared, sample_name


def test_render_gauges() -> None:
    g = EngineGauges(
        running=3,
        waiting=2,
        kv_usage=0.25,
        sleep_level=1,
        running_loras=("a", "b"),
        waiting_loras=("c",),
    )
    m = EngineMetrics("demo", {"block_size": "16"}, 1700000000.0, max_loras=4)
    _, s = parse(m.render(g, 0, 0))
    assert value(s, "num_requests_running") == 3
    assert value(s, "num_requests_waiting") == 2
    assert value(s, "num_requests_waiting_by_reason", reason="capacity") == 2
    assert value(s, "num_requests_waiting_by_reason", reason="deferred") == 0
    assert value(s, "kv_cache_usage_perc") == 0.25
    assert value(s, "engine_sleep_state", sleep_state="awake") == 0
    assert value(s, "engine_sleep_state", sleep_state="weights_offloaded") == 1
    assert value(s, "engine_sleep_state", sleep_state="discard_all") == 0
    lora = value(
        s,
        "lora_requests_info",
        max_lora="4",
        running_lora_adapters="a,b",
        waiting_lora_adapters="c",
    )
    assert lora == 1
    assert s[("vllm:cache_config_info", frozenset({("engine", "0"), ("block_size", "16")}))] == 1
    assert value(s, "num_preemptions_created") == 1700000000.0


def test_awake_engine_reports_awake() -> None:
    _, s = parse(metrics().render(GAUGES, 0, 0))
    assert value(s, "engine_sleep_state", sleep_state="awake") == 1
    assert value(s, "engine_sleep_state", sleep_state="weights_offloaded") == 0


def test_label_values_are_escaped() -> None:
    m = EngineMetrics('a"b\\c\nd', {}, 0.0)
    text = m.render(GAUGES, 0, 0).decode()
    assert 'model_name="a\\"b\\\\c\\nd"' in text
    assert all(SAMPLE.match(line) for line in text.splitlines() if not line.startswith("#"))


def test_prefix_cache_counters_come_from_render_arguments() -> None:
    m = metrics()
    _, s = parse(m.render(GAUGES, 120, 48))
    assert value(s, "prefix_cache_queries_total") == 120
    assert value(s, "prefix_cache_hits_total") == 48
    _, s = parse(m.render(GAUGES, 130, 48))
    assert value(s, "prefix_cache_queries_total") == 130


def test_observe_params() -> None:
    m = metrics()
    m.observe_params(2, 100)
    _, s = parse(m.render(GAUGES, 0, 0))
    assert buckets(s, "request_params_n")[1.0] == 0
    assert buckets(s, "request_params_n")[2.0] == 1
    assert buckets(s, "request_params_max_tokens")[50.0] == 0
    assert buckets(s, "request_params_max_tokens")[100.0] == 1


# -- observing a real workload ------------------------------------------------------------------


def drive(
    seqs: list[Sequence], cfg: SchedulerConfig, abort_after: int | None = None
) -> tuple[EngineMetrics, Scheduler, list[StepOutput]]:
    sched = Scheduler(cfg, custom_profile(0.01, 0.001, 0.0001, 0.0))
    m = metrics()
    for s in seqs:
        sched.add(s)
    outs: list[StepOutput] = []
    t = 0.0
    while sched.has_work:
        assert len(outs) < 10_000
        out = sched.step(t)
        t += out.duration_s
        m.observe_step(out)
        outs.append(out)
        if abort_after is not None and len(outs) == abort_after:
            for s in seqs:
                if sched.abort(s, t):
                    m.observe_finished(s)
    return m, sched, outs


def test_counters_and_histograms_follow_a_workload() -> None:
    cfg = SchedulerConfig(num_gpu_blocks=12, block_size=4, max_model_len=40, max_num_seqs=4)
    prompt = list(range(12))
    seqs = [Sequence(list(prompt), 20, 0.0, seed=i) for i in range(3)]
    seqs += [
        Sequence(list(prompt), 25, 0.0, eos_after=5),
        Sequence([9] * 10, 0, 0.0),
        Sequence([8] * 3, 20, 0.0, stop=(b"fox",)),
    ]
    m, sched, outs = drive(seqs, cfg)
    assert sched.preemptions_total > 0
    _, s = parse(m.render(GAUGES, sched.prefix_queries, sched.prefix_hits))

    gen = sum(len(s.output) for s in seqs)
    assert value(s, "generation_tokens_total") == gen
    assert value(s, "num_preemptions_total") == sched.preemptions_total
    assert value(s, "prompt_tokens_total") == sum(len(s.prompt) for s in seqs)
    cached = sum(s.cached_prompt_tokens for s in seqs)
    assert value(s, "prompt_tokens_cached_total") == cached
    assert value(s, "prompt_tokens_by_source_total", source="local_cache_hit") == cached
    computed = sum(len(s.prompt) for s in seqs) - cached
    assert value(s, "prompt_tokens_by_source_total", source="local_compute") == computed
    assert value(s, "prompt_tokens_by_source_total", source="external_kv_transfer") == 0
    reasons = {
        r: sum(1 for q in seqs if q.finish is not None and q.finish.value == r)
        for r in FINISH_REASONS
    }
    assert reasons["stop"] == 3
    assert reasons["length"] == 3
    for r, n in reasons.items():
        assert value(s, "request_success_total", finished_reason=r) == n

    steps = [o for o in outs if o.num_scheduled_tokens]
    assert value(s, "iteration_tokens_total_count") == len(steps)
    assert value(s, "iteration_tokens_total_sum") == sum(o.num_scheduled_tokens for o in steps)
    assert value(s, "time_to_first_token_seconds_count") == len(seqs)
    ttft = sum(q.first_token_at - q.arrival for q in seqs)  # type: ignore[operator]
    assert value(s, "time_to_first_token_seconds_sum") == pytest.approx(ttft)
    with_tokens = sum(1 for q in seqs if q.output)
    assert value(s, "inter_token_latency_seconds_count") == gen - with_tokens
    for name in (
        "e2e_request_latency_seconds",
        "request_prompt_tokens",
        "request_queue_time_seconds",
    ):
        assert value(s, f"{name}_count") == len(seqs)
    e2e = sum(q.finished_at - q.arrival for q in seqs)  # type: ignore[operator]
    assert value(s, "e2e_request_latency_seconds_sum") == pytest.approx(e2e)
    assert value(s, "request_generation_tokens_sum") == gen
    assert value(s, "request_prefill_kv_computed_tokens_sum") == computed
    assert value(s, "request_time_per_output_token_seconds_count") == sum(
        1 for q in seqs if len(q.output) > 1
    )
    assert value(s, "prefix_cache_queries_total") == sched.prefix_queries
    assert value(s, "prefix_cache_hits_total") == sched.prefix_hits == cached
    for name, fam in FAMILIES.items():
        if fam.kind == "histogram":
            counts = list(buckets(s, name).values())
            assert counts == sorted(counts), name
            assert counts[-1] == value(s, f"{name}_count"), name


def test_ttft_lands_in_the_le_bucket_of_its_value() -> None:
    # One step of exactly 0.02 s (a TTFT bucket bound) produces the first token.
    seq = Sequence([1] * 4, 1, 0.0)
    sched = Scheduler(
        SchedulerConfig(num_gpu_blocks=4, block_size=4, max_model_len=16),
        custom_profile(0.02, 0.0, 0.0, 0.0),
    )
    m = metrics()
    sched.add(seq)
    m.observe_step(sched.step(0.0))
    assert seq.first_token_at == 0.02
    _, s = parse(m.render(GAUGES, 0, 0))
    b = buckets(s, "time_to_first_token_seconds")
    assert 0.02 in TTFT_BUCKETS
    assert b[0.01] == 0
    assert b[0.02] == 1


def test_step_and_request_samples_on_bounds_land_in_their_le_bucket() -> None:
    # Two 0.5 s steps: TTFT, ITL, prefill, decode and TPOT are 0.5 s, e2e is 1.0 s; 5 prompt
    # tokens and 2 generated ones. Every one of these values is a bucket bound.
    seq = Sequence([1] * 5, 2, 0.0)
    sched = Scheduler(
        SchedulerConfig(num_gpu_blocks=4, block_size=4, max_model_len=16),
        custom_profile(0.5, 0.0, 0.0, 0.0),
    )
    m = metrics()
    sched.add(seq)
    t = 0.0
    while sched.has_work:
        out = sched.step(t)
        m.observe_step(out)
        t += out.duration_s
    assert (seq.first_token_at, seq.finished_at) == (0.5, 1.0)
    _, s = parse(m.render(GAUGES, 0, 0))
    for name, v in [
        ("time_to_first_token_seconds", 0.5),
        ("inter_token_latency_seconds", 0.5),
        ("request_time_per_output_token_seconds", 0.5),
        ("request_prefill_time_seconds", 0.5),
        ("request_decode_time_seconds", 0.5),
        ("e2e_request_latency_seconds", 1.0),
        ("request_inference_time_seconds", 1.0),
        ("request_prompt_tokens", 5.0),
        ("request_generation_tokens", 2.0),
        ("request_max_num_generation_tokens", 2.0),
        ("request_prefill_kv_computed_tokens", 5.0),
    ]:
        b = buckets(s, name)
        bounds = list(b)
        below = bounds[bounds.index(v) - 1]
        assert (b[below], b[v]) == (0, 1), name
        assert value(s, f"{name}_sum") == v, name


def test_aborted_requests_are_counted() -> None:
    cfg = SchedulerConfig(num_gpu_blocks=16, block_size=4, max_model_len=64, max_num_seqs=1)
    seqs = [Sequence([1] * 4, 30, 0.0), Sequence([2] * 4, 30, 0.0)]
    m, _, _ = drive(seqs, cfg, abort_after=3)
    _, s = parse(m.render(GAUGES, 0, 0))
    assert value(s, "request_success_total", finished_reason="abort") == 2
    assert value(s, "e2e_request_latency_seconds_count") == 2
    # Only the running one got tokens.
    assert value(s, "generation_tokens_total") == 3
    assert value(s, "time_to_first_token_seconds_count") == 1


def test_aborted_running_request_records_non_negative_durations() -> None:
    """An aborted sequence ends at the abort time: no zero e2e, no negative phase times."""
    cfg = SchedulerConfig(num_gpu_blocks=16, block_size=4, max_model_len=64)
    seq = Sequence([1] * 4, 30, 0.0)
    m, _, _ = drive([seq], cfg, abort_after=3)
    assert seq.first_token_at is not None and seq.first_token_at > 0
    for name in (
        "e2e_request_latency_seconds",
        "request_inference_time_seconds",
        "request_decode_time_seconds",
        "request_prefill_time_seconds",
        "request_queue_time_seconds",
    ):
        assert m.hists[name].total >= 0, name
    assert m.hists["e2e_request_latency_seconds"].total >= seq.first_token_at
