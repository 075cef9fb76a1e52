"""`vfleet sim`'s /metrics against a real vLLM 0.26 capture: the same family names, types, label
names and histogram buckets; the values are checked against the requests the tests send (the
capture's own values came from other traffic).

The capture (tests/data/metrics_qwen3_after_load.txt) comes from a Qwen3 engine started with
`--max-model-len 4096`, so the simulator under comparison runs with the same length: five token
histograms have buckets derived from it.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from conftest import DATA, SimProcess, start_sim
from httpclient import request

CAPTURE = (DATA / "metrics_qwen3_after_load.txt").read_text()
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')
# A prompt of ~75 tokens (4 bytes a token): more than two 16-token blocks, cached after one use.
SHARED_PROMPT = "The prefix cache should hold this long shared system prompt. " * 5
BLOCK = 16


# -- a small Prometheus text-format parser ---------------------------------------------------


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)  # family name -> type
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def vllm_types(self) -> dict[str, str]:
        return {k: v for k, v in self.types.items() if k.startswith("vllm:")}

    def label_names(self) -> dict[str, set[frozenset[str]]]:
        out: dict[str, set[frozenset[str]]] = {}
        for name, labels, _ in self.samples:
            if name.startswith("vllm:"):
                out.setdefault(name, set()).add(frozenset(labels))
        return out

    def buckets(self, family: str) -> list[str]:
        return [lbl["le"] for n, lbl, _ in self.samples if n == f"{family}_bucket"]

    def value(self, name: str, **labels: str) -> float:
        found = [
            v
            for n, lbl, v in self.samples
            if n == name and all(lbl.get(k) == want for k, want in labels.items())
        ]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]


def parse(text: str) -> Exposition:
    exp = Exposition()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                assert parts[2] not in exp.types, f"duplicate TYPE for {parts[2]}"
                exp.types[parts[2]] = parts[3]
            continue
        m = SAMPLE.match(line)
        assert m is not None, f"unparsable sample line: {line!r}"
        raw = m.group(2) or ""
        labels = dict(LABEL.findall(raw))
        assert LABEL.sub("", raw) == "", f"unparsable labels: {line!r}"
        exp.samples.append((m.group(1), labels, float(m.group(3))))
    return exp


def test_parser_reads_the_capture() -> None:
    cap = parse(CAPTURE)
    assert cap.vllm_types()["vllm:time_to_first_token_seconds"] == "histogram"
    assert cap.value("vllm:request_success_total", finished_reason="length") == 773.0
    info = [lbl for n, lbl, _ in cap.samples if n == "vllm:cache_config_info"]
    assert info[0]["kv_cache_dtype_skip_layers"] == "[]"
    assert len(info[0]) == 29


# -- HTTP ------------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[dict[str, object]]:
    lines = [ln[6:] for ln in raw.decode().split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


@dataclass
class Traffic:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, usage: dict[str, int]) -> None:
        self.requests += 1
        self.prompt_tokens += usage["prompt_tokens"]
        self.completion_tokens += usage["completion_tokens"]


def send_traffic(url: str) -> Traffic:
    t = Traffic()
    for i, prompt in enumerate(["Hello there", "Tell me a story about a fox", "Why is the sky"]):
        status, body = request(
            url,
            "POST",
            "/v1/completions",
            {"model": "qwen3-rand", "prompt": prompt, "max_tokens": 3 + i, "ignore_eos": True},
        )
        assert status == 200, body
        t.add(json.loads(body)["usage"])
    status, body = request(
        url,
        "POST",
        "/v1/chat/completions",
        {
            "model": "qwen3-rand",
            "messages": [{"role": "user", "content": "Stream a short answer."}],
            "max_tokens": 6,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200, body
    events = sse_events(body)
    usage = events[-1]["usage"]
    assert isinstance(usage, dict)
    t.add(usage)
    for _ in range(2):  # the second use of the long prompt hits the prefix cache
        status, body = request(
            url,
            "POST",
            "/v1/completions",
            {"prompt": SHARED_PROMPT, "max_tokens": 4, "ignore_eos": True},
        )
        assert status == 200, body
        t.add(json.loads(body)["usage"])
    return t


@dataclass
class Scraped:
    exp: Exposition
    traffic: Traffic
    content_type: str


def scrape(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read().decode(), resp.getheader("content-type") or ""
    finally:
        conn.close()


def idle_metrics(sp: SimProcess) -> tuple[Exposition, str]:
    """Scrape until no request runs (bounded): a response may precede the engine's bookkeeping."""
    deadline = time.monotonic() + 5
    while True:
        text, ctype = scrape(sp.url)
        exp = parse(text)
        running = exp.value("vllm:num_requests_running")
        if running == 0 or time.monotonic() > deadline:
            return exp, ctype
        time.sleep(0.05)


@pytest.fixture(scope="module")
def scraped() -> Iterator[Scraped]:
    sp = start_sim(
        "--model",
        "/models/qwen3",
        "--served-model-name",
        "qwen3-rand",
        "--profile",
        "instant",
        "--max-model-len",
        "4096",
    )
    try:
        traffic = send_traffic(sp.url)
        exp, ctype = idle_metrics(sp)
        yield Scraped(exp, traffic, ctype)
    finally:
        sp.stop()


# -- names, types, labels, buckets ------------------------------------------------------------


def test_every_captured_family_has_the_same_type(scraped: Scraped) -> None:
    want = parse(CAPTURE).vllm_types()
    got = scraped.exp.vllm_types()
    assert len(want) == 66
    missing = sorted(set(want) - set(got))
    assert not missing, f"families missing from the sim: {missing}"
    wrong = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert not wrong, f"(capture, sim) types differ: {wrong}"


def test_every_captured_sample_has_the_same_label_names(scraped: Scraped) -> None:
    want = parse(CAPTURE).label_names()
    got = scraped.exp.label_names()
    want.pop("vllm:cache_config_info")
    missing = sorted(set(want) - set(got))
    assert not missing, f"samples missing from the sim: {missing}"
    wrong = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert not wrong, f"(capture, sim) label names differ: {wrong}"


def test_engine_and_model_name_label_values(scraped: Scraped) -> None:
    for name, labels, _ in scraped.exp.samples:
        if name.startswith("vllm:") and name != "vllm:cache_config_info":
            assert labels["engine"] == "0", name
            assert labels["model_name"] == "qwen3-rand", name


def test_cache_config_info_labels(scraped: Scraped) -> None:
    (want,) = parse(CAPTURE).label_names()["vllm:cache_config_info"]
    (got,) = scraped.exp.label_names()["vllm:cache_config_info"]
    assert "model_name" not in got
    assert got <= want, f"labels vLLM does not have: {sorted(got - want)}"
    assert {"engine", "block_size", "num_gpu_blocks", "enable_prefix_caching"} <= got
    (labels,) = [lbl for n, lbl, _ in scraped.exp.samples if n == "vllm:cache_config_info"]
    assert labels["block_size"] == "16"
    assert labels["num_gpu_blocks"] == "8192"
    assert labels["enable_prefix_caching"] == "True"
    assert scraped.exp.value("vllm:cache_config_info") == 1.0


def test_histogram_buckets_equal_the_capture(scraped: Scraped) -> None:
    cap = parse(CAPTURE)
    hists = [k for k, v in cap.vllm_types().items() if v == "histogram"]
    assert len(hists) == 15
    for name in hists:
        want = cap.buckets(name)
        assert want[-1] == "+Inf"
        assert scraped.exp.buckets(name) == want, name


def test_metrics_content_type(scraped: Scraped) -> None:
    assert scraped.content_type.startswith("text/plain; version=0.0.4")


def test_token_histogram_buckets_follow_max_model_len() -> None:
    # vLLM builds these buckets with build_1_2_5_buckets(max_model_len): 1, 2, 5, 10, ... up to
    # max_model_len. The capture (max_model_len 4096) shows 1 .. 2000.
    sp = start_sim("--model", "m", "--profile", "instant", "--max-model-len", "512")
    try:
        exp = parse(scrape(sp.url)[0])
    finally:
        sp.stop()
    want = ["1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "500.0", "+Inf"]
    for name in (
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:request_max_num_generation_tokens",
        "vllm:request_params_max_tokens",
        "vllm:request_prefill_kv_computed_tokens",
    ):
        assert exp.buckets(name) == want, name


# -- values after traffic ---------------------------------------------------------------------


def test_token_counters_match_the_responses(scraped: Scraped) -> None:
    exp, t = scraped.exp, scraped.traffic
    assert t.requests == 6
    assert exp.value("vllm:prompt_tokens_total") > 0
    assert exp.value("vllm:prompt_tokens_total") == t.prompt_tokens
    assert exp.value("vllm:generation_tokens_total") == t.completion_tokens
    assert exp.value("vllm:request_generation_tokens_sum") == t.completion_tokens
    assert exp.value("vllm:request_prompt_tokens_sum") == t.prompt_tokens


def test_request_counts(scraped: Scraped) -> None:
    exp, n = scraped.exp, scraped.traffic.requests
    assert exp.value("vllm:request_success_total", finished_reason="length") == n
    for reason in ("stop", "abort", "error", "repetition"):
        assert exp.value("vllm:request_success_total", finished_reason=reason) == 0, reason
    for hist in (
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
        "request_params_max_tokens",
    ):
        assert exp.value(f"vllm:{hist}_count") == n, hist
        assert exp.value(f"vllm:{hist}_bucket", le="+Inf") == n, hist


def test_prefix_cache_counters_after_a_repeat(scraped: Scraped) -> None:
    exp = scraped.exp
    hits = exp.value("vllm:prefix_cache_hits_total")
    # The repeat reuses every full block of the shared prompt but the one holding its last token.
    assert hits >= 2 * BLOCK
    assert hits % BLOCK == 0
    assert exp.value("vllm:prefix_cache_queries_total") == scraped.traffic.prompt_tokens
    assert exp.value("vllm:prompt_tokens_by_source_total", source="local_cache_hit") == hits
    assert exp.value("vllm:prompt_tokens_cached_total") == hits
    computed = exp.value("vllm:prompt_tokens_by_source_total", source="local_compute")
    assert computed + hits == scraped.traffic.prompt_tokens


def test_gauges_when_idle(scraped: Scraped) -> None:
    exp = scraped.exp
    assert exp.value("vllm:num_requests_running") == 0
    assert exp.value("vllm:num_requests_waiting") == 0
    assert 0.0 <= exp.value("vllm:kv_cache_usage_perc") <= 1.0
    assert exp.value("vllm:engine_sleep_state", sleep_state="awake") == 1.0
    assert exp.value("vllm:engine_sleep_state", sleep_state="weights_offloaded") == 0.0


def test_histogram_buckets_are_cumulative(scraped: Scraped) -> None:
    exp = scraped.exp
    for name, kind in exp.vllm_types().items():
        if kind != "histogram":
            continue
        counts = [v for n, _, v in exp.samples if n == f"{name}_bucket"]
        assert counts == sorted(counts), name
        assert counts[-1] == exp.value(f"{name}_count"), name
