"""Function tools on the Responses API with the official `openai` client, through a router in
front of two `vfleet sim` engines: a named or `required` tool_choice answers one `function_call`
item whose arguments validate against the tool's parameters (plain and streamed), the tool's
output continues the conversation on the engine that stored it, `auto` answers in text, and a
tool_choice naming no offered tool is a 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from conftest import start_router, start_sim

pytestmark = pytest.mark.timeout(120)

MODEL = "demo"
KEY = "sk-tools"
SIM = ("--model", MODEL, "--profile", "instant", "--max-model-len", "1024")
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER: Any = {"type": "function", "name": "get_weather", "parameters": SCHEMA}
CLOCK: Any = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
NAMED: Any = {"type": "function", "name": "get_weather"}


@pytest.fixture(scope="module")
def oai() -> Iterator[openai.OpenAI]:
    sims = [start_sim(*SIM) for _ in range(2)]
    router = None
    try:
        router = start_router(
            *(a for s in sims for a in ("--backend", s.url)),
            *("--policy", "round_robin", "--health-interval", "0.2"),
            env={"VFLEET_API_KEYS": KEY},
        )
        client = openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0)
        yield client
        client.close()
    finally:
        if router is not None:
            router.stop()
        for s in sims:
            s.stop()


def _call(output: list[Any]) -> Any:
    assert [item.type for item in output] == ["function_call"]
    call = output[0]
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.status == "completed"
    return call


@pytest.mark.parametrize("choice", [NAMED, "required"])
def test_a_forced_tool_answers_a_function_call_with_valid_arguments(
    oai: openai.OpenAI, choice: Any
) -> None:
    made = oai.responses.create(
        model=MODEL,
        input="Weather in Paris for 3 days?",
        tools=[WEATHER, CLOCK],
        tool_choice=choice,
    )
    call = _call(made.output)
    assert call.name == "get_weather"  # named, or with `required` the first tool
    jsonschema.validate(json.loads(call.arguments), SCHEMA)
    if isinstance(choice, str):
        assert made.tool_choice == choice
    else:
        named: Any = made.tool_choice
        assert (named.type, named.name) == ("function", "get_weather")
    assert [t.name for t in made.tools] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    # The tool's output continues the conversation, on the engine that stored it.
    for _ in range(2):  # round robin: one of the two would be the other engine
        follow = oai.responses.create(
            model=MODEL,
            previous_response_id=made.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            tools=[WEATHER],
        )
        assert follow.previous_response_id == made.id
        assert follow.output[0].type == "message" and follow.output_text


def test_auto_answers_in_text(oai: openai.OpenAI) -> None:
    made = oai.responses.create(model=MODEL, input="Hello", tools=[WEATHER], max_output_tokens=8)
    assert [item.type for item in made.output] == ["message"] and made.output_text
    assert made.tool_choice == "auto"


def test_a_streamed_function_call(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(
        model=MODEL, input="Weather?", tools=[WEATHER], tool_choice=NAMED, stream=True
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[3:-3]) == {"response.function_call_arguments.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = events[-3]
    assert done.type == "response.function_call_arguments.done" and done.arguments == deltas
    jsonschema.validate(json.loads(deltas), SCHEMA)
    added, final = events[2], events[-1]
    assert added.type == "response.output_item.added" and final.type == "response.completed"
    call = _call(final.response.output)
    assert call.id == added.item.id and call.arguments == deltas
    # Stored when the stream ended: the call can be followed up.
    follow = oai.responses.create(
        model=MODEL,
        previous_response_id=final.response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
    )
    assert follow.previous_response_id == final.response.id


def test_a_tool_choice_naming_no_offered_tool_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(
            model=MODEL,
            input="Weather?",
            tools=[CLOCK],
            tool_choice={"type": "function", "name": "get_weather"},
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert "does not match any of the specified `tools`" in error["message"]
    assert error["param"] == "tool_choice"
