"""Response bodies and SSE chunks in vLLM 0.26's shapes (pure; no I/O)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

VLLM_VERSION = "0.26.0"
DONE = b"data: [DONE]\n\n"


def fingerprint(model_path: str) -> str:
    return f"vllm-{VLLM_VERSION}-{hashlib.sha256(model_path.encode()).hexdigest()[:8]}"


def model_card(
    name: str, root: str, parent: str | None, max_len: int | None, created: int
) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_len,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
    }


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str
    finish_reason: str
    stop_reason: str | None


def completion(
    rid: str, created: int, model: str, choices: Iterable[Choice], use: dict[str, Any], fp: str
) -> bytes:
    return orjson.dumps(
        {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c.index,
                    "text": c.text,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
                for c in choices
            ],
            "service_tier": None,
            "system_fingerprint": fp,
            "usage": use,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def chat_completion(
    rid: str, created: int, model: str, choices: Iterable[Choice], use: dict[str, Any], fp: str
) -> bytes:
    return orjson.dumps(
        {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c.index,
                    "message": {
                        "role": "assistant",
                        "content": c.text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                    "token_ids": None,
                    "routed_experts": None,
                }
                for c in choices
            ],
            "service_tier": None,
            "system_fingerprint": fp,
            "usage": use,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def with_usage(chunk: bytes, prompt: int, completion: int) -> bytes:
    """A stream chunk with `usage` added (stream_options.continuous_usage_stats)."""
    use = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    assert chunk.endswith(b"}\n\n")
    return chunk[:-3] + b',"usage":' + orjson.dumps(use) + b"}\n\n"


class ChunkEncoder:
    """SSE events of one streamed request, with the constant parts encoded once."""

    __slots__ = ("_chat", "_head", "_tail")

    def __init__(self, chat: bool, rid: str, created: int, model: str) -> None:
        self._chat = chat
        obj, prefix = ("chat.completion.chunk", "chatcmpl") if chat else ("text_completion", "cmpl")
        self._head = b'data: {"id":"%s-%s","object":"%s","created":%d,"model":%s' % (
            prefix.encode(),
            rid.encode(),
            obj.encode(),
            created,
            orjson.dumps(model),
        )
        self._tail = (
            b',"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
            if chat
            else b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
            b'"prompt_token_ids":null,"token_ids":null}]}\n\n'
        )

    def role(self, index: int) -> bytes:
        return self._head + (
            b',"choices":[{"index":%d,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
            % index
        )

    def delta(self, index: int, text: str) -> bytes:
        if self._chat:
            body = b',"choices":[{"index":%d,"delta":{"content":%s}' % (index, orjson.dumps(text))
        else:
            body = b',"choices":[{"index":%d,"text":%s' % (index, orjson.dumps(text))
        return self._head + body + self._tail

    def final(
        self, index: int, text: str, finish: str, stop_reason: str | None, fp: str | None
    ) -> bytes:
        choice: dict[str, Any] = {"index": index}
        if self._chat:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=finish, stop_reason=stop_reason)
        if not self._chat:
            choice["prompt_token_ids"] = None
        choice["token_ids"] = None
        extra = b',"system_fingerprint":%s' % orjson.dumps(fp) if fp else b""
        return self._head + b',"choices":[%s]%s}\n\n' % (orjson.dumps(choice), extra)

    def usage(self, prompt: int, completion: int, fp: str) -> bytes:
        use = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }
        return self._head + b',"choices":[],"usage":%s,"system_fingerprint":%s}\n\n' % (
            orjson.dumps(use),
            orjson.dumps(fp),
        )


def embeddings(rid: str, created: int, model: str, vectors: list[Any], prompt_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"embd-{rid}",
            "object": "list",
            "created": created,
            "model": model,
            "data": [
                {"index": i, "object": "embedding", "embedding": v} for i, v in enumerate(vectors)
            ],
            "usage": usage(prompt_tokens, 0),
        }
    )


def scores(rid: str, created: int, model: str, values: list[float], prompt_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"score-{rid}",
            "object": "list",
            "created": created,
            "model": model,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(values)],
            "usage": usage(prompt_tokens, 0),
        }
    )


def rerank(
    rid: str, model: str, docs: tuple[str, ...], values: list[float], top_n: int, tokens: int
) -> bytes:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    if top_n:
        order = order[:top_n]
    return orjson.dumps(
        {
            "id": f"score-{rid}",
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": [
                {
                    "index": i,
                    "document": {"text": docs[i], "multi_modal": None},
                    "relevance_score": values[i],
                }
                for i in order
            ],
        }
    )
