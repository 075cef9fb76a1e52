"""API-key verification for the router's client edge: pure, no I/O.

A request's key, sent as `Authorization: Bearer <key>` (OpenAI's clients) or as `x-api-key: <key>`
(Anthropic's), is checked against the configured keys and, when one matches, reduced to that key's
identity (its position in the configured list). With a tenancy (router.tenants: limits or a
tenants file) the tokens `request_tokens` finds are looked up by digest there instead, and the
identity is the key's name. Either way, everything keyed per client uses the identity, never the
header's bytes, so spelling variants of one credential (`Bearer`, `bearer`, `BEARER`, extra
spaces or tabs, either header) share one limit.

RFC 9110 section 11.1: the auth scheme is case-insensitive; credentials are the scheme, one or
more spaces, then the token. Tabs and surrounding whitespace are tolerated as well, since
clients produce them and they cannot make a wrong key right.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

_SCHEME = b"bearer"
_WS = b" \t"
NO_KEYS = b""  # the one rate-limit identity shared by everyone when no keys are configured


def bearer_token(header: bytes) -> bytes | None:
    """The token of a `Bearer <token>` header value (scheme in any case), else None."""
    value = header.strip(_WS)
    if len(value) <= len(_SCHEME) or value[: len(_SCHEME)].lower() != _SCHEME:
        return None
    rest = value[len(_SCHEME) :]
    if rest[:1] not in (b" ", b"\t"):
        return None  # `Bearerabc` is another scheme, not Bearer with token abc
    token = rest.strip(_WS)
    return token or None


def verify(header: bytes, keys: tuple[bytes, ...]) -> int | None:
    """The index of the configured key the header carries, or None.

    Every key is compared, in constant time each, so the time taken does not tell which
    position (if any) matched."""
    token = bearer_token(header)
    if token is None:
        return None
    return _match(token, keys)


def request_tokens(headers: Mapping[bytes, bytes]) -> list[bytes]:
    """The tokens a request offers as its key (`headers`: lower-case names), in the order they
    are tried: `Authorization: Bearer`, then `x-api-key`."""
    out = []
    header = headers.get(b"authorization")
    if header is not None:
        token = bearer_token(header)
        if token is not None:
            out.append(token)
    api_key = headers.get(b"x-api-key")
    if api_key is not None:
        token = api_key.strip(_WS)
        if token:
            out.append(token)
    return out


def verify_request(headers: Mapping[bytes, bytes], keys: tuple[bytes, ...]) -> int | None:
    """The index of the configured key a request carries, in `Authorization: Bearer` or,
    failing that, in `x-api-key`; else None."""
    for token in request_tokens(headers):
        found = _match(token, keys)
        if found is not None:
            return found
    return None


def _match(token: bytes, keys: tuple[bytes, ...]) -> int | None:
    found: int | None = None
    for i, key in enumerate(keys):
        if hmac.compare_digest(token, key) and found is None:
            found = i
    return found


def identity(index: int) -> bytes:
    """A stable, bounded rate-limit key for the configured key at `index` (not the key)."""
    return b"key:%d" % index


def limit_key(header: bytes, keys: tuple[bytes, ...]) -> bytes:
    """The rate-limit identity of a request: its verified key's identity; NO_KEYS without
    keys (one shared bucket). An unverified request never reaches a limiter (401 first), but
    gets NO_KEYS too rather than a key of its own choosing, keeping the table bounded."""
    if not keys:
        return NO_KEYS
    index = verify(header, keys)
    return NO_KEYS if index is None else identity(index)


def request_limit_key(headers: Mapping[bytes, bytes], keys: tuple[bytes, ...]) -> bytes:
    """`limit_key` for a whole request: the identity of the key it carries in either header."""
    if not keys:
        return NO_KEYS
    index = verify_request(headers, keys)
    return NO_KEYS if index is None else identity(index)
