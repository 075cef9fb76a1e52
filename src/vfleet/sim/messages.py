"""The Anthropic Messages API as vLLM 0.26 serves it (`/v1/messages`, `/v1/messages/count_tokens`).

vLLM turns a Messages request into a chat completion request and its answer back into Anthropic
shapes; so does this module (pure; no I/O). Body validation fails with vLLM's usual validation
error (OpenAI-shaped, from its app-wide handler); errors found while serving (unknown model,
sampling ranges, tool choice) come back as `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from vfleet.sim import api, rich
from vfleet.sim.errors import ApiError, missing, validation_error, value_error, wrong_type
from vfleet.sim.scheduler import Sequence
from vfleet.sim.structured import Extras, Forced, json_output, required_call, tool_call_text
from vfleet.sim.tokenizer import PromptCodec

ROLES = ("user", "assistant", "system")
ROLE_ALIASES = {"ctx": "user", "msg": "user"}  # roles recent Claude Code sends; vLLM maps them
BLOCK_TYPES = (
    "text",
    "image",
    "tool_use",
    "tool_result",
    "tool_reference",
    "thinking",
    "redacted_thinking",
)
CHOICE_TYPES = ("auto", "any", "tool", "none")
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
Body = dict[str, Any]


def error_body(exc: ApiError) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": exc.type, "message": exc.message}})


def _literal(loc: tuple[Any, ...], options: tuple[str, ...], value: Any) -> ApiError:
    quoted = [f"'{o}'" for o in options]
    expected = ", ".join(quoted[:-1]) + f" or {quoted[-1]}"
    return validation_error(
        "literal_error", loc, f"Input should be {expected}", value, ctx={"expected": expected}
    )


def _blocks(content: Any, loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise wrong_type(loc, "string", content)
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise wrong_type((*loc, i), "dictionary", block)
        if "type" not in block:
            raise missing((*loc, i, "type"), block)
        if block["type"] not in BLOCK_TYPES:
            raise _literal((*loc, i, "type"), BLOCK_TYPES, block["type"])
    return content


def _text_of(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return str(block["text"])
    if kind == "tool_use":
        return json.dumps({"name": block.get("name"), "arguments": block.get("input") or {}})
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return "\n".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return str(content or "")
    return ""


def _chat_messages(body: Body) -> list[dict[str, Any]]:
    """The request's system text and messages as chat messages (what vLLM hands its template)."""
    messages = body.get("messages")
    if messages is None:
        raise missing(("messages",), body)
    if not isinstance(messages, list):
        raise wrong_type(("messages",), "list", messages)
    system_parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        system_parts.append(system)
    elif system is not None:
        for block in _blocks(system, ("system",)):
            if block.get("type") == "text" and block.get("text"):
                system_parts.append(str(block["text"]))
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise wrong_type(("messages", i), "dictionary", msg)
        if "role" not in msg:
            raise missing(("messages", i, "role"), msg)
        role = ROLE_ALIASES.get(msg["role"], msg["role"])
        if role not in ROLES:
            raise _literal(("messages", i, "role"), ROLES, msg["role"])
        if "content" not in msg:
            raise missing(("messages", i, "content"), msg)
        content = msg["content"]
        text = content if isinstance(content, str) else None
        if text is None:
            text = "\n".join(_text_of(b) for b in _blocks(content, ("messages", i, "content")))
        if role == "system":
            system_parts.append(text)
        else:
            out.append({"role": role, "content": text})
    if system_parts:
        out.insert(0, {"role": "system", "content": "".join(system_parts)})
    return out


def _model(body: Body) -> str:
    if "model" not in body:
        raise missing(("model",), body)
    model = body["model"]
    if not isinstance(model, str):
        raise wrong_type(("model",), "string", model)
    if not model:
        raise value_error("Model is required", model, ("model",))
    return model


def _tools(body: Body) -> Forced | bool | None:
    """The forced tool call of `tool_choice` (None: none; True: "auto", the model decides)."""
    tools = body.get("tools")
    schemas: dict[str, Any] = {}
    if tools is not None:
        if not isinstance(tools, list):
            raise wrong_type(("tools",), "list", tools)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise wrong_type(("tools", i), "dictionary", tool)
            for key in ("name", "input_schema"):
                if key not in tool:
                    raise missing(("tools", i, key), tool)
            if not isinstance(tool["name"], str):
                raise wrong_type(("tools", i, "name"), "string", tool["name"])
            if not isinstance(tool["input_schema"], dict):
                raise wrong_type(("tools", i, "input_schema"), "dictionary", tool["input_schema"])
            schemas[tool["name"]] = {"type": "object", **tool["input_schema"]}
    choice = body.get("tool_choice")
    kind: Any = "auto" if tools else "none"
    if choice is not None:
        if not isinstance(choice, dict):
            raise wrong_type(("tool_choice",), "dictionary", choice)
        kind = choice.get("type")
        if kind not in CHOICE_TYPES:
            raise _literal(("tool_choice", "type"), CHOICE_TYPES, kind)
        if kind == "tool" and not choice.get("name"):
            raise value_error(
                "tool_choice.name is required when type is 'tool'", choice, ("tool_choice",)
            )
    if kind == "none" or not schemas:
        if kind == "tool":
            raise value_error("When using `tool_choice`, `tools` must be set.", body)
        return None
    if kind == "tool":
        name = choice["name"] if isinstance(choice, dict) else ""
        if name not in schemas:
            raise value_error(
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                body,
            )
        return tool_call_text(name, schemas[name])
    if kind == "any":
        name = next(iter(schemas))
        return required_call(name, schemas[name])
    return True


def _output_format(body: Body) -> Forced | None:
    """`output_config.format` with a schema: JSON output, as vLLM's json_schema response_format."""
    config = body.get("output_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise wrong_type(("output_config",), "dictionary", config)
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise wrong_type(("output_config", "format"), "dictionary", fmt)
    schema = fmt.get("schema")
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise wrong_type(("output_config", "format", "schema"), "dictionary", schema)
    return json_output(schema)


def _max_tokens(body: Body) -> int:
    if "max_tokens" not in body:
        raise missing(("max_tokens",), body)
    v = body["max_tokens"]
    if type(v) is not int:
        lax_str = isinstance(v, str) and v.strip().lstrip("+-").isdigit()
        if lax_str or (isinstance(v, float) and v.is_integer()):
            v = int(v)
        else:
            raise validation_error(
                "int_type", ("max_tokens",), "Input should be a valid integer", v
            )
    if v <= 0:
        raise value_error("max_tokens must be positive", v, ("max_tokens",))
    return v


def parse(body: Body, codec: PromptCodec, count_only: bool = False) -> api.GenerateRequest:
    """A Messages (or count_tokens) request as the chat request vLLM makes of it."""
    model = _model(body)
    chat = _chat_messages(body)
    forced = _tools(body)
    max_tokens = 1 if count_only else _max_tokens(body)
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise wrong_type(("stop_sequences",), "list", stop)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise wrong_type(("stream",), "boolean", stream)
    sampling_fields: Body = {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body}
    api.check_sampling(sampling_fields, 1)
    prompt = codec.encode(api.render_chat(chat, body, codec), False)
    sampling = api.Sampling(
        max_tokens=max_tokens,
        request_id=None,
        n=1,
        stop=tuple(s for s in stop or () if s),
        ignore_eos=False,
        seed=0,
        stream=stream,
        include_usage=stream,
        continuous_usage=False,
    )
    if forced is None and not count_only:
        forced = _output_format(body)
    extras = None
    if forced is not None:
        extras = Extras(
            forced=forced if isinstance(forced, Forced) else None,
            logprobs=None,
            auto_tools=forced is True,
        )
    return api.GenerateRequest(model, (prompt,), sampling, True, True, extras)


def count_tokens(g: api.GenerateRequest) -> bytes:
    return orjson.dumps({"input_tokens": len(g.prompts[0])})


def _content(text: str, forced: Forced | None, tool_id: str) -> list[dict[str, Any]]:
    if forced is not None and forced.kind in rich.TOOL_KINDS:
        try:
            args = json.loads(text)
        except ValueError:  # cut short by max_tokens: vLLM would fail to parse it too
            args = {}
        return [{"type": "tool_use", "id": tool_id, "name": forced.name, "input": args}]
    return [{"type": "text", "text": text}] if text else []


def full(rid: str, model: str, seqs: list[Sequence], extras: Extras | None) -> bytes:
    seq = seqs[0]
    forced = extras.forced if extras is not None else None
    text = rich.seq_text(seq, forced)
    body: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "type": "message",
        "role": "assistant",
        "content": _content(text, forced, rich.tool_call_id()),
        "model": model,
    }
    reason = STOP_REASONS.get(rich.finish_reason(seq, forced))
    if reason is not None:
        body["stop_reason"] = reason
    body["usage"] = {"input_tokens": len(seq.prompt), "output_tokens": seq.n_out}
    return orjson.dumps(body)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageStream:
    """The SSE events of a streamed Messages request (a `jobs.StreamRenderer`), in the order
    vLLM sends them: message_start, one content block (start, deltas, stop), message_delta with
    the stop reason and usage, message_stop."""

    def __init__(self, rid: str, model: str, extras: Extras | None) -> None:
        self.rid = rid
        self.model = model
        self.forced = extras.forced if extras is not None else None
        self.started = False
        self.block_open = False
        self.sent = 0
        self.reason: str | None = None

    def progress(self, seq: Sequence) -> bytes:
        out = []
        if not self.started:
            self.started = True
            message: dict[str, Any] = {
                "id": f"chatcmpl-{self.rid}",
                "content": [],
                "model": self.model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": len(seq.prompt), "output_tokens": 0},
            }
            out.append(_event("message_start", {"type": "message_start", "message": message}))
        text = rich.seq_text(seq, self.forced)
        new = text[self.sent :]
        self.sent = len(text)
        tool = self.forced is not None and self.forced.kind in rich.TOOL_KINDS
        if new:
            if not self.block_open:
                self.block_open = True
                block: dict[str, Any] = {"type": "text", "text": ""}
                if tool and self.forced is not None:
                    block = {
                        "type": "tool_use",
                        "id": rich.tool_call_id(),
                        "name": self.forced.name,
                        "input": {},
                    }
                start = {"type": "content_block_start", "index": 0, "content_block": block}
                out.append(_event("content_block_start", start))
            delta = (
                {"type": "input_json_delta", "partial_json": new}
                if tool
                else {"type": "text_delta", "text": new}
            )
            out.append(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "delta": delta, "index": 0},
                )
            )
        if seq.finish is not None:
            self.reason = STOP_REASONS.get(rich.finish_reason(seq, self.forced), "end_turn")
        return b"".join(out)

    def end(self, seqs: list[Sequence]) -> bytes:
        seq = seqs[0]
        out = []
        if self.block_open:
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        usage = {"input_tokens": len(seq.prompt), "output_tokens": seq.n_out}
        delta = {"type": "message_delta", "delta": {"stop_reason": self.reason}, "usage": usage}
        out.append(_event("message_delta", delta))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)
