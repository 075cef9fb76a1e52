"""Errors the simulator answers with, in vLLM 0.26's JSON shapes."""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.status,
                }
            }
        )


def invalid(message: str, parameter: str, value: Any = None) -> ApiError:
    """vLLM's VLLMValidationError: a 400 whose message names the parameter (and value)."""
    extras = [f"parameter={parameter}"] + ([] if value is None else [f"value={value}"])
    return ApiError(400, f"{message} ({', '.join(extras)})", "BadRequestError", parameter)


def not_found_model(name: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist.", "NotFoundError", "model")


def validation_error(
    kind: str,
    loc: tuple[Any, ...],
    msg: str,
    value: Any,
    param: str | None = None,
    ctx: dict[str, Any] | None = None,
) -> ApiError:
    """A request-body validation failure, worded like FastAPI's errors as vLLM relays them.

    `param` is the dotted location unless a validator named the parameter itself."""
    detail = {"type": kind, "loc": ("body", *loc), "msg": msg, "input": value}
    if ctx is not None:
        detail["ctx"] = ctx
    if param is None:
        param = ".".join(str(p) for p in ("body", *loc))
    return ApiError(400, f"1 validation error:\n  {detail!r}", "Bad Request", param)


class ReprText:
    """Text that reprs as itself: an exception object shown inside a validation message."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def value_error(message: str, body: Any, loc: tuple[Any, ...] = ()) -> ApiError:
    """A `ValueError` raised by one of vLLM's request validators (by default one that runs
    before the field checks, located at the body): its message prefixed "Value error, "."""
    return validation_error(
        "value_error",
        loc,
        f"Value error, {message}",
        body,
        ctx={"error": ReprText(f"ValueError({message!r})")},
    )


def vllm_value_error(message: str, body: Any, parameter: str, value: Any = None) -> ApiError:
    """A `VLLMValidationError` raised by such a validator: the message names the parameter (and
    value), and so does the error's `param`."""
    extras = [f"parameter={parameter}"] + ([] if value is None else [f"value={value}"])
    return validation_error(
        "value_error",
        (),
        f"Value error, {message} ({', '.join(extras)})",
        body,
        param=parameter,
        ctx={"error": ReprText(f"VLLMValidationError({message!r})")},
    )


UNSUPPORTED_MEDIA = ApiError(
    400,
    "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
    "Bad Request",
)


def missing(loc: tuple[Any, ...], body: Any) -> ApiError:
    return validation_error("missing", loc, "Field required", body)


def wrong_type(loc: tuple[Any, ...], expected: str, value: Any) -> ApiError:
    return validation_error(f"{expected}_type", loc, f"Input should be a valid {expected}", value)


UNAUTHORIZED = orjson.dumps({"error": "Unauthorized"})
NOT_FOUND = orjson.dumps({"detail": "Not Found"})
METHOD_NOT_ALLOWED = orjson.dumps({"detail": "Method Not Allowed"})
