"""Deterministic per-token logprobs in vLLM's chat and completions shapes (pure; no I/O).

A token's logprob follows from its id and position, so equal outputs report equal values in
every process. The sampled token is always the most likely one; its alternatives are other
pieces of the filler text, each less likely than the one before.
"""

from __future__ import annotations

from typing import Any

from vfleet.sim import tokenizer
from vfleet.sim.scheduler import FILLER_TOKENS


def _logprob(token_id: int, pos: int) -> float:
    return -round(0.001 + ((token_id * 2654435761 + pos * 40503) % 997) / 997 * 1.5, 6)


def _pieces(text: str) -> list[tuple[int, str]]:
    return [(t, tokenizer.piece(t)) for t in tokenizer.encode(text)]


def _alternatives(token_id: int, pos: int, count: int) -> list[tuple[str, float]]:
    """The `count` most likely tokens at a position: the sampled one first."""
    best = _logprob(token_id, pos)
    out = [(tokenizer.piece(token_id), best)]
    seen = {out[0][0]}
    n = len(FILLER_TOKENS)
    k = token_id
    while len(out) < count:  # distinct pieces: completions key them by text
        k += 7
        piece = tokenizer.piece(FILLER_TOKENS[k % n])
        if piece in seen:
            if k - token_id > 7 * n:  # every filler piece used: make one up
                piece = f"<{len(out)}>"
            else:
                continue
        seen.add(piece)
        out.append((piece, round(best - 0.75 * len(out) - 0.1, 6)))
    return out


def chat_content(text: str, first_pos: int, top: int) -> list[dict[str, Any]]:
    """Entries of a chat choice's `logprobs.content` for the tokens of `text`."""
    out = []
    for k, (tid, piece) in enumerate(_pieces(text)):
        pos = first_pos + k
        out.append(
            {
                "token": piece,
                "logprob": _logprob(tid, pos),
                "bytes": list(piece.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())}
                    for t, lp in (_alternatives(tid, pos, top) if top > 0 else [])
                ],
            }
        )
    return out


def completion(text: str, first_pos: int, text_offset: int, top: int) -> dict[str, Any]:
    """A completion choice's `logprobs` for the tokens of `text`, which starts at `text_offset`
    of the choice's text."""
    offsets, values, tokens, tops = [], [], [], []
    offset = text_offset
    for k, (tid, piece) in enumerate(_pieces(text)):
        pos = first_pos + k
        offsets.append(offset)
        offset += len(piece)
        values.append(_logprob(tid, pos))
        tokens.append(piece)
        # vLLM lists the sampled token and the top `top`; here the sampled token is the top.
        tops.append(dict(_alternatives(tid, pos, max(top, 1))))
    return {
        "text_offset": offsets,
        "token_logprobs": values,
        "tokens": tokens,
        "top_logprobs": tops,
    }


def count_tokens(text: str) -> int:
    return len(tokenizer.encode(text))
