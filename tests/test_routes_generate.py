"""End-to-end tests of the generate routes (/v1/completions, /v1/chat/completions) over HTTP.

Every test talks to a real `vfleet sim` process and checks the bodies vLLM 0.26 answers with.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import SimProcess, start_sim
from httpclient import Client

# The simulator's outputs cycle through this text (up to whitespace padding at the wrap); a stop
# string must cut the output just before its first occurrence.
FILLER = (
    "The quick brown fox jumps over the lazy dog while the simulated engine keeps streaming "
    "tokens at a steady pace, one step at a time, until the request is finished. "
)
MAX_LEN = 512  # gen_sim's --max-model-len
COMPLETION_KEYS = [
    "id",
    "object",
    "created",
    "model",
    "choices",
    "service_tier",
    "system_fingerprint",
    "usage",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
]
COMPLETION_CHOICE_KEYS = [
    "index",
    "text",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "prompt_logprobs",
    "prompt_token_ids",
    "routed_experts",
]
CHAT_KEYS = [
    "id",
    "object",
    "created",
    "model",
    "choices",
    "service_tier",
    "system_fingerprint",
    "usage",
    "prompt_logprobs",
    "prompt_token_ids",
    "prompt_text",
    "kv_transfer_params",
    "ec_transfer_params",
    "metrics",
]
CHAT_CHOICE_KEYS = [
    "index",
    "message",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "routed_experts",
]
MESSAGE = {
    "role": "assistant",
    "refusal": None,
    "annotations": None,
    "audio": None,
    "function_call": None,
    "reasoning": None,
}
STREAM_CHOICE_KEYS = [
    "index",
    "text",
    "logprobs",
    "finish_reason",
    "stop_reason",
    "prompt_token_ids",
    "token_ids",
]
USAGE_KEYS = ["prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"]
MSGS = [{"role": "user", "content": "Tell me about foxes."}]


@pytest.fixture(scope="module")
def gen(gen_sim: SimProcess) -> Client:
    return Client(gen_sim.url)


@pytest.fixture(scope="module")
def alias_sim() -> Iterator[SimProcess]:
    """Two served names for one model."""
    sp = start_sim(
        "--model",
        "/models/qwen",
        "--served-model-name",
        "first",
        "--served-model-name",
        "second",
        "--profile",
        "instant",
    )
    yield sp
    sp.stop()


def complete(gen: Client, **body: Any) -> dict[str, Any]:
    resp = gen.post("/v1/completions", {"model": "demo", **body})
    assert resp.status == 200, resp.body
    out: dict[str, Any] = resp.json()
    return out


def chat(gen: Client, **body: Any) -> dict[str, Any]:
    resp = gen.post("/v1/chat/completions", {"model": "demo", "messages": MSGS, **body})
    assert resp.status == 200, resp.body
    out: dict[str, Any] = resp.json()
    return out


def in_filler(text: str) -> bool:
    """True if `text` is a piece of the cycled filler (runs of spaces count as one)."""
    return " ".join(text.split()) in " ".join((FILLER * 8).split())


def tokenize_count(gen: Client, body: dict[str, Any]) -> int:
    resp = gen.post("/tokenize", body)
    assert resp.status == 200, resp.body
    count: int = resp.json()["count"]
    return count


# -- non-streaming ----------------------------------------------------------------------------


def test_completion_has_every_field(gen: Client) -> None:
    before = int(time.time())
    out = complete(gen, prompt="Hello world", max_tokens=5, ignore_eos=True)
    assert list(out) == COMPLETION_KEYS
    assert out["id"].startswith("cmpl-") and len(out["id"]) > len("cmpl-")
    assert out["object"] == "text_completion"
    assert before - 1 <= out["created"] <= time.time() + 1
    assert out["model"] == "demo"
    assert out["service_tier"] is None
    assert out["system_fingerprint"].startswith("vllm-0.26.0-")
    assert out["kv_transfer_params"] is None and out["metrics"] is None
    [choice] = out["choices"]
    assert list(choice) == COMPLETION_CHOICE_KEYS
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    assert all(choice[k] is None for k in COMPLETION_CHOICE_KEYS[5:])
    assert choice["text"] and in_filler(choice["text"])
    assert list(out["usage"]) == USAGE_KEYS
    assert out["usage"]["completion_tokens"] == 5
    assert out["usage"]["prompt_tokens"] == tokenize_count(gen, {"prompt": "Hello world"})
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 5
    assert out["usage"]["prompt_tokens_details"] is None


def test_chat_completion_has_every_field(gen: Client) -> None:
    out = chat(gen, max_tokens=7, ignore_eos=True)
    assert list(out) == CHAT_KEYS
    assert out["id"].startswith("chatcmpl-")
    assert out["object"] == "chat.completion"
    assert out["model"] == "demo"
    assert out["system_fingerprint"].startswith("vllm-0.26.0-")
    assert all(out[k] is None for k in CHAT_KEYS[8:])
    [choice] = out["choices"]
    assert list(choice) == CHAT_CHOICE_KEYS
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    assert choice["token_ids"] is None and choice["routed_experts"] is None
    msg = choice["message"]
    assert "tool_calls" not in msg  # omitted when empty
    assert {k: v for k, v in msg.items() if k != "content"} == MESSAGE
    assert msg["content"] and in_filler(msg["content"])
    use = out["usage"]
    assert list(use) == USAGE_KEYS
    assert use["completion_tokens"] == 7
    assert use["prompt_tokens"] == tokenize_count(gen, {"messages": MSGS})
    assert use["total_tokens"] == use["prompt_tokens"] + 7


def test_model_may_be_omitted(gen: Client) -> None:
    resp = gen.post("/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert resp.status == 200, resp.body
    assert resp.json()["model"] == "demo"
    resp = gen.post("/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})
    assert resp.status == 200, resp.body
    assert resp.json()["model"] == "demo"


def test_response_model_is_the_first_served_name(alias_sim: SimProcess) -> None:
    # vLLM answers with models.model_name(None) = the first served name, whichever alias was used.
    c = Client(alias_sim.url)
    for path, body in (
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": MSGS}),
    ):
        resp = c.post(path, {"model": "second", "max_tokens": 2, **body})
        assert resp.status == 200, resp.body
        assert resp.json()["model"] == "first", path


@pytest.mark.parametrize("max_tokens", [1, 3, 40])
def test_max_tokens_with_ignore_eos_is_exact(gen: Client, max_tokens: int) -> None:
    out = complete(gen, prompt="count", max_tokens=max_tokens, ignore_eos=True)
    assert out["usage"]["completion_tokens"] == max_tokens
    assert out["choices"][0]["finish_reason"] == "length"
    out = chat(gen, max_completion_tokens=max_tokens, ignore_eos=True)
    assert out["usage"]["completion_tokens"] == max_tokens
    assert out["choices"][0]["finish_reason"] == "length"


def test_completion_max_tokens_defaults_to_16(gen: Client) -> None:
    out = complete(gen, prompt="default length", ignore_eos=True)
    assert out["usage"]["completion_tokens"] == 16


def test_chat_without_max_tokens_may_fill_the_context(gen: Client) -> None:
    out = chat(gen, ignore_eos=True)
    use = out["usage"]
    assert use["total_tokens"] == MAX_LEN
    assert out["choices"][0]["finish_reason"] == "length"


def test_natural_end_is_stop_without_stop_reason(gen: Client) -> None:
    out = complete(gen, prompt="natural end", max_tokens=MAX_LEN - 10)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] is None
    assert out["usage"]["completion_tokens"] < MAX_LEN - 10


@pytest.mark.parametrize("stop", ["fox", "lazy", ["nothing-like-this", "lazy"]])
def test_stop_string_cuts_output(gen: Client, stop: str | list[str]) -> None:
    matched = stop if isinstance(stop, str) else stop[1]
    for out in (
        complete(gen, prompt="stop me", max_tokens=200, ignore_eos=True, stop=stop),
        chat(gen, max_tokens=200, ignore_eos=True, stop=stop),
    ):
        choice = out["choices"][0]
        text = choice["text"] if "text" in choice else choice["message"]["content"]
        assert choice["finish_reason"] == "stop", out
        assert choice["stop_reason"] == matched
        assert matched not in text
        assert in_filler(text + matched), text
        assert out["usage"]["completion_tokens"] < 200


def test_n_gives_indexed_choices(gen: Client) -> None:
    out = complete(gen, prompt="many", n=3, max_tokens=4, ignore_eos=True)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert out["usage"]["completion_tokens"] == 12
    assert out["usage"]["prompt_tokens"] == tokenize_count(gen, {"prompt": "many"})
    out = chat(gen, n=2, max_tokens=3, ignore_eos=True)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["usage"]["completion_tokens"] == 6
    assert out["usage"]["prompt_tokens"] == tokenize_count(gen, {"messages": MSGS})


def test_batched_string_prompts(gen: Client) -> None:
    prompts = ["first prompt", "the second one", "3"]
    out = complete(gen, prompt=prompts, max_tokens=2, ignore_eos=True, n=2)
    assert [c["index"] for c in out["choices"]] == list(range(6))
    assert all(c["finish_reason"] == "length" for c in out["choices"])
    counts = [tokenize_count(gen, {"prompt": p}) for p in prompts]
    assert out["usage"]["prompt_tokens"] == sum(counts)
    assert out["usage"]["completion_tokens"] == 12


def test_token_id_prompts(gen: Client) -> None:
    ids = gen.post("/tokenize", {"prompt": "hello there friend"}).json()["tokens"]
    out = complete(gen, prompt=ids, max_tokens=3, ignore_eos=True)
    assert len(out["choices"]) == 1
    assert out["usage"]["prompt_tokens"] == len(ids)
    out = complete(gen, prompt=[ids, ids[:1]], max_tokens=3, ignore_eos=True)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["usage"]["prompt_tokens"] == len(ids) + 1
    assert out["usage"]["completion_tokens"] == 6


def test_x_request_id_header_becomes_the_id(gen: Client) -> None:
    hdr = {"X-Request-Id": "my-trace-123"}
    resp = gen.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, headers=hdr)
    assert resp.json()["id"] == "cmpl-my-trace-123"
    resp = gen.post("/v1/chat/completions", {"messages": MSGS, "max_tokens": 2}, headers=hdr)
    assert resp.json()["id"] == "chatcmpl-my-trace-123"
    sse = gen.sse(
        "/v1/chat/completions", {"messages": MSGS, "max_tokens": 2, "stream": True}, headers=hdr
    )
    assert {e["id"] for e in sse.events} == {"chatcmpl-my-trace-123"}


def test_request_id_field_becomes_the_id(gen: Client) -> None:
    # Without the header vLLM uses the body's `request_id` (serving.py _base_request_id).
    out = complete(gen, prompt="hi", max_tokens=2, request_id="body-rid")
    assert out["id"] == "cmpl-body-rid"
    out = chat(gen, max_tokens=2, request_id="body-rid")
    assert out["id"] == "chatcmpl-body-rid"


def test_ids_are_fresh_per_request(gen: Client) -> None:
    ids = {complete(gen, prompt="x", max_tokens=1)["id"] for _ in range(3)}
    assert len(ids) == 3


def test_lora_adapter_name_is_echoed(gen: Client) -> None:
    resp = gen.post("/v1/load_lora_adapter", {"lora_name": "gen-lora", "lora_path": "/l/g"})
    assert resp.status == 200, resp.body
    try:
        assert complete(gen, model="gen-lora", prompt="x", max_tokens=2)["model"] == "gen-lora"
    finally:
        gen.post("/v1/unload_lora_adapter", {"lora_name": "gen-lora"})


# -- streaming --------------------------------------------------------------------------------


def test_completion_stream(gen: Client) -> None:
    body = {
        "model": "demo",
        "prompt": "stream it",
        "max_tokens": 20,
        "ignore_eos": True,
        "stream": True,
    }
    sse = gen.sse("/v1/completions", body)
    assert sse.done_last
    ev = sse.events
    assert len(ev) >= 2
    assert len({e["id"] for e in ev}) == 1 and ev[0]["id"].startswith("cmpl-")
    for e in ev:
        assert e["object"] == "text_completion" and e["model"] == "demo"
        [c] = e["choices"]
        assert c["index"] == 0
        assert "usage" not in e
    for e in ev[:-1]:
        assert list(e) == ["id", "object", "created", "model", "choices"]
        assert list(e["choices"][0]) == STREAM_CHOICE_KEYS
        assert e["choices"][0]["finish_reason"] is None
        assert e["choices"][0]["text"]
    last = ev[-1]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["choices"][0]["stop_reason"] is None
    assert last["system_fingerprint"].startswith("vllm-0.26.0-")
    text = "".join(e["choices"][0]["text"] for e in ev)
    full = complete(gen, prompt="stream it", max_tokens=20, ignore_eos=True)
    assert text == full["choices"][0]["text"]


def test_completion_stream_usage_chunk(gen: Client) -> None:
    body = {
        "prompt": "usage please",
        "max_tokens": 9,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sse = gen.sse("/v1/completions", body)
    assert sse.done_last
    *content, usage = sse.events
    assert usage["choices"] == []
    assert list(usage) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    ]
    prompt = tokenize_count(gen, {"prompt": "usage please"})
    assert usage["usage"] == {
        "prompt_tokens": prompt,
        "total_tokens": prompt + 9,
        "completion_tokens": 9,
    }
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    # With include_usage the fingerprint moves from the last content chunk to the usage chunk.
    assert all("system_fingerprint" not in e for e in content)
    assert all("usage" not in e for e in content)


def test_chat_stream(gen: Client) -> None:
    body = {"model": "demo", "messages": MSGS, "max_tokens": 12, "ignore_eos": True, "stream": True}
    sse = gen.sse("/v1/chat/completions", body)
    assert sse.done_last
    first, *rest = sse.events
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert first["prompt_token_ids"] is None and first["prompt_text"] is None
    assert rest
    for e in rest[:-1]:
        [c] = e["choices"]
        assert list(c) == ["index", "delta", "logprobs", "finish_reason", "token_ids"]
        assert c["finish_reason"] is None
        assert list(c["delta"]) == ["content"] and c["delta"]["content"]
        assert "system_fingerprint" not in e
    last = rest[-1]["choices"][0]
    assert last["finish_reason"] == "length" and last["stop_reason"] is None
    assert "role" not in last["delta"]
    assert rest[-1]["system_fingerprint"].startswith("vllm-0.26.0-")
    assert all("usage" not in e for e in sse.events)
    assert all(e["choices"] for e in sse.events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in rest)
    full = chat(gen, max_tokens=12, ignore_eos=True)
    assert text == full["choices"][0]["message"]["content"]


def test_chat_stream_usage_chunk(gen: Client) -> None:
    body = {
        "messages": MSGS,
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sse = gen.sse("/v1/chat/completions", body)
    assert sse.done_last
    usage = sse.events[-1]
    assert usage["choices"] == [] and usage["object"] == "chat.completion.chunk"
    prompt = tokenize_count(gen, {"messages": MSGS})
    assert usage["usage"] == {
        "prompt_tokens": prompt,
        "total_tokens": prompt + 5,
        "completion_tokens": 5,
    }
    assert usage["system_fingerprint"].startswith("vllm-0.26.0-")
    assert [e for e in sse.events if not e["choices"]] == [usage]


def test_chat_stream_continuous_usage(gen: Client) -> None:
    # continuous_usage_stats (with include_usage) puts `usage` on every chunk, vLLM-style.
    body = {
        "messages": MSGS,
        "max_tokens": 6,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    sse = gen.sse("/v1/chat/completions", body)
    assert sse.done_last
    assert all("usage" in e for e in sse.events), sse.events


def test_chat_stream_n_sends_all_role_chunks_first(gen: Client) -> None:
    # vLLM's first iteration emits one role chunk per choice before any content.
    body = {"messages": MSGS, "n": 3, "max_tokens": 6, "ignore_eos": True, "stream": True}
    sse = gen.sse("/v1/chat/completions", body)
    assert sse.done_last
    roles = [e["choices"][0]["index"] for e in sse.events[:3]]
    assert roles == [0, 1, 2]
    assert all(e["choices"][0]["delta"].get("role") == "assistant" for e in sse.events[:3])


def test_chat_stream_n_finishes_each_choice_once(gen: Client) -> None:
    body = {"messages": MSGS, "n": 2, "max_tokens": 6, "ignore_eos": True, "stream": True}
    sse = gen.sse("/v1/chat/completions", body)
    by_index: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for e in sse.events:
        [c] = e["choices"]
        by_index[c["index"]].append(c)
    for chunks in by_index.values():
        assert chunks[0]["delta"] == {"role": "assistant", "content": ""}
        assert sum(1 for c in chunks if "role" in c["delta"]) == 1
        reasons = [c["finish_reason"] for c in chunks]
        assert reasons[-1] == "length"
        assert reasons[:-1] == [None] * (len(reasons) - 1)


def test_completion_stream_batched_prompts(gen: Client) -> None:
    body = {"prompt": ["one", "two"], "n": 2, "max_tokens": 3, "ignore_eos": True, "stream": True}
    sse = gen.sse("/v1/completions", body)
    finals = sorted(
        e["choices"][0]["index"] for e in sse.events if e["choices"][0]["finish_reason"]
    )
    assert finals == [0, 1, 2, 3]


def test_stream_stop_string(gen: Client) -> None:
    body = {
        "prompt": "stream stop",
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
        "stop": "lazy",
    }
    sse = gen.sse("/v1/completions", body)
    text = "".join(e["choices"][0]["text"] for e in sse.events)
    assert "lazy" not in text and in_filler(text + "lazy")
    last = sse.events[-1]["choices"][0]
    assert last["finish_reason"] == "stop" and last["stop_reason"] == "lazy"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_unknown_model_is_404(gen: Client, path: str) -> None:
    resp = gen.post(path, {"model": "no-such-model", "prompt": "x", "messages": MSGS})
    assert resp.status == 404
    assert resp.error == {
        "message": "The model `no-such-model` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_invalid_json_is_400(gen: Client, path: str) -> None:
    resp = gen.post(path, data=b'{"prompt": ')
    assert resp.status == 400
    err = resp.error
    assert err["type"] == "Bad Request"
    assert err["message"].startswith("1 validation error:\n  {'type': 'json_invalid'")
    assert err["param"] is not None and err["param"].startswith("body.")


def test_missing_messages_is_400(gen: Client) -> None:
    resp = gen.post("/v1/chat/completions", {"model": "demo"})
    assert resp.status == 400
    err = resp.error
    assert err["type"] == "Bad Request"
    assert err["param"] == "body.messages"
    assert err["message"] == (
        "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'messages'), "
        "'msg': 'Field required', 'input': {'model': 'demo'}}"
    )


def test_missing_prompt_is_400(gen: Client) -> None:
    resp = gen.post("/v1/completions", {"model": "demo", "max_tokens": 3})
    assert resp.status == 400
    assert resp.error["param"] is not None and "prompt" in resp.error["param"]


@pytest.mark.parametrize(
    ("field", "value"), [("n", "x"), ("max_tokens", "many"), ("stop", 5), ("stream", "maybe")]
)
def test_wrong_types_are_400(gen: Client, field: str, value: object) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        resp = gen.post(path, {"prompt": "hi", "messages": MSGS, field: value})
        assert resp.status == 400, (path, resp.body)
        err = resp.error
        assert err["type"] == "Bad Request"
        assert err["param"] == f"body.{field}"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_n_zero_is_400(gen: Client, path: str) -> None:
    resp = gen.post(path, {"prompt": "hi", "messages": MSGS, "n": 0})
    assert resp.status == 400
    assert resp.error["code"] == 400


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_max_tokens_zero_is_400(gen: Client, path: str) -> None:
    # SamplingParams._verify_args: VLLMValidationError("max_tokens must be at least 1, got 0.",
    # parameter="max_tokens") -> BadRequestError with param "max_tokens".
    resp = gen.post(path, {"prompt": "hi", "messages": MSGS, "max_tokens": 0})
    assert resp.status == 400
    err = resp.error
    assert err["type"] == "BadRequestError"
    assert err["param"] == "max_tokens"
    assert "max_tokens must be at least 1, got 0." in err["message"]


def test_numeric_strings_are_coerced(gen: Client) -> None:
    # FastAPI validates bodies with pydantic in lax mode, where "2" is a valid int.
    out = complete(gen, prompt="lax", n="2", max_tokens="3", ignore_eos=True)
    assert len(out["choices"]) == 2
    assert out["usage"]["completion_tokens"] == 6


def test_prompt_over_max_model_len_is_400(gen: Client) -> None:
    resp = gen.post("/v1/completions", {"prompt": [7] * (MAX_LEN + 1), "max_tokens": 1})
    assert resp.status == 400
    err = resp.error
    assert err["type"] == "BadRequestError"
    assert err["param"] == "input_tokens"
    assert err["message"].startswith(f"This model's maximum context length is {MAX_LEN} tokens.")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_prompt_plus_max_tokens_over_max_model_len_is_400(gen: Client, path: str) -> None:
    prompt = "word " * 300  # about 375 tokens
    resp = gen.post(
        path,
        {"prompt": prompt, "messages": [{"role": "user", "content": prompt}], "max_tokens": 200},
    )
    assert resp.status == 400
    assert "maximum context length" in resp.error["message"]
    assert resp.error["param"] == "input_tokens"
    # The same prompt with room left for the output is served.
    resp = gen.post(
        path,
        {"prompt": prompt, "messages": [{"role": "user", "content": prompt}], "max_tokens": 20},
    )
    assert resp.status == 200, resp.body


def test_max_tokens_over_max_model_len_is_400(gen: Client) -> None:
    # renderers/params.py TokenizeParams: "max_tokens=600 cannot be greater than max_model_len..."
    resp = gen.post("/v1/completions", {"prompt": "hi", "max_tokens": MAX_LEN + 88})
    assert resp.status == 400
    assert resp.error["type"] == "BadRequestError"
    assert resp.error["param"] == "max_tokens"


def test_empty_prompt_is_400(gen: Client) -> None:
    resp = gen.post("/v1/completions", {"prompt": "", "max_tokens": 2})
    assert resp.status == 400
    assert resp.error["param"] == "prompt"


def test_stream_options_without_stream_is_400(gen: Client) -> None:
    # validate_stream_options: "Stream options can only be defined when `stream=True`."
    for path in ("/v1/completions", "/v1/chat/completions"):
        resp = gen.post(
            path,
            {
                "prompt": "hi",
                "messages": MSGS,
                "max_tokens": 2,
                "stream_options": {"include_usage": True},
            },
        )
        assert resp.status == 400, (path, resp.body)
        assert "Stream options can only be defined when `stream=True`." in resp.error["message"]


def test_non_json_content_type_is_400(gen: Client) -> None:
    # validate_json_request: only application/json bodies are accepted.
    body = b'{"prompt": "hi", "max_tokens": 2}'
    resp = gen.post("/v1/completions", data=body, headers={"Content-Type": "text/plain"})
    assert resp.status == 400
    assert resp.error["type"] == "Bad Request"
    assert "Unsupported Media Type" in resp.error["message"]
    ok = gen.post(
        "/v1/completions", data=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status == 200, ok.body


def test_generate_routes_404_on_embedding_model(embed_sim: SimProcess) -> None:
    c = Client(embed_sim.url)
    for path in ("/v1/completions", "/v1/chat/completions"):
        resp = c.post(path, {"model": "embedder", "prompt": "x", "messages": MSGS})
        assert resp.status == 404
        assert resp.json() == {"detail": "Not Found"}


def test_server_still_serves_after_errors(gen: Client) -> None:
    gen.post("/v1/completions", data=b"garbage")
    out = complete(gen, prompt="still alive", max_tokens=2)
    assert out["usage"]["completion_tokens"] >= 1
