"""The official `openai` and `anthropic` clients, unchanged, against a router in front of four
`vfleet sim` engines (issue 16): model retrieval, Responses conversations that stay on the
engine that stored them, tool calls, structured output and logprobs relayed as the engines wrote
them, and Anthropic messages (plain, streamed, counted) with the key in `x-api-key`.

The router round-robins, so without response affinity three of four follow-ups would reach an
engine that does not have the conversation and get its 404.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from conftest import SimProcess, start_router, start_sim

MODEL = "org/demo"  # a slash: models.retrieve sends it URL-encoded
KEY = "sk-sdk"
SIM = (
    *("--model", MODEL, "--profile", "instant", "--max-model-len", "1024"),
    *("--num-gpu-blocks", "512", "--output-len-mean", "8"),
)
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def router() -> Iterator[SimProcess]:
    sims = [start_sim(*SIM) for _ in range(4)]
    backends = [a for s in sims for a in ("--backend", s.url)]
    try:
        rp = start_router(
            *backends,
            *("--policy", "round_robin", "--health-interval", "0.2"),
            env={"VFLEET_API_KEYS": KEY},
        )
    except BaseException:
        for s in sims:
            s.stop()
        raise
    yield rp
    rp.stop()
    for s in sims:
        s.stop()


@pytest.fixture(scope="module")
def oai(router: SimProcess) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def claude(router: SimProcess) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=router.url, api_key=KEY, max_retries=0)
    yield client
    client.close()


def test_models_retrieve(oai: openai.OpenAI) -> None:
    model = oai.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        oai.models.retrieve("org/nope")
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "not_found_error"


def test_responses_conversations_across_four_engines(oai: openai.OpenAI) -> None:
    # four conversations: round robin puts each on another engine
    firsts = [
        oai.responses.create(model=MODEL, input=f"Tell me about {animal}.", max_output_tokens=8)
        for animal in ("foxes", "owls", "bees", "eels")
    ]
    for first in firsts:
        latest = first
        for question in ("And then?", "Why?"):
            follow = oai.responses.create(
                model=MODEL, input=question, previous_response_id=latest.id, max_output_tokens=8
            )
            assert follow.previous_response_id == latest.id
            # the engine read the earlier turns: more input than the last turn held in all
            assert follow.usage is not None and latest.usage is not None
            assert follow.usage.input_tokens > latest.usage.total_tokens
            latest = follow
        assert oai.responses.retrieve(first.id).output_text == first.output_text

    stream = oai.responses.create(model=MODEL, input="Hello", max_output_tokens=6, stream=True)
    events = list(stream)
    done = events[-1].response  # type: ignore[union-attr]
    follow = oai.responses.create(
        model=MODEL, input="More.", previous_response_id=done.id, max_output_tokens=4
    )
    assert follow.previous_response_id == done.id
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve("resp_" + "0" * 32)


def test_tools_structured_output_and_logprobs_pass_through(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=[TOOL], tool_choice="required"
    )
    (call,) = out.choices[0].message.tool_calls or []
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    out = oai.chat.completions.create(model=MODEL, messages=ASK, response_format=fmt)
    jsonschema.validate(json.loads(out.choices[0].message.content or ""), SCHEMA)
    out = oai.chat.completions.create(
        model=MODEL, messages=ASK, logprobs=True, top_logprobs=2, max_tokens=4
    )
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert all(len(e.top_logprobs) == 2 for e in logprobs.content)


def test_anthropic_messages_through_the_router(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model=MODEL, max_tokens=6, messages=[{"role": "user", "content": "Say something."}]
    )
    assert msg.type == "message" and msg.content[0].type == "text" and msg.content[0].text
    with claude.messages.stream(
        model=MODEL, max_tokens=6, messages=[{"role": "user", "content": "Say more."}]
    ) as stream:
        events = [e.type for e in stream]
        text = stream.get_final_text()
    assert events[0] == "message_start" and events[-1] == "message_stop" and text
    count = claude.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}]
    )
    assert count.input_tokens > 0


def test_anthropic_errors_from_the_router(router: SimProcess) -> None:
    wrong = anthropic.Anthropic(base_url=router.url, api_key="sk-wrong", max_retries=0)
    try:
        with pytest.raises(anthropic.AuthenticationError) as denied:
            wrong.messages.create(
                model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        wrong.close()
    assert isinstance(denied.value.body, dict)
    assert denied.value.body["error"]["type"] == "authentication_error"
    right = anthropic.Anthropic(base_url=router.url, api_key=KEY, max_retries=0)
    try:
        with pytest.raises(anthropic.NotFoundError) as missing:
            right.messages.create(
                model="org/nope", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        right.close()
    assert isinstance(missing.value.body, dict)
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `org/nope` does not exist."},
    }
