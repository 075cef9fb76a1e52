"""The simulator caps requests as vLLM 0.26 does (issue 14, item 6), with vLLM's messages.

From vLLM's source (sampling_params._verify_num_sequences, envs.VLLM_MAX_N_SEQUENCES, default
16384): `n` outside 1..VLLM_MAX_N_SEQUENCES is a 400 BadRequestError naming no parameter, checked
when SamplingParams is built, after the prompts are measured. `best_of` was removed from vLLM's
requests (vllm-project/vllm#29090) and is ignored like any unknown field. `max_tokens` beyond the
context and prompts longer than max_model_len keep the messages recorded from vLLM 0.26
(tests/data/vllm_0.26_errors.json).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SimProcess, start_sim
from httpclient import Client, request

MSGS = [{"role": "user", "content": "hi"}]
N_CAP = (
    "n must be at most {cap}, got {n}. To increase this limit, set the "
    "VLLM_MAX_N_SEQUENCES environment variable."
)


def _bad(resp_error: dict[str, object], message: str, param: str | None = None) -> None:
    assert resp_error["type"] == "BadRequestError"
    assert resp_error["message"] == message
    assert resp_error["param"] == param


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_n_of_a_million_is_refused_at_once(gen_sim: SimProcess, path: str) -> None:
    c = Client(gen_sim.url)
    resp = c.post(path, {"model": "demo", "prompt": "hi", "messages": MSGS, "n": 1_000_000})
    assert resp.status == 400
    _bad(resp.error, N_CAP.format(cap=16384, n=1_000_000))
    # Still responsive: the request built nothing (it made the sim hang for 14.5 s before).
    out = c.post(path, {"model": "demo", "prompt": "hi", "messages": MSGS, "max_tokens": 2})
    assert out.status == 200


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_n_below_one(gen_sim: SimProcess, path: str) -> None:
    resp = Client(gen_sim.url).post(path, {"prompt": "hi", "messages": MSGS, "n": 0})
    assert resp.status == 400
    _bad(resp.error, "n must be at least 1, got 0.")


def test_the_n_cap_follows_vllm_max_n_sequences() -> None:
    sim = start_sim(
        "--model",
        "demo",
        "--profile",
        "instant",
        "--max-model-len",
        "512",
        env={"VLLM_MAX_N_SEQUENCES": "4"},
    )
    try:
        c = Client(sim.url)
        resp = c.post("/v1/completions", {"prompt": "hi", "n": 5, "max_tokens": 2})
        assert resp.status == 400
        _bad(resp.error, N_CAP.format(cap=4, n=5))
        out = c.post("/v1/completions", {"prompt": "hi", "n": 4, "max_tokens": 2})
        assert out.status == 200 and len(out.json()["choices"]) == 4
    finally:
        sim.stop()


def test_a_bad_vllm_max_n_sequences_stops_the_sim_with_one_line() -> None:
    with pytest.raises(AssertionError, match="VLLM_MAX_N_SEQUENCES must be an integer"):
        start_sim("--model", "demo", env={"VLLM_MAX_N_SEQUENCES": "lots"})


def test_best_of_is_ignored_like_vllm(gen_sim: SimProcess) -> None:
    out = Client(gen_sim.url).post(
        "/v1/completions", {"prompt": "hi", "best_of": 1_000_000, "max_tokens": 2}
    )
    assert out.status == 200 and len(out.json()["choices"]) == 1


def test_max_tokens_beyond_the_context(gen_sim: SimProcess) -> None:
    resp = Client(gen_sim.url).post("/v1/completions", {"prompt": "x", "max_tokens": 100000})
    assert resp.status == 400
    _bad(
        resp.error,
        "max_tokens=100000 cannot be greater than max_model_len=max_total_tokens="
        "512. Please request fewer output tokens. (parameter=max_tokens, "
        "value=100000)",
        "max_tokens",
    )


def test_a_prompt_longer_than_max_model_len(gen_sim: SimProcess) -> None:
    c = Client(gen_sim.url)
    resp = c.post("/v1/completions", {"prompt": list(range(1, 601)), "max_tokens": 4, "n": 10**6})
    assert resp.status == 400  # the prompt is measured before n is checked, as in vLLM
    _bad(
        resp.error,
        "This model's maximum context length is 512 tokens. However, you requested "
        "4 output tokens and your prompt contains 600 input tokens, for a total of "
        "604 tokens. Please reduce the length of the input prompt or the number of "
        "requested output tokens. (parameter=input_tokens, value=600)",
        "input_tokens",
    )
    # A long text prompt (2 MB) is refused as quickly, and the sim stays responsive.
    resp = c.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "w" * 2**21}]})
    assert resp.status == 400 and resp.error["param"] == "input_tokens"
    assert c.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}).status == 200


SAMPLING = st.fixed_dictionaries(
    {},
    optional={
        "n": st.one_of(st.integers(-3, 8), st.sampled_from([16385, 10**6, 10**12]), st.text()),
        "best_of": st.one_of(st.integers(-3, 10**9), st.none()),
        "max_tokens": st.one_of(st.integers(-3, 600), st.sampled_from([10**6]), st.none()),
        "prompt": st.one_of(st.text(max_size=64), st.lists(st.integers(0, 2**32), max_size=700)),
        "messages": st.just(MSGS),
        "stream": st.booleans(),
        "ignore_eos": st.booleans(),
    },
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=SAMPLING, chat=st.booleans())
def test_any_sampling_request_is_answered_or_refused_like_vllm(
    gen_sim: SimProcess, body: dict[str, object], chat: bool
) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    status, raw = request(gen_sim.url, "POST", path, body, timeout=10)
    assert status in (200, 400), raw[:300]
    if status == 400:
        err = json.loads(raw)["error"]
        assert list(err) == ["message", "type", "param", "code"] and err["code"] == 400
