"""What one request used, as its engine reported it: read from the answer on its way through, then
settled against the key's token budget (router.tenants). Only requests of a tenancy are metered;
without one no `Meter` exists and the relay does not look at bodies.

Where usage is: a JSON answer ends with (or near) its `"usage"` object, so the last TAIL bytes are
kept and searched when the answer ends; streams put it in their last event(s) (chat and
completions: a final chunk with `"choices":[]` when `stream_options.include_usage` is set; the
Messages API: `message_delta`; the Responses API: `response.completed`), found the same way.

Chat and completion streams carry usage only when the client asks for it. When it did not, the
router asks for it (`stream_options.include_usage: true`) and removes that one extra event from
what it relays, so the client receives the events it asked for, byte for byte, and the budget is
charged what the engine counted. The cost, measured per streamed chunk, is one search for the
usage marker and one for the event end (a few hundred nanoseconds; docs/router.md has the A/B);
estimating instead (characters / 4, one token per event) would be cheaper still but wrong for
speculative decoding, multi-token chunks and every non-English prompt. A stream whose usage never
comes (the client left, the engine broke) is charged a prompt estimate (the request body at four
bytes a token) plus one token per event relayed.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

from vfleet.router.tenants import Tenancy, Tenant

TAIL: Final = 4096  # bytes of an answer's end kept to find its usage
MAX_HELD: Final = 64 * 1024  # a stream event longer than this is relayed unexamined
USAGE_MARK: Final = b'"usage":{'
_EMPTY_CHOICES: Final = b'"choices":[]'
_COUNTS: Final = re.compile(
    rb'"(prompt_tokens|input_tokens|completion_tokens|output_tokens)"\s*:\s*(\d+)'
)
_PROMPT: Final = frozenset({b"prompt_tokens", b"input_tokens"})
# Upstream paths whose streams take `stream_options` (vLLM's OpenAI chat and completions).
STREAM_OPTIONS_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions"})
CLIENT_CLOSED: Final = 499  # the code counted for a client that left before any answer


def read_usage(text: bytes) -> tuple[int | None, int] | None:
    """(prompt tokens or None, completion tokens) of the last `"usage":{...}` in `text`."""
    at = text.rfind(USAGE_MARK)
    if at < 0:
        return None
    start = at + len(USAGE_MARK) - 1  # its `{`
    # Its end: the first `}` that closes as many braces as opened (detail objects nest).
    end = text.find(b"}", start)
    while end >= 0 and text.count(b"{", start, end) > text.count(b"}", start, end) + 1:
        end = text.find(b"}", end + 1)
    body = text[start : end + 1] if end >= 0 else text[start : start + 2048]
    prompt: int | None = None
    completion = 0
    for name, value in _COUNTS.findall(body):
        if name in _PROMPT:
            prompt = int(value)
        else:
            completion = int(value)
    return prompt, completion


def ask_usage(path: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The body fields to send instead, when a stream on `path` would not report its usage
    unasked; None when it will (or this route has no `stream_options`)."""
    if fields.get("stream") is not True or path not in STREAM_OPTIONS_PATHS:
        return None
    opts = fields.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return None
    own = opts if isinstance(opts, dict) else {}
    return {**fields, "stream_options": {**own, "include_usage": True}}


class Meter:
    """One metered request: reads its answer's usage as it is relayed, settles it once."""

    __slots__ = (
        "done",
        "events",
        "held",
        "model",
        "prompt_estimate",
        "reserved",
        "strip",
        "tail",
        "tenancy",
        "tenant",
        "usage",
    )

    def __init__(
        self,
        tenancy: Tenancy,
        tenant: Tenant,
        model: str,
        reserved: int,
        prompt_estimate: int,
        strip: bool = False,
    ) -> None:
        self.tenancy = tenancy
        self.tenant = tenant
        self.model = model
        self.reserved = reserved  # tokens charged at admission, to be settled
        self.prompt_estimate = prompt_estimate
        self.strip = strip  # the router asked for the usage event: keep it from the client
        self.tail = b""
        self.held = b""  # an incomplete event, while stripping
        self.events = 0
        self.usage: tuple[int | None, int] | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The bytes to relay for `data` (all of it, unless stripping the usage event)."""
        if self.strip:
            return self._strip(data)
        self.events += data.count(b"\n\n")
        last = data[-TAIL:]
        self.tail = (self.tail + last)[-TAIL:] if self.tail else last
        return data

    def _strip(self, data: bytes) -> bytes:
        if self.held:
            data = self.held + data
            self.held = b""
        end = data.rfind(b"\n\n")
        cut = end + 2 if end >= 0 else 0
        if cut < len(data):
            # An event split across reads: hold its start (a client cannot use half an event).
            if len(data) - cut > MAX_HELD:
                self.strip = False  # not an SSE stream after all: relay as it is
                return data
            self.held = data[cut:]
            data = data[:cut]
        at = data.find(USAGE_MARK)
        if at >= 0:
            start = data.rfind(b"data:", 0, at)
            stop = data.find(b"\n\n", at) + 2
            event = data[start:stop]
            if start >= 0 and stop > 1 and _EMPTY_CHOICES in event:
                self.usage = read_usage(event)
                data = data[:start] + data[stop:]
        self.events += data.count(b"\n\n")
        return data

    def release(self) -> bytes:
        """What is still held at the end of the answer (relayed as it is)."""
        held, self.held = self.held, b""
        return held

    def settle(self, status: int, relayed: bool, code: int = 0) -> None:
        """The request is over (`status` 0: no answer): charge what it used, once. `code`: the
        status the router answered itself; else the engine's, relayed, or 499 (the client left
        before any answer)."""
        if self.done:
            return
        self.done = True
        prompt = completion = 0
        if relayed and 200 <= status < 300:
            usage = self.usage if self.usage is not None else read_usage(self.tail)
            if usage is not None:
                found, completion = usage
                prompt = self.prompt_estimate if found is None else found
            else:
                prompt = self.prompt_estimate
                completion = max(0, self.events - 1)  # one token an event, less [DONE]
        code = code or (status if relayed else CLIENT_CLOSED)
        self.tenancy.settle(
            self.tenant, self.model, self.reserved, prompt, completion, time.monotonic(), code
        )
