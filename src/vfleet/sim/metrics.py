"""vLLM-compatible Prometheus metrics for the simulator.

Names, types, labels and histogram buckets are those vLLM 0.26 exposes (checked against a capture
from a real engine by the tests). Written by hand rather than with prometheus_client because the
engine observes one sample per generated token, and this keeps each observation to a bisect and
two additions on the hot path. Values are in the simulator's modelled seconds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vfleet.prom import Histogram, fmt, labels
from vfleet.sim.scheduler import Sequence, StepOutput


def buckets_125(max_value: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value`: vLLM's token-count buckets."""
    out: list[float] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return tuple(out)
            out.append(float(v))
        exp += 1


ITERATION_BUCKETS = (
    1.0,
    8.0,
    16.0,
    32.0,
    64.0,
    128.0,
    256.0,
    512.0,
    1024.0,
    2048.0,
    4096.0,
    8192.0,
    16384.0,
)
N_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # "gauge", "counter" or "histogram"
    help: str


FAMILIES = {
    f.name: f
    for f in (
        Family("num_requests_running", "gauge", "Number of requests in model execution batches."),
        Family("num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
        Family("num_requests_waiting_by_reason", "gauge", "Number of waiting requests by reason."),
        Family("engine_sleep_state", "gauge", "Engine sleep state."),
        Family("kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
        Family("lora_requests_info", "gauge", "Running stats on lora requests."),
        Family("cache_config_info", "gauge", "Information of the LLMEngine CacheConfig"),
        Family("prefix_cache_queries", "counter", "Prefix cache queries, in queried tokens."),
        Family("prefix_cache_hits", "counter", "Prefix cache hits, in cached tokens."),
        Family("external_prefix_cache_queries", "counter", "External prefix cache queries."),
        Family("external_prefix_cache_hits", "counter", "External prefix cache hits."),
        Family("mm_cache_queries", "counter", "Multi-modal cache queries."),
        Family("mm_cache_hits", "counter", "Multi-modal cache hits."),
        Family("num_preemptions", "counter", "Cumulative number of preemption from the engine."),
        Family("prompt_tokens", "counter", "Number of prefill tokens processed."),
        Family("prompt_tokens_by_source", "counter", "Number of prompt tokens by source."),
        Family("prompt_tokens_cached", "counter", "Number of cached prompt tokens."),
        Family("generation_tokens", "counter", "Number of generation tokens processed."),
        Family("request_success", "counter", "Count of successfully processed requests."),
        Family("estimated_flops_per_gpu", "counter", "Estimated floating point operations."),
        Family("estimated_read_bytes_per_gpu", "counter", "Estimated bytes read from memory."),
        Family("estimated_write_bytes_per_gpu", "counter", "Estimated bytes written to memory."),
        Family("request_prompt_tokens", "histogram", "Number of prefill tokens processed."),
        Family("request_generation_tokens", "histogram", "Number of generation tokens processed."),
        Family("iteration_tokens_total", "histogram", "Number of tokens per engine_step."),
        Family("request_max_num_generation_tokens", "histogram", "Maximum requested tokens."),
        Family("request_params_n", "histogram", "Histogram of the n request parameter."),
        Family("request_params_max_tokens", "histogram", "The max_tokens request parameter."),
        Family("time_to_first_token_seconds", "histogram", "Time to first token in seconds."),
        Family("inter_token_latency_seconds", "histogram", "Inter-token latency in seconds."),
        Family("request_time_per_output_token_seconds", "histogram", "Time per output token."),
        Family("e2e_request_latency_seconds", "histogram", "E2e request latency in seconds."),
        Family("request_queue_time_seconds", "histogram", "Time spent in WAITING phase."),
        Family("request_inference_time_seconds", "histogram", "Time spent in RUNNING phase."),
        Family("request_prefill_time_seconds", "histogram", "Time spent in PREFILL phase."),
        Family("request_decode_time_seconds", "histogram", "Time spent in DECODE phase."),
        Family("request_prefill_kv_computed_tokens", "histogram", "New KV tokens in prefill."),
    )
}


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """Point-in-time engine state read when /metrics is scraped."""

    running: int
    waiting: int
    kv_usage: float
    sleep_level: int  # 0 awake, 1 weights offloaded, 2 everything discarded
    running_loras: tuple[str, ...] = ()
    waiting_loras: tuple[str, ...] = ()


@dataclass(slots=True)
class EngineMetrics:
    model_name: str
    cache_info: dict[str, str]
    created: float  # unix time of the `_created` samples
    max_model_len: int = 4096  # token-count histograms get buckets up to this
    max_loras: int = 0  # 0: LoRA disabled, and vllm:lora_requests_info is not exported
    counters: dict[str, float] = field(default_factory=dict)
    hists: dict[str, Histogram] = field(init=False)
    # The per-request histograms, bound once for the hot path.
    _e2e: Histogram = field(init=False)
    _queue: Histogram = field(init=False)
    _inference: Histogram = field(init=False)
    _prefill: Histogram = field(init=False)
    _decode: Histogram = field(init=False)
    _tpot: Histogram = field(init=False)
    _prompt_len: Histogram = field(init=False)
    _gen_len: Histogram = field(init=False)
    _max_gen: Histogram = field(init=False)
    _computed: Histogram = field(init=False)
    _params_n: Histogram = field(init=False)
    _params_max: Histogram = field(init=False)

    def __post_init__(self) -> None:
        tokens = buckets_125(self.max_model_len)
        buckets = {
            "request_prompt_tokens": tokens,
            "request_generation_tokens": tokens,
            "iteration_tokens_total": ITERATION_BUCKETS,
            "request_max_num_generation_tokens": tokens,
            "request_params_n": N_BUCKETS,
            "request_params_max_tokens": tokens,
            "time_to_first_token_seconds": TTFT_BUCKETS,
            "inter_token_latency_seconds": ITL_BUCKETS,
            "request_time_per_output_token_seconds": ITL_BUCKETS,
            "request_prefill_kv_computed_tokens": tokens,
        }
        self.hists = {
            name: Histogram(buckets.get(name, LATENCY_BUCKETS))
            for name, fam in FAMILIES.items()
            if fam.kind == "histogram"
        }
        h = self.hists
        self._e2e = h["e2e_request_latency_seconds"]
        self._queue = h["request_queue_time_seconds"]
        self._inference = h["request_inference_time_seconds"]
        self._prefill = h["request_prefill_time_seconds"]
        self._decode = h["request_decode_time_seconds"]
        self._tpot = h["request_time_per_output_token_seconds"]
        self._prompt_len = h["request_prompt_tokens"]
        self._gen_len = h["request_generation_tokens"]
        self._max_gen = h["request_max_num_generation_tokens"]
        self._computed = h["request_prefill_kv_computed_tokens"]
        self._params_n = h["request_params_n"]
        self._params_max = h["request_params_max_tokens"]

    def inc(self, key: str, v: float = 1.0) -> None:
        self.counters[key] = self.counters.get(key, 0.0) + v

    # -- recording --------------------------------------------------------------------------

    def observe_params(self, n: int, max_tokens: int) -> None:
        self._params_n.observe(n)
        self._params_max.observe(max_tokens)

    def observe_step(self, out: StepOutput) -> None:
        h = self.hists
        if out.num_scheduled_tokens:
            h["iteration_tokens_total"].observe(out.num_scheduled_tokens)
        if out.num_preempted:
            self.inc("num_preemptions", out.num_preempted)
        for seq in out.first_tokens:
            self._first_token(seq)
        itl = h["inter_token_latency_seconds"]
        if out.itl_common_count:
            itl.counts[bisect_left(itl.bounds, out.itl_common)] += out.itl_common_count
            itl.total += out.itl_common * out.itl_common_count
        for v in out.itl_other:
            itl.observe(v)
        if out.sampled:
            self.inc("generation_tokens", len(out.sampled))
        for seq in out.finished:
            self.observe_finished(seq)

    def _first_token(self, seq: Sequence) -> None:
        assert seq.first_token_at is not None
        self.hists["time_to_first_token_seconds"].observe(seq.first_token_at - seq.arrival)
        plen, cached = len(seq.prompt), seq.cached_prompt_tokens
        c = self.counters
        get = c.get
        c["prompt_tokens"] = get("prompt_tokens", 0.0) + plen
        c["prompt_tokens_cached"] = get("prompt_tokens_cached", 0.0) + cached
        c["source:local_cache_hit"] = get("source:local_cache_hit", 0.0) + cached
        c["source:local_compute"] = get("source:local_compute", 0.0) + plen - cached

    def observe_finished(self, seq: Sequence) -> None:
        assert seq.finish is not None
        self.inc("finished:" + seq.finish.value)
        if seq.max_tokens == 0 and seq.finish.value != "abort":
            self._first_token(seq)
        end = seq.finished_at if seq.finished_at is not None else seq.arrival
        start = seq.scheduled_at if seq.scheduled_at is not None else end
        first = seq.first_token_at if seq.first_token_at is not None else end
        gen = seq.n_out
        plen = len(seq.prompt)
        b = bisect_left
        # Histogram.observe, inlined: this runs for every request.
        for hist, v in (
            (self._e2e, end - seq.arrival),
            (self._queue, start - (seq.arrival if seq.queued_at is None else seq.queued_at)),
            (self._inference, end - start),
            (self._prefill, first - start),
            (self._decode, end - first),
            (self._prompt_len, plen),
            (self._gen_len, gen),
            (self._max_gen, seq.max_tokens),
            (self._computed, plen - seq.cached_prompt_tokens),
        ):
            hist.counts[b(hist.bounds, v)] += 1
            hist.total += v
        if gen > 1:
            self._tpot.observe((end - first) / (gen - 1))

    # -- exposition -------------------------------------------------------------------------

    def render(self, g: EngineGauges, prefix_queries: int, prefix_hits: int) -> bytes:
        self.counters["prefix_cache_queries"] = prefix_queries
        self.counters["prefix_cache_hits"] = prefix_hits
        return "".join(self._lines(g)).encode()

    def _lines(self, g: EngineGauges) -> Iterator[str]:
        base = {"engine": "0", "model_name": self.model_name}
        for name, fam in FAMILIES.items():
            if name == "lora_requests_info" and not self.max_loras:
                continue
            samples = list(self._samples(name, g))
            if fam.kind == "counter":
                yield from _family(f"{name}_total", "counter", fam.help, base, samples)
                created = [(lbl, self.created) for lbl, _ in samples]
                yield from _family(f"{name}_created", "gauge", fam.help, base, created)
            elif fam.kind == "histogram":
                yield from self._histogram(name, fam, base)
            elif name == "cache_config_info":  # vLLM labels it by engine only
                yield from _family(name, "gauge", fam.help, {"engine": "0"}, samples)
            else:
                yield from _family(name, "gauge", fam.help, base, samples)

    def _samples(self, name: str, g: EngineGauges) -> Iterator[tuple[dict[str, str], float]]:
        c = self.counters.get
        if name == "num_requests_running":
            yield {}, g.running
        elif name == "num_requests_waiting":
            yield {}, g.waiting
        elif name == "num_requests_waiting_by_reason":
            yield {"reason": "capacity"}, g.waiting
            yield {"reason": "deferred"}, 0
        elif name == "engine_sleep_state":
            for i, state in enumerate(SLEEP_STATES):
                yield (
                    {"sleep_state": state},
                    float((g.sleep_level == 0) if i == 0 else g.sleep_level == i),
                )
        elif name == "kv_cache_usage_perc":
            yield {}, g.kv_usage
        elif name == "lora_requests_info":
            yield (
                {
                    "max_lora": str(self.max_loras),
                    "running_lora_adapters": ",".join(g.running_loras),
                    "waiting_lora_adapters": ",".join(g.waiting_loras),
                },
                1.0,
            )
        elif name == "cache_config_info":
            yield self.cache_info, 1.0
        elif name == "prompt_tokens_by_source":
            for src in PROMPT_SOURCES:
                yield {"source": src}, c("source:" + src, 0.0)
        elif name == "request_success":
            for reason in FINISH_REASONS:
                yield {"finished_reason": reason}, c("finished:" + reason, 0.0)
        else:
            yield {}, c(name, 0.0)

    def _histogram(self, name: str, fam: Family, base: dict[str, str]) -> Iterator[str]:
        h = self.hists[name]
        yield f"# HELP vllm:{name} {fam.help}\n# TYPE vllm:{name} histogram\n"
        acc = 0
        for le, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
            acc += n
            yield f"vllm:{name}_bucket{labels({**base, 'le': fmt(le)})} {fmt(acc)}\n"
        lbl = labels(base)
        yield f"vllm:{name}_count{lbl} {fmt(acc)}\nvllm:{name}_sum{lbl} {fmt(h.total)}\n"
        yield from _family(f"{name}_created", "gauge", fam.help, base, [({}, self.created)])


def _family(
    name: str,
    kind: str,
    help_: str,
    base: dict[str, str],
    samples: Iterable[tuple[dict[str, str], float]],
) -> Iterator[str]:
    yield f"# HELP vllm:{name} {help_}\n# TYPE vllm:{name} {kind}\n"
    for extra, v in samples:
        yield f"vllm:{name}{labels({**base, **extra})} {fmt(v)}\n"
