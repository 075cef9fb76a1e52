"""What the router reads from a client's request: which routes it relays, the model a body names,
the routing key its policy needs, and what it costs against a token limit.

Pure functions of the parsed request: no I/O, no clock. Only the fields routing needs are read;
the body itself goes upstream as it came.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson

from vfleet.errors import BadRequest
from vfleet.http.server import Request
from vfleet.router.policies import Field, Policy, prefix_hashes
from vfleet.router.state import RouteKey

# Routes relayed to an engine; vLLM's, plus the un-prefixed forms production-stack users call.
PROXIED: Final = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/rerank",
        "/v2/rerank",
        "/v1/score",
        "/score",
        "/pooling",
        "/classify",
        "/tokenize",
        "/detokenize",
        "/v1/responses",
        "/completions",
        "/chat/completions",
        "/embeddings",
    }
)
ALIASED_PATHS: Final = {
    "/completions": "/v1/completions",
    "/chat/completions": "/v1/chat/completions",
    "/embeddings": "/v1/embeddings",
}
AUDIO_PREFIX: Final = "/v1/audio/"
_FORM_MODEL: Final = re.compile(rb'name="model"\r\n\r\n([^\r\n]+)')
_NO_FIELDS: dict[str, Any] = {}  # shared, never written: a multipart body has no JSON fields


def is_proxied(req: Request) -> bool:
    return req.method == "POST" and (req.path in PROXIED or req.path.startswith(AUDIO_PREFIX))


def read_body(req: Request) -> tuple[str | None, dict[str, Any]]:
    """(the model the body names, or None; the body's JSON fields). BadRequest when a JSON route's
    body is not a JSON object. Audio routes carry a multipart form: only its model is read."""
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
    model = fields.get("model")
    return (model if isinstance(model, str) and model else None), fields


def route_key(policy: Policy, model: str, req: Request, fields: dict[str, Any]) -> RouteKey:
    """The request's routing key, with only the fields `policy` declares it needs."""
    needs = policy.needs
    if not needs:
        return RouteKey(model)
    return RouteKey(
        model,
        session(req, fields) if Field.SESSION in needs else None,
        prefix(fields) if Field.PREFIX in needs else (),
    )


def session(req: Request, fields: dict[str, Any]) -> str | None:
    header = req.headers.get(b"x-session-id") or req.headers.get(b"x-user-id")
    if header:
        return header.decode(errors="replace")
    user = fields.get("user")
    return user if isinstance(user, str) and user else None


def prefix(fields: dict[str, Any]) -> tuple[int, ...]:
    messages = fields.get("messages")
    if isinstance(messages, list):
        text = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    else:
        prompt = fields.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
    return prefix_hashes(text) if text else ()


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
