"""The routes the router answers: what each is, which methods it takes, whether its body must be
JSON, in which shape its errors are written, and which path an engine is sent.

Pure: no I/O. A request's path is looked up once, in one dict for the fixed paths (every hot
route), and only a path that is not there is matched against the few routes that carry an id
(`/v1/models/{id}`, `/v1/responses/{id}`, `/v1/audio/*`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from vfleet.errors import VfleetError, anthropic_error_json, error_json


@dataclass(frozen=True, slots=True)
class ErrorStyle:
    """How a route's clients read an error: as a whole body, and as the last events of a
    stream that broke after its first byte."""

    render: Callable[[VfleetError], bytes]
    stream_end: Callable[[bytes], bytes]


def _openai_stream_end(body: bytes) -> bytes:
    return b"data: " + body + b"\n\ndata: [DONE]\n\n"


def _anthropic_stream_end(body: bytes) -> bytes:
    # Anthropic's streams name each event; an error is an `error` event, and nothing follows.
    return b"event: error\ndata: " + body + b"\n\n"


OPENAI: Final = ErrorStyle(error_json, _openai_stream_end)
ANTHROPIC: Final = ErrorStyle(anthropic_error_json, _anthropic_stream_end)


# What a route is (`Route.kind`): plain ints, compared on the hot path, in two ranges.
# Open routes (no API key; the admin gate in router.app guards /metrics and /vfleet/demand):
HEALTH: Final = 0
READY: Final = 1
METRICS: Final = 2
DEMAND: Final = 3  # the last open one
# Behind the API key:
MODELS: Final = 4  # the aggregated /v1/models
MODEL: Final = 5  # one card: /v1/models/{id}
RELAY: Final = 6  # relayed to an engine of the body's model, chosen by its policy (and above)
RESPONSES: Final = 7  # POST /v1/responses: as RELAY, plus response-id affinity (router.affinity)
STORED: Final = 8  # a stored response (/v1/responses/{id}...): relayed to the engine that has it


@dataclass(frozen=True, slots=True)
class Route:
    kind: int
    methods: frozenset[str]
    json: bool = False  # a body must be declared `application/json` (vLLM refuses the rest)
    style: ErrorStyle = OPENAI
    upstream: str = ""  # the path an engine is sent, when it is not the request's

    def allow(self) -> bytes:
        """The `Allow` header line of a 405 for this route."""
        return b"allow: %s\r\n" % ", ".join(sorted(self.methods)).encode()


GET: Final = frozenset({"GET"})
POST: Final = frozenset({"POST"})
_RELAY: Final = Route(RELAY, POST, json=True)

# vLLM's JSON routes, and the un-prefixed forms production-stack users call.
RELAYED: Final = (
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
)
ALIASED: Final = {
    "/completions": "/v1/completions",
    "/chat/completions": "/v1/chat/completions",
    "/embeddings": "/v1/embeddings",
}

ROUTES: Final[dict[str, Route]] = {
    "/health": Route(HEALTH, GET),
    "/ready": Route(READY, GET),
    "/metrics": Route(METRICS, GET),
    "/vfleet/demand": Route(DEMAND, GET),
    "/v1/models": Route(MODELS, GET),
    "/models": Route(MODELS, GET),
    **dict.fromkeys(RELAYED, _RELAY),
    **{path: Route(RELAY, POST, json=True, upstream=to) for path, to in ALIASED.items()},
    "/v1/responses": Route(RESPONSES, POST, json=True),
    # Anthropic's Messages API, which vLLM serves; its clients read errors in its shape.
    "/v1/messages": Route(RELAY, POST, json=True, style=ANTHROPIC),
    "/v1/messages/count_tokens": Route(RELAY, POST, json=True, style=ANTHROPIC),
}

MODEL_PREFIXES: Final = ("/v1/models/", "/models/")
RESPONSES_PREFIX: Final = "/v1/responses/"
AUDIO_PREFIX: Final = "/v1/audio/"
_MODEL: Final = Route(MODEL, GET)
_AUDIO: Final = Route(RELAY, POST)  # a multipart form, relayed untouched
# A stored response, and cancelling it (vLLM serves GET and cancel; DELETE goes to the engine
# too, which answers for itself).
_STORED: Final = Route(STORED, frozenset({"GET", "DELETE"}))
_STORED_ACTIONS: Final = {"cancel": Route(STORED, POST)}


def match_param(path: str) -> tuple[Route, str] | None:
    """The route of a path that is not in ROUTES, and the id it carries (URL-decoded, so an id
    with a slash may come encoded or not); None: no such route."""
    for prefix in MODEL_PREFIXES:
        if path.startswith(prefix):
            model = unquote(path[len(prefix) :])
            return (_MODEL, model) if model else None
    if path.startswith(RESPONSES_PREFIX):
        rest = path[len(RESPONSES_PREFIX) :]
        rid, _, action = rest.partition("/")
        route = _STORED_ACTIONS.get(action) if action else _STORED
        if route is None or not rid:
            return None
        return route, unquote(rid)
    if path.startswith(AUDIO_PREFIX) and len(path) > len(AUDIO_PREFIX):
        return _AUDIO, ""
    return None


def is_json(content_type: bytes | None) -> bool:
    """Whether a Content-Type declares JSON: `application/json`, parameters (a charset) allowed,
    in any case. A missing one is not JSON: vLLM refuses a body without it too."""
    if content_type == b"application/json":
        return True  # what every client sends: no parsing
    if content_type is None:
        return False
    return content_type.partition(b";")[0].strip().lower() == b"application/json"
