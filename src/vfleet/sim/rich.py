"""Chat and completion answers that carry more than text: tool calls, JSON fixed by a grammar,
logprobs. Bodies and stream chunks in vLLM 0.26's shapes (pure; no I/O).

Requests without these features never come here: `jobs.FullJob` and `jobs.StreamJob` answer them
with the pre-encoded fast path of `responses`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from vfleet.sim import logprobs, responses
from vfleet.sim.api import Sampling
from vfleet.sim.scheduler import Finish, Sequence
from vfleet.sim.structured import Extras, Forced

TOOL_KINDS = ("tool", "required")


def tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def seq_text(seq: Sequence, forced: Forced | None) -> str:
    """What a client sees of `seq`'s output so far."""
    if forced is None:
        return seq.text_bytes(0, seq.safe_bytes()).decode("utf-8", errors="replace")
    return forced.shown(seq.safe_bytes(), seq.finish is Finish.STOP)


def finish_reason(seq: Sequence, forced: Forced | None) -> str:
    """vLLM: `required` tool calls finish with "tool_calls"; a named tool's call with "stop"."""
    reason = seq.finish.value if seq.finish else "abort"
    if forced is not None and forced.kind == "required" and reason == "stop":
        return "tool_calls"
    return reason


def prompt_tokens(seqs: list[Sequence], n: int) -> int:
    return sum(len(s.prompt) for s in seqs[::n])


def chat_body(
    rid: str, model: str, seqs: list[Sequence], n: int, extras: Extras, fp: str
) -> dict[str, Any]:
    """A non-streamed chat completion, as a dict (the Anthropic route converts it)."""
    forced = extras.forced
    texts = [seq_text(s, forced) for s in seqs]
    choices = [
        responses.Choice(s.index, text, s.finish.value if s.finish else "abort", s.stop_reason)
        for s, text in zip(seqs, texts, strict=True)
    ]
    use = responses.usage(prompt_tokens(seqs, n), sum(s.n_out for s in seqs))
    body: dict[str, Any] = orjson.loads(
        responses.chat_completion(rid, int(time.time()), model, choices, use, fp)
    )
    for choice, seq, text in zip(body["choices"], seqs, texts, strict=True):
        msg = choice["message"]
        if forced is not None and forced.kind in TOOL_KINDS:
            msg["content"] = ""
            msg["tool_calls"] = [
                {
                    "id": tool_call_id(),
                    "type": "function",
                    "function": {"name": forced.name, "arguments": text},
                }
            ]
        choice["finish_reason"] = finish_reason(seq, forced)
        if extras.logprobs is not None:
            choice["logprobs"] = {"content": logprobs.chat_content(text, 0, extras.logprobs)}
    return body


def completion_body(
    rid: str, model: str, seqs: list[Sequence], n: int, extras: Extras, fp: str
) -> bytes:
    texts = [seq_text(s, extras.forced) for s in seqs]
    choices = [
        responses.Choice(s.index, text, s.finish.value if s.finish else "abort", s.stop_reason)
        for s, text in zip(seqs, texts, strict=True)
    ]
    use = responses.usage(prompt_tokens(seqs, n), sum(s.n_out for s in seqs))
    body = orjson.loads(responses.completion(rid, int(time.time()), model, choices, use, fp))
    if extras.logprobs is not None:
        for choice, text in zip(body["choices"], texts, strict=True):
            choice["logprobs"] = logprobs.completion(text, 0, 0, extras.logprobs)
    return orjson.dumps(body)


class ChatStream:
    """SSE chunks of a streamed chat completion with tool calls, forced JSON or logprobs
    (a `jobs.StreamRenderer`), as vLLM streams them."""

    def __init__(
        self,
        rid: str,
        model: str,
        seqs: list[Sequence],
        extras: Extras,
        sampling: Sampling,
        fp: str,
    ) -> None:
        created = int(time.time())  # one stamp: the encoder's chunks and these agree
        self.enc = responses.ChunkEncoder(True, rid, created, model)
        self.head = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self.extras = extras
        self.n = sampling.n
        self.count = len(seqs)
        self.sent = [0] * len(seqs)  # characters of each choice's text sent
        self.tool_started = [False] * len(seqs)
        self.started = False
        self.include_usage = sampling.include_usage
        self.continuous = sampling.continuous_usage  # usage in every chunk
        self.prompt_len = len(seqs[0].prompt)
        self.fp = fp

    def _delta(self, i: int, text: str) -> dict[str, Any]:
        forced = self.extras.forced
        if forced is None or forced.kind not in TOOL_KINDS:
            return {"content": text}
        if not self.tool_started[i]:
            self.tool_started[i] = True
            call = {
                "id": tool_call_id(),
                "type": "function",
                "index": 0,
                "function": {"name": forced.name, "arguments": text},
            }
            return {"tool_calls": [call]}
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    def _chunk(self, choice: dict[str, Any], fp: str | None = None) -> bytes:
        body = {**self.head, "choices": [choice]}
        if fp is not None:
            body["system_fingerprint"] = fp
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def progress(self, seq: Sequence) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.extend(self._usage(self.enc.role(i), 0) for i in range(self.count))
        i = seq.index
        text = seq_text(seq, self.extras.forced)
        new = text[self.sent[i] :]
        first_pos = len(text[: self.sent[i]].encode()) // 4
        self.sent[i] = len(text)
        lp = None
        if self.extras.logprobs is not None and new:
            lp = {"content": logprobs.chat_content(new, first_pos, self.extras.logprobs)}
        if seq.finish is None:
            if new:
                choice = {
                    "index": i,
                    "delta": self._delta(i, new),
                    "logprobs": lp,
                    "finish_reason": None,
                    "token_ids": None,
                }
                out.append(self._usage(self._chunk(choice), seq.n_out))
            return b"".join(out)
        choice = {
            "index": i,
            "delta": self._delta(i, new) if new else {},
            "logprobs": lp,
            "finish_reason": finish_reason(seq, self.extras.forced),
            "stop_reason": seq.stop_reason,
            "token_ids": None,
        }
        chunk = self._chunk(choice, None if self.include_usage else self.fp)
        out.append(self._usage(chunk, seq.n_out))
        return b"".join(out)

    def _usage(self, chunk: bytes, completion_tokens: int) -> bytes:
        if not self.continuous:
            return chunk
        return responses.with_usage(chunk, self.prompt_len, completion_tokens)

    def end(self, seqs: list[Sequence]) -> bytes:
        tail = b""
        if self.include_usage:
            completion = sum(s.n_out for s in seqs)
            tail = self.enc.usage(prompt_tokens(seqs, self.n), completion, self.fp)
        return tail + responses.DONE


class CompletionStream:
    """SSE chunks of a streamed completion with logprobs or forced JSON (a
    `jobs.StreamRenderer`)."""

    def __init__(
        self,
        rid: str,
        model: str,
        seqs: list[Sequence],
        n: int,
        extras: Extras,
        usage: bool,
        fp: str,
    ) -> None:
        created = int(time.time())  # one stamp: the encoder's chunks and these agree
        self.enc = responses.ChunkEncoder(False, rid, created, model)
        self.head = {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": created,
            "model": model,
        }
        self.extras = extras
        self.n = n
        self.sent = [0] * len(seqs)
        self.include_usage = usage
        self.fp = fp

    def progress(self, seq: Sequence) -> bytes:
        i = seq.index
        text = seq_text(seq, self.extras.forced)
        new = text[self.sent[i] :]
        start = self.sent[i]
        self.sent[i] = len(text)
        if seq.finish is None and not new:
            return b""
        choice: dict[str, Any] = {
            "index": i,
            "text": new,
            "logprobs": None
            if self.extras.logprobs is None
            else logprobs.completion(
                new, len(text[:start].encode()) // 4, start, self.extras.logprobs
            ),
            "finish_reason": None if seq.finish is None else seq.finish.value,
            "stop_reason": None if seq.finish is None else seq.stop_reason,
            "prompt_token_ids": None,
            "token_ids": None,
        }
        body: dict[str, Any] = {**self.head, "choices": [choice]}
        if seq.finish is not None and not self.include_usage:
            body["system_fingerprint"] = self.fp
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def end(self, seqs: list[Sequence]) -> bytes:
        tail = b""
        if self.include_usage:
            completion = sum(s.n_out for s in seqs)
            tail = self.enc.usage(prompt_tokens(seqs, self.n), completion, self.fp)
        return tail + responses.DONE
