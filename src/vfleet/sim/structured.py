"""What a request asks the simulated model to emit beyond free text: a tool call (`tools` with a
named or `required` tool_choice), JSON (`response_format`), and per-token logprobs.

vLLM enforces tool arguments and JSON output with a grammar; the simulator emits a deterministic
value that validates against the schema (`schema_instance`), costs as many tokens as its text, and
is cut short like any output when `max_tokens` runs out. Request checks raise vLLM's errors, in the
order its validators run (tool_choice, then logprobs, then field types). Only requests that carry
one of these fields reach this module. Pure; no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vfleet.sim import tokenizer
from vfleet.sim.errors import (
    invalid,
    missing,
    validation_error,
    value_error,
    vllm_value_error,
    wrong_type,
)
from vfleet.sim.schema_instance import instance

KEYS = ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs")
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
VOCAB_SIZE = tokenizer.MAX_TOKEN_ID + 1  # what top_logprobs=-1 asks for
AUTO_TOOLS_OFF = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)
_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'
# What `json_object` (no schema) makes the model say: any object is valid.
JSON_OBJECT = {"answer": "The quick brown fox jumps over the lazy dog."}


@dataclass(frozen=True, slots=True)
class Forced:
    """Output fixed by a grammar: a tool call's arguments, or the JSON content of a message."""

    kind: str  # "tool" (named tool_choice), "required", or "json"
    name: str | None  # the tool called
    text: str  # what the client sees: the arguments, or the content
    tokens: int  # tokens the model emits for it (with `required`, the whole call list)

    def shown(self, produced_bytes: int, complete: bool) -> str:
        """The part of `text` out after `produced_bytes` bytes of output."""
        if complete:
            return self.text
        total = self.tokens * tokenizer.PIECE_BYTES
        return self.text[: len(self.text) * min(produced_bytes, total) // max(total, 1)]


@dataclass(frozen=True, slots=True)
class Extras:
    forced: Forced | None
    logprobs: int | None  # alternatives per token when logprobs are asked for; None when not
    auto_tools: bool  # tools offered with tool_choice "auto": the server must allow it


def wanted(body: dict[str, Any]) -> bool:
    return any(k in body for k in KEYS)


def tool_call_text(name: str, parameters: Any) -> Forced:
    """A named tool's call: arguments built from its parameter schema."""
    text = json.dumps(instance(parameters if parameters is not None else {"type": "object"}))
    return Forced("tool", name, text, len(tokenizer.encode(text)))


def required_call(name: str, parameters: Any) -> Forced:
    """`required`: the model emits a list of calls; vLLM re-serialises the first's arguments."""
    args = instance(parameters if parameters is not None else {"type": "object"})
    emitted = json.dumps([{"name": name, "parameters": args}])
    return Forced("required", name, json.dumps(args), len(tokenizer.encode(emitted)))


def json_output(schema: Any) -> Forced:
    text = json.dumps(JSON_OBJECT if schema is None else instance(schema))
    return Forced("json", None, text, len(tokenizer.encode(text)))


# -- chat completions -----------------------------------------------------------------------


def _tool_list(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, parameters) of each tool, type-checked as vLLM's request model does."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise wrong_type(("tools",), "list", tools)
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise wrong_type(("tools", i), "dictionary", tool)
        fn = tool.get("function")
        if fn is None:
            raise missing(("tools", i, "function"), tool)
        if not isinstance(fn, dict):
            raise wrong_type(("tools", i, "function"), "dictionary", fn)
        name = fn.get("name")
        if name is None:
            raise missing(("tools", i, "function", "name"), fn)
        if not isinstance(name, str):
            raise wrong_type(("tools", i, "function", "name"), "string", name)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise wrong_type(("tools", i, "function", "parameters"), "dictionary", params)
        out.append((name, params))
    return out


def _tool_names(tools: Any) -> list[Any]:
    names = []
    for tool in tools if isinstance(tools, list) else ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        names.append(fn.get("name") if isinstance(fn, dict) else None)
    return names


def _check_tool_choice(body: dict[str, Any]) -> Any:
    """vLLM's tool_choice validator; returns the effective choice (None: no tools in play)."""
    choice = body.get("tool_choice")
    if "tool_choice" not in body and body.get("tools"):
        choice = "auto"
    if choice is None or choice == "none":
        return None
    if body.get("tools") is None:
        raise value_error("When using `tool_choice`, `tools` must be set.", body)
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise value_error(
            f"Invalid value for `tool_choice`: {choice}! "
            'Only named tools, "none", "auto" or "required" are supported.',
            body,
        )
    tools = body["tools"]
    if choice == "required" and isinstance(tools, list) and not tools:
        return None
    if isinstance(choice, dict):
        fn = choice.get("function")
        if not isinstance(fn, dict):
            raise value_error(
                f"Invalid value for `function`: `{fn}` in `tool_choice`! {_USAGE}", body
            )
        if "name" not in fn:
            raise value_error(
                f"Expected field `name` in `function` in `tool_choice`! {_USAGE}", body
            )
        name = fn["name"]
        if not isinstance(name, str) or not name:
            raise value_error(
                f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_USAGE}", body
            )
        if name not in _tool_names(tools):
            raise value_error(
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                body,
            )
    return choice


def _int_field(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None or type(v) is int:
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, float):
        raise validation_error(
            "int_from_float",
            (key,),
            "Input should be a valid integer, got a number with a fractional part",
            v,
        )
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise validation_error(
                "int_parsing",
                (key,),
                "Input should be a valid integer, unable to parse string as an integer",
                v,
            ) from None
    raise validation_error("int_type", (key,), "Input should be a valid integer", v)


def _bool_field(body: dict[str, Any], key: str) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise wrong_type((key,), "boolean", v)
    return v


def _logprob_count(count: int | None) -> int | None:
    """vLLM's engine-side bound on logprobs (-1 means the whole vocabulary)."""
    if count is None:
        return None
    n = VOCAB_SIZE if count == -1 else count
    if n > MAX_LOGPROBS:
        raise invalid(
            f"Requested sample logprobs of {n}, which is greater than max allowed: {MAX_LOGPROBS}",
            "logprobs",
            n,
        )
    return n


def chat_extras(body: dict[str, Any]) -> Extras | None:
    choice = _check_tool_choice(body)
    top = body.get("top_logprobs")
    if isinstance(top, int) and not isinstance(top, bool):
        if top < 0 and top != -1:
            raise vllm_value_error(
                "`top_logprobs` must be a positive value or -1.", body, "top_logprobs", top
            )
        if (top == -1 or top > 0) and not body.get("logprobs"):
            raise vllm_value_error(
                "when using `top_logprobs`, `logprobs` must be set to true.", body, "top_logprobs"
            )
    tools = _tool_list(body)
    want_logprobs = _bool_field(body, "logprobs")
    top_n = _int_field(body, "top_logprobs") or 0
    forced: Forced | None = None
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        forced = tool_call_text(name, dict(tools)[name])
    elif choice == "required":
        forced = required_call(*tools[0])
    else:
        forced = _response_format(body)
    return Extras(
        forced=forced,
        logprobs=_logprob_count(top_n) if want_logprobs else None,
        auto_tools=choice == "auto",
    )


_FORMAT_TYPES = ("text", "json_object", "json_schema")


def _response_format(body: dict[str, Any]) -> Forced | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise wrong_type(("response_format",), "dictionary", fmt)
    kind = fmt.get("type")
    if kind is None:
        raise missing(("response_format", "type"), fmt)
    if kind not in _FORMAT_TYPES:
        raise validation_error(
            "literal_error",
            ("response_format", "type"),
            "Input should be 'text', 'json_object' or 'json_schema'",
            kind,
            ctx={"expected": "'text', 'json_object' or 'json_schema'"},
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return json_output(None)
    spec = fmt.get("json_schema")
    if spec is None:  # nothing to constrain to: any JSON object will do
        return json_output(None)
    if not isinstance(spec, dict):
        raise wrong_type(("response_format", "json_schema"), "dictionary", spec)
    if "name" not in spec:
        raise missing(("response_format", "json_schema", "name"), spec)
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise wrong_type(("response_format", "json_schema", "schema"), "dictionary", schema)
    return json_output(schema if schema is not None else {"type": "object"})


# -- completions ----------------------------------------------------------------------------


def completion_extras(body: dict[str, Any]) -> Extras | None:
    count = body.get("logprobs")
    if isinstance(count, int) and not isinstance(count, bool) and count < 0:
        raise vllm_value_error("`logprobs` must be a positive value.", body, "logprobs", count)
    n = _int_field(body, "logprobs")
    forced = _response_format(body)
    if n is None and forced is None:
        return None
    return Extras(forced=forced, logprobs=_logprob_count(n), auto_tools=False)
