"""What the router reads from a client's request: the model a body names, the types of the fields
it reads, the routing key its policy needs, and what it costs against a token limit.

Pure functions of the parsed request: no I/O, no clock. Only the fields routing needs are read;
the body itself goes upstream as it came. The routes themselves are in `router.routes`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson

from vfleet.errors import BadRequest
from vfleet.http.server import Request
from vfleet.router.policies import Field, Policy, prefix_hashes
from vfleet.router.routes import AUDIO_PREFIX
from vfleet.router.state import RouteKey

_FORM_MODEL: Final = re.compile(rb'name="model"\r\n\r\n([^\r\n]+)')
_NO_FIELDS: dict[str, Any] = {}  # shared, never written: a multipart body has no JSON fields


def read_body(req: Request) -> tuple[str | None, dict[str, Any]]:
    """(the model the body names, or None; the body's JSON fields). BadRequest when a JSON route's
    body is not a JSON object, or a field the router reads has the wrong type (`check_fields`).
    Audio routes carry a multipart form: only its model is read."""
    body = req.body
    if req.path.startswith(AUDIO_PREFIX):
        m = _FORM_MODEL.search(body)
        return (m.group(1).decode(errors="replace").strip() if m else None), _NO_FIELDS
    try:
        fields = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        raise BadRequest("Request body is not valid JSON.") from None
    if not isinstance(fields, dict):
        raise BadRequest("Request body must be a JSON object.")
    check_fields(fields)
    model = fields.get("model")
    return (model if isinstance(model, str) and model else None), fields


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_list(value: object) -> bool:
    return isinstance(value, list)


def _is_text(value: object) -> bool:
    return isinstance(value, str | list)


_BOOL_WORDS: Final = frozenset(
    {"0", "1", "f", "t", "n", "y", "no", "yes", "off", "on", "false", "true"}
)


def _is_bool(value: object) -> bool:
    """A boolean as vLLM's request models read one from JSON, leniently (pydantic's lax mode):
    true/false, 0/1, and words such as "true", "yes", "on"."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return value in (0, 1)
    return isinstance(value, str) and value.lower() in _BOOL_WORDS


def _is_int(value: object) -> bool:
    """An integer as vLLM's request models read one: 5, 5.0, "5" (a boolean too, as pydantic
    takes it)."""
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return False
        return number.is_integer()
    return False


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# The fields the router reads (to route, to charge a token limit, to follow a stored response),
# each with the types vLLM accepts for it; null is accepted for all, as vLLM does.
FIELD_TYPES: Final = (
    ("model", _is_str, "a string"),
    ("stream", _is_bool, "a boolean"),
    ("messages", _is_list, "an array"),
    ("prompt", _is_text, "a string or an array"),
    ("input", _is_text, "a string or an array"),
    ("user", _is_str, "a string"),
    ("max_tokens", _is_int, "an integer"),
    ("max_completion_tokens", _is_int, "an integer"),
    ("previous_response_id", _is_str, "a string"),
)


def check_fields(fields: dict[str, Any]) -> None:
    """BadRequest naming the first field the router reads whose value has the wrong type."""
    for name, ok, what in FIELD_TYPES:
        value = fields.get(name)
        if value is not None and not ok(value):
            raise BadRequest(f"`{name}` must be {what}, not {_json_type(value)}.", name)


def route_key(policy: Policy, model: str, req: Request, fields: dict[str, Any]) -> RouteKey:
    """The request's routing key, with only the fields `policy` declares it needs."""
    needs = policy.needs
    if not needs:
        return RouteKey(model)
    return RouteKey(
        model,
        session(req, fields) if Field.SESSION in needs else None,
        prefix(fields, model) if Field.PREFIX in needs else (),
    )


def session(req: Request, fields: dict[str, Any]) -> str | None:
    header = req.headers.get(b"x-session-id") or req.headers.get(b"x-user-id")
    if header:
        return header.decode(errors="replace")
    user = fields.get("user")
    return user if isinstance(user, str) and user else None


def prefix(fields: dict[str, Any], model: str = "") -> tuple[int, ...]:
    messages = fields.get("messages")
    if isinstance(messages, list):
        text = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    else:
        prompt = fields.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
    return prefix_hashes(text, model=model) if text else ()


def estimated_tokens(fields: dict[str, Any]) -> float:
    """A request's token cost, charged before it runs: its prompt (about four characters a
    token) plus the output it asks for at most."""
    prompt = fields.get("prompt", fields.get("input", ""))
    messages = fields.get("messages")
    if isinstance(messages, list):
        prompt = [m.get("content", "") for m in messages if isinstance(m, dict)]
    chars = len(prompt) if isinstance(prompt, str) else len(str(prompt))
    out = fields.get("max_completion_tokens") or fields.get("max_tokens") or 0
    return math.ceil(chars / 4) + (out if isinstance(out, int) else 0)
