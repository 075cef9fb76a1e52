"""The OpenAI Responses API as vLLM 0.26 serves it with its response store turned on
(`VLLM_ENABLE_RESPONSES_API_STORE=1`): `POST /v1/responses`, `GET /v1/responses/{id}`,
`POST /v1/responses/{id}/cancel`.

Function tools (`tools: [{"type": "function", "name", "parameters"}]`): a named `tool_choice`
or `required` makes the answer one `function_call` output item whose `arguments` is JSON that
validates against the tool's parameters (vLLM constrains the output with the same grammar as in
chat); with `auto`, the default, the model answers in text. Tools of other types are accepted
and never called.

A stored response keeps the conversation that led to it, so a request naming it as
`previous_response_id` continues that conversation. vLLM's store grows without bound; this one
keeps the `capacity` most recently used responses. Request parsing and bodies are pure; the
store is the server's state (one per engine process).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from vfleet.sim import api, rich
from vfleet.sim.errors import ApiError, missing, wrong_type
from vfleet.sim.scheduler import Sequence
from vfleet.sim.structured import (
    Extras,
    Forced,
    json_output,
    required_call,
    tool_call_text,
)
from vfleet.sim.tokenizer import PromptCodec

Body = dict[str, Any]
Message = dict[str, str]


def not_found(response_id: str) -> ApiError:
    return ApiError(
        404, f"Response with id '{response_id}' not found.", "invalid_request_error", "response_id"
    )


def invalid_id(response_id: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'.",
        "invalid_request_error",
        "response_id",
    )


@dataclass(frozen=True, slots=True)
class Stored:
    body: bytes  # the response as GET returns it
    conversation: tuple[Message, ...]  # every message up to and including its answer


class ResponseStore:
    """Stored responses, least recently used dropped first beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, response_id: str) -> Stored | None:
        item = self._items.get(response_id)
        if item is not None:
            self._items.move_to_end(response_id)
        return item

    def put(self, response_id: str, item: Stored) -> None:
        if self.capacity <= 0:
            return
        self._items[response_id] = item
        self._items.move_to_end(response_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    g: api.GenerateRequest
    request: Body  # the fields echoed in the response
    history: tuple[Message, ...]  # the conversation so far, this request's input included
    store: bool
    previous: str | None


def _text(content: Any, loc: tuple[Any, ...]) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise wrong_type((*loc, i), "dictionary", part)
            if isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise wrong_type(loc, "string", content)


def _input_messages(body: Body) -> list[Message]:
    if "input" not in body:
        raise missing(("input",), body)
    items = body["input"]
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise wrong_type(("input",), "string", items)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise wrong_type(("input", i), "dictionary", item)
        kind = item.get("type", "message")
        if kind == "function_call_output":
            out.append({"role": "tool", "content": str(item.get("output", ""))})
        elif kind == "function_call":
            out.append({"role": "assistant", "content": str(item.get("arguments", ""))})
        else:
            if "role" not in item:
                raise missing(("input", i, "role"), item)
            role = item["role"]
            if not isinstance(role, str):
                raise wrong_type(("input", i, "role"), "string", role)
            content = _text(item.get("content", ""), ("input", i, "content"))
            out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def parse(body: Body, store: ResponseStore, codec: PromptCodec) -> ResponsesRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise wrong_type(("model",), "string", model)
    new = _input_messages(body)
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise wrong_type(("previous_response_id",), "string", previous)
    keep = body.get("store", True)
    if keep is None:
        keep = True
    if not isinstance(keep, bool):
        raise wrong_type(("store",), "boolean", keep)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise wrong_type(("instructions",), "string", instructions)
    max_out = body.get("max_output_tokens")
    if max_out is not None and type(max_out) is not int:
        raise wrong_type(("max_output_tokens",), "integer", max_out)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise wrong_type(("stream",), "boolean", stream)
    sampling_fields: Body = {k: body[k] for k in ("temperature", "top_p") if k in body}
    api.check_sampling(sampling_fields, 1)
    # (The server has checked the model: vLLM looks up the previous response after it.)
    history: list[Message] = []
    if previous is not None:
        stored = store.get(previous)
        if stored is None:
            raise not_found(previous)
        history.extend(stored.conversation)
    history.extend(new)
    chat = ([{"role": "system", "content": instructions}] if instructions else []) + history
    prompt = codec.encode(api.render_chat(chat, body, codec), False)
    sampling = api.Sampling(
        max_tokens=max_out,
        request_id=None,
        n=1,
        stop=(),
        ignore_eos=False,
        seed=0,
        stream=stream,
        include_usage=False,
        continuous_usage=False,
    )
    forced = _tool_call(body)
    extras = Extras(forced, None, False) if forced is not None else _text_format(body)
    g = api.GenerateRequest(model or None, (prompt,), sampling, True, True, extras)
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_out,
        "previous_response_id": previous,
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "metadata": body.get("metadata"),
        "user": body.get("user"),
        "text": body.get("text"),
        "store": keep,
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
    }
    return ResponsesRequest(g, echo, tuple(history), keep, previous)


def _function_tools(body: Body) -> dict[str, Any]:
    """name -> parameters schema of each function tool, checked as the request model does."""
    tools = body.get("tools")
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise wrong_type(("tools",), "list", tools)
    out: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise wrong_type(("tools", i), "dictionary", tool)
        if tool.get("type") != "function":
            continue  # built-in tools (web search, ...): offered, never called here
        name = tool.get("name")
        if name is None:
            raise missing(("tools", i, "name"), tool)
        if not isinstance(name, str):
            raise wrong_type(("tools", i, "name"), "string", name)
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise wrong_type(("tools", i, "parameters"), "dictionary", params)
        out[name] = params
    return out


def _tool_call(body: Body) -> Forced | None:
    """The function call a named or `required` tool_choice forces (None: the model answers)."""
    tools = _function_tools(body)
    choice = body.get("tool_choice", "auto")
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        if not tools:
            return None
        first = next(iter(tools))
        return required_call(first, tools[first])
    if not isinstance(choice, dict):
        raise wrong_type(("tool_choice",), "dictionary", choice)
    name = choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str):
        return None  # a built-in tool's choice: nothing this engine calls
    if name not in tools:
        raise ApiError(
            400,
            "The tool specified in `tool_choice` does not match any of the specified `tools`",
            "invalid_request_error",
            "tool_choice",
        )
    return tool_call_text(name, tools[name])


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


def _calls(forced: Forced | None) -> bool:
    """Whether the answer is a function call (else a message)."""
    return forced is not None and forced.kind in rich.TOOL_KINDS


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> Body:
    return {
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
        "type": "function_call",
        "id": item_id,
        "status": status,
    }


def _text_format(body: Body) -> Extras | None:
    """`text.format` json_schema / json_object: JSON output, as response_format in chat."""
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_schema", "json_object"):
        return None
    schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
    forced = json_output(schema if isinstance(schema, dict) else None)
    return Extras(forced=forced, logprobs=None, auto_tools=False)


def new_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def answer(
    response_id: str, model: str, r: ResponsesRequest, seqs: list[Sequence]
) -> tuple[bytes, Stored]:
    """The response body, and what the store keeps of it."""
    seq = seqs[0]
    forced = r.g.extras.forced if r.g.extras is not None else None
    text = rich.seq_text(seq, forced)
    complete = seq.finish is not None and seq.finish.value == "stop"
    prompt, completion = len(seq.prompt), seq.n_out
    status = "completed" if complete else "incomplete"
    item: Body
    if forced is not None and _calls(forced):
        name = forced.name or ""
        item = _call_item(f"fc_{uuid.uuid4().hex}", _call_id(), name, text, status)
    else:
        item = {
            "id": f"msg_{uuid.uuid4().hex}",
            "content": [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}],
            "role": "assistant",
            "status": status,
            "type": "message",
        }
    body = {
        "id": response_id,
        "created_at": int(time.time()),
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "instructions": r.request["instructions"],
        "metadata": r.request["metadata"],
        "model": model,
        "object": "response",
        "output": [item],
        "parallel_tool_calls": True,
        "temperature": r.request["temperature"],
        "tool_choice": r.request["tool_choice"],
        "tools": r.request["tools"],
        "top_p": r.request["top_p"],
        "background": False,
        "max_output_tokens": r.request["max_output_tokens"],
        "max_tool_calls": None,
        "previous_response_id": r.previous,
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": "completed" if complete else "incomplete",
        "text": r.request["text"],
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": seq.cached_prompt_tokens},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
        "user": r.request["user"],
        "store": r.store,
    }
    raw = orjson.dumps(body)
    conversation = (*r.history, {"role": "assistant", "content": text})
    return raw, Stored(raw, conversation)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ResponseStream:
    """Streamed Responses events (a `jobs.StreamRenderer`): response.created, the output
    message's text deltas, then the done events and response.completed with the full response;
    the response is stored when the stream ends."""

    def __init__(
        self, response_id: str, model: str, r: ResponsesRequest, store: ResponseStore
    ) -> None:
        self.id = response_id
        self.model = model
        self.r = r
        self.store = store
        self.forced = r.g.extras.forced if r.g.extras is not None else None
        self.sent = 0
        self.seq_no = 0
        self.call = _calls(self.forced)  # a function call's arguments stream, not text
        self.item_id = f"fc_{uuid.uuid4().hex}" if self.call else f"msg_{uuid.uuid4().hex}"
        self.call_id = _call_id()
        self.started = False

    def _ev(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, **data, "sequence_number": self.seq_no}
        self.seq_no += 1
        return _event(kind, data)

    def progress(self, seq: Sequence) -> bytes:
        out = []
        if not self.started:
            self.started = True
            shell = {
                "id": self.id,
                "object": "response",
                "created_at": int(time.time()),
                "model": self.model,
                "status": "in_progress",
                "output": [],
                "previous_response_id": self.r.previous,
            }
            out.append(self._ev("response.created", {"response": shell}))
            out.append(self._ev("response.in_progress", {"response": shell}))
            if self.call:
                name = self.forced.name if self.forced is not None else None
                call = _call_item(self.item_id, self.call_id, name or "", "", "in_progress")
                out.append(
                    self._ev("response.output_item.added", {"output_index": 0, "item": call})
                )
            else:
                item = {
                    "id": self.item_id,
                    "content": [],
                    "role": "assistant",
                    "status": "in_progress",
                    "type": "message",
                }
                added = {"output_index": 0, "item": item}
                out.append(self._ev("response.output_item.added", added))
                part = {"annotations": [], "text": "", "type": "output_text", "logprobs": []}
                where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
                out.append(self._ev("response.content_part.added", {**where, "part": part}))
        text = rich.seq_text(seq, self.forced)
        new = text[self.sent :]
        self.sent = len(text)
        if new and self.call:
            delta = {"item_id": self.item_id, "output_index": 0, "delta": new}
            out.append(self._ev("response.function_call_arguments.delta", delta))
        elif new:
            out.append(
                self._ev(
                    "response.output_text.delta",
                    {
                        "item_id": self.item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": new,
                        "logprobs": [],
                    },
                )
            )
        return b"".join(out)

    def end(self, seqs: list[Sequence]) -> bytes:
        raw, stored = answer(self.id, self.model, self.r, seqs)
        if self.r.store:
            self.store.put(self.id, stored)
        body = orjson.loads(raw)
        item = body["output"][0]
        item["id"] = self.item_id
        if self.call:
            item["call_id"] = self.call_id
            done = {"item_id": self.item_id, "output_index": 0, "arguments": item["arguments"]}
            return b"".join(
                [
                    self._ev("response.function_call_arguments.done", done),
                    self._ev("response.output_item.done", {"output_index": 0, "item": item}),
                    self._ev("response.completed", {"response": body}),
                ]
            )
        part = item["content"][0]
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return b"".join(
            [
                self._ev(
                    "response.output_text.done", {**where, "text": part["text"], "logprobs": []}
                ),
                self._ev("response.content_part.done", {**where, "part": part}),
                self._ev("response.output_item.done", {"output_index": 0, "item": item}),
                self._ev("response.completed", {"response": body}),
            ]
        )
