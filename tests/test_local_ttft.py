"""The local autoscaler's latency input: p90 time to first token from the engines' own
`vllm:time_to_first_token_seconds` histograms (a real vLLM 0.26 capture and a live simulator)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from conftest import DATA, SimProcess
from httpclient import request
from vfleet.autoscale import ScalePolicy
from vfleet.local import ttft
from vfleet.local.scaler import Load, ModelScaler


def test_p90_of_a_real_vllm_capture_interpolates_inside_its_bucket() -> None:
    buckets = ttft.parse_buckets((DATA / "metrics_qwen3_after_load.txt").read_text())
    assert buckets[math.inf] == 773 and buckets[0.06] == 568 and buckets[0.08] == 764
    # rank 0.9 x 773 = 695.7 lies in (0.06, 0.08], 127.7 of its 196 observations in
    assert ttft.quantile(0.9, buckets) == pytest.approx(0.06 + 0.02 * 127.7 / 196)


def test_no_observation_has_no_quantile() -> None:
    assert ttft.quantile(0.9, {}) is None
    assert ttft.quantile(0.9, {0.1: 0.0, math.inf: 0.0}) is None


def test_increase_since_last_look_and_after_a_restart() -> None:
    before = {0.1: 5.0, 1.0: 10.0, math.inf: 10.0}
    now = {0.1: 5.0, 1.0: 14.0, math.inf: 16.0}
    assert ttft.increase(before, now) == {0.1: 0.0, 1.0: 4.0, math.inf: 6.0}
    restarted = {0.1: 1.0, 1.0: 1.0, math.inf: 1.0}  # counters went down: all of it is new
    assert ttft.increase(now, restarted) == restarted


def test_scaler_reads_only_requests_finished_since_the_last_sample() -> None:
    s = ModelScaler("chat", ("chat",), ScalePolicy(ttft_p90_s=0.5), desired=1)
    slow = {0.1: 0.0, 1.0: 0.0, 10.0: 10.0, math.inf: 10.0}  # ten requests of 1-10 s
    assert s.ttft_p90([Load(0, 0, 0.0, "http://a", slow)]) == pytest.approx(1.0 + 9.0 * 0.9)
    fast = {0.1: 10.0, 1.0: 10.0, 10.0: 20.0, math.inf: 20.0}  # then ten more under 0.1 s
    assert s.ttft_p90([Load(0, 0, 0.0, "http://a", fast)]) == pytest.approx(0.09)
    assert s.ttft_p90([Load(0, 0, 0.0, "http://a", fast)]) is None  # nothing new


def test_a_live_simulator_exports_what_the_scaler_reads(
    sim_factory: Callable[..., SimProcess],
) -> None:
    sim = sim_factory("--model", "m", "--profile", "instant")
    body = {"model": "m", "prompt": "hello", "max_tokens": 2}
    for _ in range(3):
        assert request(sim.url, "POST", "/v1/completions", body)[0] == 200
    buckets = ttft.parse_buckets(request(sim.url, "GET", "/metrics")[1].decode())
    assert buckets[math.inf] == 3
    p90 = ttft.quantile(0.9, buckets)
    assert p90 is not None and 0 <= p90 < 1.0
