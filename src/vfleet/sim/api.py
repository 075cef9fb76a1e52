"""OpenAI/vLLM request parsing for the simulator: JSON bodies in, typed requests out.

Pure functions over decoded JSON. Only the fields the simulator acts on are read; every other
field is accepted and ignored, as vLLM does. Wrong types and missing fields raise `ApiError` with
the status and wording vLLM uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from vfleet.sim import structured, tokenizer
from vfleet.sim.errors import (
    ApiError,
    ReprText,
    invalid,
    missing,
    validation_error,
    wrong_type,
)
from vfleet.sim.tokenizer import PromptCodec

Body = dict[str, Any]


def parse_json(raw: bytes) -> Body:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Rare path: let the standard library, which FastAPI uses, word the error (or accept
        # what orjson refuses, such as NaN).
        try:
            body = json.loads(raw)
        except ValueError as exc:
            pos = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise validation_error(
                "json_invalid", (pos,), "JSON decode error", {}, ctx={"error": msg}
            ) from exc
    if not isinstance(body, dict):
        raise validation_error("model_attributes_type", (), "Input should be an object", body)
    return body


class Sampling(NamedTuple):  # NamedTuple: immutable and cheap to build once per request
    max_tokens: int | None  # None: up to max_model_len
    request_id: str | None  # the body's `request_id`, used for response ids
    n: int
    stop: tuple[str, ...]
    ignore_eos: bool
    seed: int
    stream: bool
    include_usage: bool
    continuous_usage: bool


class GenerateRequest(NamedTuple):
    model: str | None
    prompts: tuple[list[int], ...]  # one entry per prompt of a batched completion
    sampling: Sampling
    chat: bool
    prompts_are_text: bool  # tokenized here (not given as token ids)
    # tools, response_format, logprobs: None for the plain requests that have none of them
    extras: structured.Extras | None = None


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    model: str | None
    inputs: tuple[list[int], ...]
    dimensions: int | None
    base64: bool


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    model: str | None
    queries: tuple[str, ...]
    documents: tuple[str, ...]
    top_n: int  # rerank only; 0 means all
    rerank: bool


# -- field readers --------------------------------------------------------------------------


def _model(body: Body) -> str | None:
    m = body.get("model")
    if m is None or isinstance(m, str):
        return m or None
    raise wrong_type(("model",), "string", m)


def _int(
    body: Body, key: str, default: int | None, minimum: int, schema_bound: bool = False
) -> int | None:
    """An integer field, coerced as pydantic's lax mode does ("3" and 3.0 are 3).

    `schema_bound`: the minimum is part of vLLM's request schema (a validation error), not a
    sampling-parameter check."""
    v = body.get(key, default)
    if v is None:
        return default
    if type(v) is not int:
        lax_str = isinstance(v, str) and v.strip().lstrip("+-").isdigit()
        if not (lax_str or (isinstance(v, float) and v.is_integer())):
            raise wrong_type((key,), "integer", v)
        v = int(v)
    if v < minimum:
        if schema_bound:
            msg = f"Input should be greater than or equal to {minimum}"
            raise validation_error("greater_than_equal", (key,), msg, v)
        # vLLM checks ranges in SamplingParams, after validation: a plain BadRequestError.
        raise invalid(f"{key} must be at least {minimum}, got {v}.", key, v)
    return v


def _n(body: Body) -> int:
    """`n` as given: vLLM checks its range (1 to VLLM_MAX_N_SEQUENCES) only in SamplingParams,
    after the prompts are measured, and names no parameter in those errors."""
    n = _int(body, "n", 1, -(2**63))
    return 1 if n is None else n


def _bool(body: Body, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise wrong_type((key,), "boolean", v)
    return v


def _stop(body: Body) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,) if v else ()
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return tuple(s for s in v if s)
    raise wrong_type(("stop",), "string", v)


# Sampling fields vLLM types as floats, with the ranges SamplingParams checks (None: unbounded
# there). Their type errors come from request validation; their range errors from
# SamplingParams, which names the parameter for temperature and top_p only.
_FLOATS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty")


def _float(body: Body, key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            msg = "Input should be a valid number, unable to parse string as a number"
            raise validation_error("float_parsing", (key,), msg, v) from None
    raise validation_error("float_type", (key,), "Input should be a valid number", v)


# One set test skips the checks for the many requests that set none of these fields.
_SAMPLING_KEYS = frozenset((*_FLOATS, "repetition_penalty", "top_k"))


def check_sampling(body: Body, n: int) -> None:
    """vLLM's type and range checks of the sampling fields the simulator otherwise ignores."""
    if _SAMPLING_KEYS.isdisjoint(body):
        return
    temp = _float(body, "temperature")
    top_p = _float(body, "top_p")
    min_p = _float(body, "min_p")
    presence = _float(body, "presence_penalty")
    frequency = _float(body, "frequency_penalty")
    repetition = _float(body, "repetition_penalty")
    top_k = _int(body, "top_k", None, -(2**63))
    if presence is not None and not -2.0 <= presence <= 2.0:
        raise ApiError(400, f"presence_penalty must be in [-2, 2], got {presence}.")
    if frequency is not None and not -2.0 <= frequency <= 2.0:
        raise ApiError(400, f"frequency_penalty must be in [-2, 2], got {frequency}.")
    if repetition is not None and repetition <= 0.0:
        raise ApiError(400, f"repetition_penalty must be greater than zero, got {repetition}.")
    if temp is not None:
        if temp < 0.0:
            raise invalid(f"temperature must be non-negative, got {temp}.", "temperature", temp)
        if temp > 2.0:
            raise invalid(f"temperature must be in [0, 2], got {temp}.", "temperature", temp)
    greedy = temp is not None and temp < 1e-5
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise invalid(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    if top_k is not None and top_k < -1:
        raise ApiError(400, f"top_k must be 0 (disable), or at least 1, got {top_k}.")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ApiError(400, f"min_p must be in [0, 1], got {min_p}.")
    if greedy and n > 1:
        raise ApiError(400, f"n must be 1 when using greedy sampling, got {n}.")


def _sampling(body: Body, default_max: int | None) -> Sampling:
    max_tokens = _int(body, "max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", default_max, 1)
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise wrong_type(("stream_options",), "dictionary", opts)
    stream = _bool(body, "stream", False)
    if opts and not stream:
        why = "Stream options can only be defined when `stream=True`."
        raise validation_error(
            "value_error",
            (),
            f"Value error, {why} (parameter=stream_options)",
            body,
            param="stream_options",
            ctx={"error": ReprText(f"VLLMValidationError({why!r})")},
        )
    seed = body.get("seed")
    rid = body.get("request_id")
    n = _n(body)
    check_sampling(body, n)
    return Sampling(
        max_tokens=max_tokens,
        request_id=rid if isinstance(rid, str) and rid else None,
        n=n,
        stop=_stop(body),
        ignore_eos=_bool(body, "ignore_eos", False),
        seed=seed if type(seed) is int else 0,
        stream=stream,
        include_usage=stream and bool(opts.get("include_usage")),
        continuous_usage=stream and bool(opts.get("continuous_usage_stats")),
    )


def _token_ids(v: Any, loc: tuple[Any, ...]) -> list[int]:
    if not tokenizer.valid_ids(v):
        raise wrong_type(loc, "integer", v)
    return list(v)


def _prompts(v: Any, key: str, codec: PromptCodec) -> tuple[list[int], ...]:
    """str | list[str] | list[int] | list[list[int]] -> token ids per prompt."""
    if isinstance(v, str):
        return (codec.encode(v, True),)
    if isinstance(v, list) and v:
        if all(isinstance(p, str) for p in v):
            return tuple(codec.encode(p, True) for p in v)
        if all(type(p) is int for p in v):
            return (_token_ids(v, (key,)),)
        if all(isinstance(p, list) for p in v):
            return tuple(_token_ids(p, (key, i)) for i, p in enumerate(v))
    raise wrong_type((key,), "string", v)


# -- chat rendering -------------------------------------------------------------------------


def message_text(content: Any, loc: tuple[Any, ...]) -> str:
    """The text of a message's `content`: a string, null, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise wrong_type((*loc, i), "dictionary", part)
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise wrong_type(loc, "string", content)


def render_chat(
    messages: Any, body: Body, codec: PromptCodec, add_generation_prompt: bool = True
) -> str:
    """`messages` checked as vLLM checks them, then rendered by `codec`: ChatML for the built-in
    pieces, DIR's chat template with `--tokenizer DIR` (`sim.hftok`)."""
    if not isinstance(messages, list):
        if messages is None:
            raise missing(("messages",), body)
        raise wrong_type(("messages",), "list", messages)
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise wrong_type(("messages", i), "dictionary", msg)
        role = msg.get("role")
        if not isinstance(role, str):
            raise missing(("messages", i, "role"), msg)
        text = message_text(msg.get("content"), ("messages", i, "content"))
        turns.append((role, text))
    try:
        return codec.render_chat(messages, turns, add_generation_prompt)
    except Exception as exc:  # a template's raise_exception, a Jinja error: vLLM's 400
        raise ApiError(400, str(exc)) from exc


# -- request parsers ------------------------------------------------------------------------


_EXTRA_KEYS = frozenset(structured.KEYS)


def _has_extras(body: Body) -> bool:
    return not _EXTRA_KEYS.isdisjoint(body)


def parse_chat(body: Body, codec: PromptCodec) -> GenerateRequest:
    # vLLM's model validators (tool_choice, logprobs) run before its field checks.
    extras = structured.chat_extras(body) if _has_extras(body) else None
    prompt = codec.encode(render_chat(body.get("messages"), body, codec), False)
    return GenerateRequest(_model(body), (prompt,), _sampling(body, None), True, True, extras)


def parse_completion(body: Body, codec: PromptCodec) -> GenerateRequest:
    if "prompt" not in body:
        raise missing(("prompt",), body)
    wants = "logprobs" in body or "response_format" in body
    extras = structured.completion_extras(body) if wants else None
    raw = body["prompt"]
    prompts = _prompts(raw, "prompt", codec)
    text = isinstance(raw, str) or (isinstance(raw, list) and isinstance(raw[0], str))
    # The OpenAI completions API defaults max_tokens to 16, and vLLM follows it.
    return GenerateRequest(_model(body), prompts, _sampling(body, 16), False, text, extras)


def parse_embed(body: Body, codec: PromptCodec) -> EmbedRequest:
    if "input" not in body:
        if "messages" in body:
            text = render_chat(body["messages"], body, codec, add_generation_prompt=False)
            inputs: tuple[list[int], ...] = (codec.encode(text, False),)
        else:
            raise missing(("input",), body)
    else:
        inputs = _prompts(body["input"], "input", codec)
    fmt = body.get("encoding_format", "float") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"Unsupported encoding_format: {fmt!r}", param="encoding_format")
    return EmbedRequest(
        _model(body), inputs, _int(body, "dimensions", None, 1, schema_bound=True), fmt == "base64"
    )


def _texts(v: Any, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(t, str) for t in v):
        return tuple(v)
    if isinstance(v, list):  # multimodal-style content parts: keep the text ones
        return tuple(message_text([p] if isinstance(p, dict) else p, (key,)) for p in v)
    raise wrong_type((key,), "string", v)


_SCORE_FORMS = (
    ("queries", "documents"),
    ("queries", "items"),
    ("data_1", "data_2"),
    ("text_1", "text_2"),
)


def parse_score(body: Body) -> ScoreRequest:
    for left, right in _SCORE_FORMS:
        if left in body and right in body:
            q, d = _texts(body[left], left), _texts(body[right], right)
            if len(q) != 1 and len(q) != len(d):
                raise ApiError(400, "Number of queries must be one or equal to number of documents")
            return ScoreRequest(_model(body), q, d, 0, rerank=False)
    raise missing(("queries",), body)


def parse_rerank(body: Body) -> ScoreRequest:
    if "query" not in body:
        raise missing(("query",), body)
    if "documents" not in body:
        raise missing(("documents",), body)
    query = body["query"]
    if not isinstance(query, str):
        raise wrong_type(("query",), "string", query)
    docs = _texts(body["documents"], "documents")
    return ScoreRequest(
        _model(body), (query,), docs, _int(body, "top_n", 0, 0, schema_bound=True) or 0, rerank=True
    )


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    model: str | None
    tokens: list[int]
    return_token_strs: bool


def parse_tokenize(body: Body, codec: PromptCodec) -> TokenizeRequest:
    if "messages" in body:
        gen = _bool(body, "add_generation_prompt", True)
        if gen and _bool(body, "continue_final_message", False):
            raise ApiError(
                400,
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            )
        text = render_chat(body["messages"], body, codec, add_generation_prompt=gen)
        special = False  # the template has them
    elif "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise wrong_type(("prompt",), "string", prompt)
        text = prompt
        special = _bool(body, "add_special_tokens", True)
    else:
        raise missing(("prompt",), body)
    return TokenizeRequest(
        _model(body),
        codec.encode(text, special),
        _bool(body, "return_token_strs", False),
    )


def parse_detokenize(body: Body) -> tuple[str | None, list[int]]:
    if "tokens" not in body:
        raise missing(("tokens",), body)
    tokens = body["tokens"]
    if not isinstance(tokens, list):
        raise wrong_type(("tokens",), "list", tokens)
    return _model(body), _token_ids(tokens, ("tokens",))


@dataclass(frozen=True, slots=True)
class LoraLoad:
    name: str
    path: str


def parse_lora_load(body: Body) -> LoraLoad:
    for key in ("lora_name", "lora_path"):
        if key not in body:
            raise missing((key,), body)
        if not isinstance(body[key], str):
            raise wrong_type((key,), "string", body[key])
    if not body["lora_name"] or not body["lora_path"]:
        raise ApiError(
            400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
        )
    return LoraLoad(body["lora_name"], body["lora_path"])


def parse_lora_unload(body: Body) -> str:
    if "lora_name" not in body:
        raise missing(("lora_name",), body)
    name = body["lora_name"]
    if not isinstance(name, str):
        raise wrong_type(("lora_name",), "string", name)
    if not name:
        raise ApiError(
            400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput"
        )
    return name
