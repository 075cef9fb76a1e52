"""Every error vfleet's router and HTTP edge answer themselves: one exception tree, one JSON shape.

Each class carries its HTTP status and its OpenAI error `type`; this module is the only place an
error becomes bytes: `error_json` writes `{"error": {"message", "type", "param", "code"}}`, `code`
being the HTTP status (as vLLM writes it) and `param` the offending request field or null; on the
Anthropic Messages routes `anthropic_error_json` writes the same error in Anthropic's shape,
`{"type": "error", "error": {"type", "message"}}`, its `type` mapped from the one vocabulary.

The `type` vocabulary (the only values the router and the edge ever write):

=====================  =============================  =====================================
type                   statuses                       meaning
=====================  =============================  =====================================
invalid_request_error  400 405 408 413 414 415 417    the request cannot be served as sent
                       431
authentication_error   401                            no valid API key
not_found_error        404                            unknown route or model
rate_limit_error       429                            a request, token or queue limit
server_error           500 502 504                    an engine failed the request
service_unavailable    503                            nothing can take it now; retry later
=====================  =============================  =====================================

Errors an engine answers itself (a 400 from vLLM's validation, say) are relayed as the engine
wrote them: the router never parses response bodies (it only finds the id in a
`/v1/responses` answer, to send what follows from it to the same engine).

This module does no I/O and imports nothing of vfleet, so the HTTP layer can use it too.
"""

from __future__ import annotations

from typing import ClassVar, Final

import orjson

INVALID_REQUEST: Final = "invalid_request_error"
AUTHENTICATION: Final = "authentication_error"
NOT_FOUND: Final = "not_found_error"
RATE_LIMIT: Final = "rate_limit_error"
SERVER_ERROR: Final = "server_error"
UNAVAILABLE: Final = "service_unavailable"
TYPES: Final = (INVALID_REQUEST, AUTHENTICATION, NOT_FOUND, RATE_LIMIT, SERVER_ERROR, UNAVAILABLE)


class VfleetError(Exception):
    """An error answered to a client; subclasses fix `status` and `type`."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = SERVER_ERROR

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_json(err: VfleetError) -> bytes:
    """The OpenAI-shaped body of `err`: the one place an error is serialised."""
    return orjson.dumps(
        {
            "error": {
                "message": err.message,
                "type": err.type,
                "param": err.param,
                "code": err.status,
            }
        }
    )


# Anthropic's error `type` for each of ours (its SDKs pick their exception class by status, and
# show this type); a few statuses have a type of their own there.
_ANTHROPIC_TYPES: Final = {
    INVALID_REQUEST: "invalid_request_error",
    AUTHENTICATION: "authentication_error",
    NOT_FOUND: "not_found_error",
    RATE_LIMIT: "rate_limit_error",
    SERVER_ERROR: "api_error",
    UNAVAILABLE: "overloaded_error",
}
_ANTHROPIC_BY_STATUS: Final = {413: "request_too_large", 504: "timeout_error"}


def anthropic_error_json(err: VfleetError) -> bytes:
    """The Anthropic-shaped body of `err`, for the Messages routes (`/v1/messages...`)."""
    kind = _ANTHROPIC_BY_STATUS.get(err.status) or _ANTHROPIC_TYPES[err.type]
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": err.message}})


# -- the client's side: the request as sent cannot be served ---------------------------------


class ClientError(VfleetError):
    status = 400
    type = INVALID_REQUEST


class BadRequest(ClientError):
    pass


class MethodNotAllowed(ClientError):
    """A known route asked with a method it does not serve (the answer carries `Allow`)."""

    status = 405


class RequestTimeout(ClientError):
    status = 408


class PayloadTooLarge(ClientError):
    status = 413


class UriTooLong(ClientError):
    status = 414


class UnsupportedMediaType(ClientError):
    """A JSON route's body is declared as something other than `application/json`."""

    status = 415


class ExpectationFailed(ClientError):
    status = 417


class HeadersTooLarge(ClientError):
    status = 431


class Unauthorized(ClientError):
    status = 401
    type = AUTHENTICATION


class NotFound(ClientError):
    """An unknown route."""

    status = 404
    type = NOT_FOUND


class ModelNotFound(NotFound):
    pass


class RateLimited(ClientError):
    """A request or token rate limit, or too many requests waiting (queue or long-polls)."""

    status = 429
    type = RATE_LIMIT


# -- the server's side ---------------------------------------------------------------------------


class ServerError(VfleetError):
    status = 500
    type = SERVER_ERROR


class Unavailable(ServerError):
    """Nothing can take the request now (Retry-After says when to try again)."""

    status = 503
    type = UNAVAILABLE


class NoHealthyEndpoint(Unavailable):
    pass


class NotReady(Unavailable):
    """No engine of the model is ready yet (scaled to zero or starting), or shutting down."""


class Overloaded(Unavailable):
    """The router itself is full (open connections)."""


class UpstreamError(ServerError):
    """An engine failed a request. `started`: part of its response had arrived; `url`: which.

    Raised inside the upstream client and given to the request's sink; the client sees a new
    error of the same class with a message about the model, never the engine's URL."""

    status = 502
    what: ClassVar[str] = "error"  # a few words for messages and logs

    def __init__(self, message: str, url: str = "", started: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.started = started


class UpstreamConnectError(UpstreamError):
    what = "connect error"


class UpstreamReset(UpstreamError):
    """The connection closed (or sent garbage) before the response was complete."""

    what = "reset"


class UpstreamTimeout(UpstreamError):
    status = 504
    what = "timeout"


class UpstreamStatus(UpstreamError):
    """The engine answered a 5xx before any byte of the answer was relayed (a dying engine)."""

    what = "error status"


_BY_STATUS: Final[dict[int, type[VfleetError]]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: PayloadTooLarge,
    414: UriTooLong,
    415: UnsupportedMediaType,
    417: ExpectationFailed,
    429: RateLimited,
    431: HeadersTooLarge,
    500: ServerError,
    502: UpstreamError,
    503: Unavailable,
    504: UpstreamTimeout,
}


def for_status(status: int, message: str) -> VfleetError:
    """The error for an HTTP status (the edge's refusals know only the status)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ClientError if status < 500 else ServerError
    return cls(message)
