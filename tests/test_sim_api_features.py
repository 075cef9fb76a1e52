"""The simulator serves the features clients use as vLLM 0.26 does: tool calls, structured JSON
output, logprobs, the Anthropic Messages API and the Responses API with stored state, checked
with the official `openai` and `anthropic` clients against a real `vfleet sim` process; every
bad input gets vLLM's status, error shape and message."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from conftest import SimProcess, start_sim

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "hours": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
        },
        "note": {"type": "string"},
    },
    "required": ["city", "unit", "days", "hours", "where"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
]
RECIPE = {
    "$defs": {
        "step": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 1}, "text": {"type": "string"}},
            "required": ["n", "text"],
        }
    },
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1},
        "vegan": {"type": "boolean"},
        "level": {"anyOf": [{"type": "null"}, {"enum": ["easy", "hard"]}]},
    },
    "required": ["title", "steps", "vegan", "level"],
}
MSGS: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    sp = start_sim(
        *("--model", "demo", "--profile", "instant", "--max-model-len", "1024"),
        *("--num-gpu-blocks", "512", "--output-len-mean", "16", "--responses-store-size", "3"),
    )
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def oai(sim: SimProcess) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def claude(sim: SimProcess) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=sim.url, api_key="unused", max_retries=0)
    yield client
    client.close()


def post(sim: SimProcess, path: str, body: Any, method: str = "POST") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


# -- tool calls -----------------------------------------------------------------------------


def test_named_tool_choice_returns_a_call_whose_arguments_validate(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="demo",
        messages=MSGS,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = out.choices[0]
    assert choice.message.content == ""
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    # vLLM (like OpenAI): a named tool's call finishes with "stop", `required` with "tool_calls".
    assert choice.finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_required_tool_choice_finishes_with_tool_calls(oai: openai.OpenAI) -> None:
    tools = [TOOLS[1]]
    out = oai.chat.completions.create(
        model="demo", messages=MSGS, tools=tools, tool_choice="required"
    )
    (call,) = out.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert out.choices[0].finish_reason == "tool_calls"


def test_streamed_tool_call_deltas_add_up_to_valid_arguments(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="demo",
        messages=MSGS,
        tools=[TOOLS[1]],
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    chunks = list(stream)
    assert all(c.usage is not None and c.usage.prompt_tokens > 0 for c in chunks)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    assert all(tc.id is None and tc.index == 0 for tc in calls[1:])
    args = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    jsonschema.validate(json.loads(args), WEATHER)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "tool_calls" and set(finals[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_forced_call_cut_by_max_tokens_finishes_with_length(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="demo",
        messages=MSGS,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=3,
    )
    assert out.choices[0].finish_reason == "length"
    (call,) = out.choices[0].message.tool_calls or []
    assert 0 < len(call.function.arguments) <= 12


def test_auto_tool_choice_needs_the_flag_and_then_answers_text(sim: SimProcess) -> None:
    status, body = post(sim, "/v1/chat/completions", {"messages": MSGS, "tools": TOOLS})
    assert status == 400
    assert body == {
        "error": {
            "message": '"auto" tool choice requires --enable-auto-tool-choice and '
            "--tool-call-parser to be set",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    auto = start_sim(
        *("--model", "demo", "--profile", "instant", "--enable-auto-tool-choice"),
        *("--tool-call-parser", "hermes"),
    )
    try:
        status, body = post(
            auto, "/v1/chat/completions", {"messages": MSGS, "tools": TOOLS, "max_tokens": 5}
        )
        assert status == 200
        msg = body["choices"][0]["message"]
        assert msg["content"] and not msg.get("tool_calls")
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        auto.stop()


# -- structured output ----------------------------------------------------------------------


def test_json_schema_response_format_content_validates(oai: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "recipe", "schema": RECIPE}}
    out = oai.chat.completions.create(model="demo", messages=MSGS, response_format=fmt)
    jsonschema.validate(json.loads(out.choices[0].message.content or ""), RECIPE)
    assert out.choices[0].finish_reason == "stop"
    stream = oai.chat.completions.create(
        model="demo", messages=MSGS, response_format=fmt, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), RECIPE)


def test_json_object_response_format_gives_a_json_object(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="demo", messages=MSGS, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(out.choices[0].message.content or ""), dict)


def test_completions_take_response_format_too(sim: SimProcess) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": RECIPE}}
    body = {"model": "demo", "prompt": "A recipe:", "max_tokens": 300, "response_format": fmt}
    status, out = post(sim, "/v1/completions", body)
    assert status == 200 and out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["logprobs"] is None
    jsonschema.validate(json.loads(out["choices"][0]["text"]), RECIPE)


# -- logprobs -------------------------------------------------------------------------------


def test_chat_logprobs_cover_every_token_with_top_alternatives(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model="demo", messages=MSGS, logprobs=True, top_logprobs=3, max_tokens=6
    )
    choice = out.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert out.usage is not None and len(entries) == out.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and bytes(e.bytes or []) == e.token.encode()
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.top_logprobs[0].token == e.token and tops[0] == e.logprob
    again = oai.chat.completions.create(
        model="demo", messages=MSGS, logprobs=True, top_logprobs=3, max_tokens=6
    )
    assert again.choices[0].logprobs == choice.logprobs  # deterministic
    stream = oai.chat.completions.create(
        model="demo", messages=MSGS, logprobs=True, max_tokens=6, stream=True
    )
    streamed = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert all(e.top_logprobs == [] for e in streamed)


def test_completion_logprobs_in_the_completions_shape(oai: openai.OpenAI) -> None:
    out = oai.completions.create(model="demo", prompt="Once upon", max_tokens=5, logprobs=2)
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset == [4 * i for i in range(len(lp.tokens))]
    assert all(len(t) == 2 for t in lp.top_logprobs)


# -- bad inputs -----------------------------------------------------------------------------


def _validation(
    kind: str, loc: tuple[Any, ...], msg: str, value: Any, param: str
) -> dict[str, Any]:
    detail = {"type": kind, "loc": ("body", *loc), "msg": msg, "input": value}
    return {
        "error": {
            "message": f"1 validation error:\n  {detail!r}",
            "type": "Bad Request",
            "param": param,
            "code": 400,
        }
    }


def _bad(message: str, param: str | None = None, type_: str = "BadRequestError") -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": 400}}


BASE: dict[str, Any] = {"model": "demo", "messages": MSGS}
USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


def _before(body: dict[str, Any], message: str, error: str, param: str = "body") -> Any:
    """A validator that runs before field checks: located at the body, input the whole body."""
    detail = {
        "type": "value_error",
        "loc": ("body",),
        "msg": f"Value error, {message}",
        "input": body,
        "ctx": {"error": error},
    }
    text = repr(detail).replace(repr(error), error)
    return {
        "error": {
            "message": f"1 validation error:\n  {text}",
            "type": "Bad Request",
            "param": param,
            "code": 400,
        }
    }


def _case(extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **extra}


NO_MATCH = "The tool specified in `tool_choice` does not match any of the specified `tools`"
BAD_INPUTS: list[tuple[str, str, dict[str, Any], int, Any]] = [
    (
        "temperature not a number",
        "/v1/chat/completions",
        _case({"temperature": "hot"}),
        400,
        _validation(
            "float_parsing",
            ("temperature",),
            "Input should be a valid number, unable to parse string as a number",
            "hot",
            "body.temperature",
        ),
    ),
    (
        "temperature a list",
        "/v1/completions",
        {"model": "demo", "prompt": "x", "temperature": [1]},
        400,
        _validation(
            "float_type",
            ("temperature",),
            "Input should be a valid number",
            [1],
            "body.temperature",
        ),
    ),
    (
        "temperature below 0",
        "/v1/chat/completions",
        _case({"temperature": -1}),
        400,
        _bad(
            "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)",
            "temperature",
        ),
    ),
    (
        "temperature above 2",
        "/v1/completions",
        {"model": "demo", "prompt": "x", "temperature": 2.5},
        400,
        _bad(
            "temperature must be in [0, 2], got 2.5. (parameter=temperature, value=2.5)",
            "temperature",
        ),
    ),
    (
        "top_p zero",
        "/v1/chat/completions",
        _case({"top_p": 0}),
        400,
        _bad("top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)", "top_p"),
    ),
    (
        "top_k below -1",
        "/v1/chat/completions",
        _case({"top_k": -5}),
        400,
        _bad("top_k must be 0 (disable), or at least 1, got -5."),
    ),
    (
        "min_p above 1",
        "/v1/chat/completions",
        _case({"min_p": 1.5}),
        400,
        _bad("min_p must be in [0, 1], got 1.5."),
    ),
    (
        "presence_penalty out of range",
        "/v1/chat/completions",
        _case({"presence_penalty": 3}),
        400,
        _bad("presence_penalty must be in [-2, 2], got 3.0."),
    ),
    (
        "repetition_penalty zero",
        "/v1/chat/completions",
        _case({"repetition_penalty": 0}),
        400,
        _bad("repetition_penalty must be greater than zero, got 0.0."),
    ),
    (
        "greedy with n > 1",
        "/v1/chat/completions",
        _case({"temperature": 0, "n": 2}),
        400,
        _bad("n must be 1 when using greedy sampling, got 2."),
    ),
    (
        "top_logprobs without logprobs",
        "/v1/chat/completions",
        _case({"top_logprobs": 2}),
        400,
        _before(
            _case({"top_logprobs": 2}),
            "when using `top_logprobs`, `logprobs` must be set to true. (parameter=top_logprobs)",
            "VLLMValidationError('when using `top_logprobs`, `logprobs` must be set to true.')",
            "top_logprobs",
        ),
    ),
    (
        "top_logprobs negative",
        "/v1/chat/completions",
        _case({"logprobs": True, "top_logprobs": -2}),
        400,
        _before(
            _case({"logprobs": True, "top_logprobs": -2}),
            "`top_logprobs` must be a positive value or -1. (parameter=top_logprobs, value=-2)",
            "VLLMValidationError('`top_logprobs` must be a positive value or -1.')",
            "top_logprobs",
        ),
    ),
    (
        "top_logprobs above the engine's max",
        "/v1/chat/completions",
        _case({"logprobs": True, "top_logprobs": 21}),
        400,
        _bad(
            "Requested sample logprobs of 21, which is greater than max allowed: 20 "
            "(parameter=logprobs, value=21)",
            "logprobs",
        ),
    ),
    (
        "completion logprobs negative",
        "/v1/completions",
        {"model": "demo", "prompt": "x", "logprobs": -1},
        400,
        _before(
            {"model": "demo", "prompt": "x", "logprobs": -1},
            "`logprobs` must be a positive value. (parameter=logprobs, value=-1)",
            "VLLMValidationError('`logprobs` must be a positive value.')",
            "logprobs",
        ),
    ),
    (
        "tool_choice without tools",
        "/v1/chat/completions",
        _case({"tool_choice": "required"}),
        400,
        _before(
            _case({"tool_choice": "required"}),
            "When using `tool_choice`, `tools` must be set.",
            "ValueError('When using `tool_choice`, `tools` must be set.')",
        ),
    ),
    (
        "tool_choice unknown word",
        "/v1/chat/completions",
        _case({"tools": TOOLS, "tool_choice": "sometimes"}),
        400,
        _before(
            _case({"tools": TOOLS, "tool_choice": "sometimes"}),
            'Invalid value for `tool_choice`: sometimes! Only named tools, "none", "auto" or '
            '"required" are supported.',
            'ValueError(\'Invalid value for `tool_choice`: sometimes! Only named tools, "none", '
            '"auto" or "required" are supported.\')',
        ),
    ),
    (
        "tool_choice names no offered tool",
        "/v1/chat/completions",
        _case({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}}),
        400,
        _before(
            _case({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}}),
            NO_MATCH,
            f"ValueError({NO_MATCH!r})",
        ),
    ),
    (
        "tool_choice function without name",
        "/v1/chat/completions",
        _case({"tools": TOOLS, "tool_choice": {"type": "function", "function": {}}}),
        400,
        _before(
            _case({"tools": TOOLS, "tool_choice": {"type": "function", "function": {}}}),
            f"Expected field `name` in `function` in `tool_choice`! {USAGE}",
            repr(ValueError(f"Expected field `name` in `function` in `tool_choice`! {USAGE}")),
        ),
    ),
    (
        "tool without function",
        "/v1/chat/completions",
        _case({"tools": [{"type": "function"}], "tool_choice": "none"}),
        400,
        _validation(
            "missing",
            ("tools", 0, "function"),
            "Field required",
            {"type": "function"},
            "body.tools.0.function",
        ),
    ),
    (
        "response_format of an unknown type",
        "/v1/chat/completions",
        _case({"response_format": {"type": "yaml"}}),
        400,
        {
            "error": {
                "message": "1 validation error:\n  "
                + repr(
                    {
                        "type": "literal_error",
                        "loc": ("body", "response_format", "type"),
                        "msg": "Input should be 'text', 'json_object' or 'json_schema'",
                        "input": "yaml",
                        "ctx": {"expected": "'text', 'json_object' or 'json_schema'"},
                    }
                ),
                "type": "Bad Request",
                "param": "body.response_format.type",
                "code": 400,
            }
        },
    ),
    (
        "previous_response_id unknown",
        "/v1/responses",
        {"model": "demo", "input": "hi", "previous_response_id": "resp_nope"},
        404,
        {
            "error": {
                "message": "Response with id 'resp_nope' not found.",
                "type": "invalid_request_error",
                "param": "response_id",
                "code": 404,
            }
        },
    ),
    (
        "responses without input",
        "/v1/responses",
        {"model": "demo"},
        400,
        _validation("missing", ("input",), "Field required", {"model": "demo"}, "body.input"),
    ),
    (
        "messages without max_tokens",
        "/v1/messages",
        {"model": "demo", "messages": MSGS},
        400,
        _validation(
            "missing",
            ("max_tokens",),
            "Field required",
            {"model": "demo", "messages": MSGS},
            "body.max_tokens",
        ),
    ),
    (
        "messages with an unknown role",
        "/v1/messages",
        {"model": "demo", "max_tokens": 4, "messages": [{"role": "bot", "content": "x"}]},
        400,
        {
            "error": {
                "message": "1 validation error:\n  "
                + repr(
                    {
                        "type": "literal_error",
                        "loc": ("body", "messages", 0, "role"),
                        "msg": "Input should be 'user', 'assistant' or 'system'",
                        "input": "bot",
                        "ctx": {"expected": "'user', 'assistant' or 'system'"},
                    }
                ),
                "type": "Bad Request",
                "param": "body.messages.0.role",
                "code": 400,
            }
        },
    ),
    (
        "messages for an unknown model",
        "/v1/messages",
        {"model": "nope", "max_tokens": 4, "messages": MSGS},
        404,
        {
            "type": "error",
            "error": {"type": "NotFoundError", "message": "The model `nope` does not exist."},
        },
    ),
    (
        "messages with tools but no auto tool choice",
        "/v1/messages",
        {
            "model": "demo",
            "max_tokens": 4,
            "messages": MSGS,
            "tools": [{"name": "get_weather", "input_schema": WEATHER}],
        },
        400,
        {
            "type": "error",
            "error": {
                "type": "BadRequestError",
                "message": '"auto" tool choice requires --enable-auto-tool-choice and '
                "--tool-call-parser to be set",
            },
        },
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "expected"),
    [c[1:] for c in BAD_INPUTS],
    ids=[c[0] for c in BAD_INPUTS],
)
def test_bad_input_gets_vllms_status_shape_and_message(
    sim: SimProcess, path: str, body: dict[str, Any], status: int, expected: Any
) -> None:
    got_status, got = post(sim, path, body)
    assert (got_status, got) == (status, expected)


def test_stored_response_routes_answer_like_vllm(sim: SimProcess) -> None:
    assert post(sim, "/v1/responses/resp_missing", None, "GET") == (
        404,
        {
            "error": {
                "message": "Response with id 'resp_missing' not found.",
                "type": "invalid_request_error",
                "param": "response_id",
                "code": 404,
            }
        },
    )
    assert post(sim, "/v1/responses/abc", None, "GET") == (
        400,
        {
            "error": {
                "message": "Invalid 'response_id': 'abc'. Expected an ID that begins with 'resp'.",
                "type": "invalid_request_error",
                "param": "response_id",
                "code": 400,
            }
        },
    )
    # vLLM has no DELETE for stored responses: the route exists, the method does not.
    assert post(sim, "/v1/responses/resp_missing", None, "DELETE") == (
        405,
        {"detail": "Method Not Allowed"},
    )


# -- Anthropic Messages ---------------------------------------------------------------------


def test_anthropic_client_creates_and_streams_messages(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="demo",
        max_tokens=6,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say something about foxes."}],
    )
    assert msg.role == "assistant" and msg.type == "message"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 6

    with claude.messages.stream(
        model="demo", max_tokens=6, messages=[{"role": "user", "content": "Say something."}]
    ) as stream:
        events = [e.type for e in stream]
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events
    assert text and final.usage.output_tokens == msg.usage.output_tokens
    assert final.stop_reason == msg.stop_reason

    count = claude.messages.count_tokens(
        model="demo", messages=[{"role": "user", "content": "Say something."}]
    )
    assert count.input_tokens > 0


def test_anthropic_forced_tool_use_input_validates(claude: anthropic.Anthropic) -> None:
    tools: Any = [{"name": "get_weather", "input_schema": WEATHER}]
    msg = claude.messages.create(
        model="demo",
        max_tokens=200,
        messages=MSGS,
        tools=tools,
        tool_choice={"type": "any"},
    )
    (block,) = msg.content
    assert block.type == "tool_use" and block.name == "get_weather"
    jsonschema.validate(block.input, WEATHER)
    assert msg.stop_reason == "tool_use"
    with claude.messages.stream(
        model="demo", max_tokens=200, messages=MSGS, tools=tools, tool_choice={"type": "any"}
    ) as stream:
        final = stream.get_final_message()
    (block,) = final.content
    assert block.type == "tool_use"
    jsonschema.validate(block.input, WEATHER)
    # A named tool is a named tool_choice in vLLM: its call ends the turn ("stop").
    named = claude.messages.create(
        model="demo",
        max_tokens=200,
        messages=MSGS,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert named.content[0].type == "tool_use" and named.stop_reason == "end_turn"


def test_anthropic_output_format_gives_json_that_validates(sim: SimProcess) -> None:
    body = {
        "model": "demo",
        "max_tokens": 300,
        "messages": MSGS,
        "output_config": {"format": {"type": "json_schema", "schema": RECIPE}},
    }
    status, out = post(sim, "/v1/messages", body)
    assert status == 200 and out["stop_reason"] == "end_turn"
    jsonschema.validate(json.loads(out["content"][0]["text"]), RECIPE)


# -- Responses ------------------------------------------------------------------------------


def test_responses_continue_a_stored_conversation(oai: openai.OpenAI, sim: SimProcess) -> None:
    first = oai.responses.create(model="demo", input="Tell me about foxes.", max_output_tokens=8)
    assert first.id.startswith("resp_") and first.output_text
    assert first.previous_response_id is None
    second = oai.responses.create(
        model="demo", input="And dogs?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # The second prompt holds the first exchange: more tokens than it alone had in total.
    assert second.usage.input_tokens > first.usage.total_tokens
    assert oai.responses.retrieve(first.id).output_text == first.output_text

    unstored = oai.responses.create(model="demo", input="x", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)

    # The store keeps the 3 most recently used: three more push `second` out.
    for _ in range(3):
        oai.responses.create(model="demo", input="y", max_output_tokens=2)
    assert post(sim, f"/v1/responses/{second.id}", None, "GET")[0] == 404


def test_streamed_response_is_stored(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(model="demo", input="Hello", max_output_tokens=6, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output_text == text
    assert oai.responses.retrieve(done.id).output_text == text


# -- embeddings -----------------------------------------------------------------------------


def test_embedding_size_follows_the_model_unless_overridden() -> None:
    qwen = start_sim(
        "--model", "Qwen/Qwen3-Embedding-0.6B", "--task", "embed", "--profile", "instant"
    )
    small = start_sim(
        *("--model", "BAAI/bge-m3", "--task", "embed", "--profile", "instant"),
        *("--embedding-dim", "32"),
    )
    try:
        for sp, size in ((qwen, 1024), (small, 32)):
            status, body = post(sp, "/v1/embeddings", {"input": "hello"})
            assert status == 200 and len(body["data"][0]["embedding"]) == size
    finally:
        qwen.stop()
        small.stop()


def test_the_api_key_check_takes_anthropics_x_api_key_header() -> None:
    keyed = start_sim("--model", "demo", "--profile", "instant", "--api-key", "sk-a")
    try:
        good = anthropic.Anthropic(base_url=keyed.url, api_key="sk-a", max_retries=0)
        bad = anthropic.Anthropic(base_url=keyed.url, api_key="sk-b", max_retries=0)
        msg = good.messages.create(
            model="demo", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.usage.output_tokens <= 2
        with pytest.raises(anthropic.AuthenticationError) as caught:
            bad.messages.create(
                model="demo", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.status_code == 401 and caught.value.body == {"error": "Unauthorized"}
        good.close()
        bad.close()
    finally:
        keyed.stop()
