"""The simulator's deterministic tokenizer.

Text is encoded as UTF-8 and cut into 4-byte pieces; each piece is one token whose id is the piece
read as a little-endian unsigned 32-bit integer (a short last piece is padded with NUL bytes, which
decoding strips). The scheme is reversible, needs no vocabulary file, gives about one token per
four characters of English text (close to a real BPE tokenizer), and maps equal text prefixes to
equal token prefixes, so prefix caching and KV-cache events are reproducible across processes.

Prompts go through a `PromptCodec` chosen once at start: `Pieces` (this scheme, ChatML chats) by
default, or with `vfleet sim --tokenizer DIR` a Hugging Face tokenizer (`sim.hftok`: DIR's
tokenizer.json, chats rendered with its chat template), so that prefix caching, KV events and
usage count a real tokenizer's ids, and a router's `kv` policy pays a real tokenizer's cost. Only
the prompt side switches; generated text stays this module's filler pieces (the functions below),
whose byte arithmetic the scheduler relies on.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

PIECE_BYTES = 4
MAX_TOKEN_ID = 2**32 - 1


def encode(text: str) -> list[int]:
    """Token ids of `text`."""
    data = text.encode("utf-8")
    pad = -len(data) % PIECE_BYTES
    if pad:
        data += b"\x00" * pad
    if not _BIG_ENDIAN:
        return memoryview(data).cast("I").tolist()
    ids = array("I")
    ids.frombytes(data)
    ids.byteswap()
    return ids.tolist()


def decode_bytes(ids: Iterable[int]) -> bytes:
    """Raw bytes of `ids` with the NUL padding of short pieces removed."""
    arr = array("I", ids)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes().replace(b"\x00", b"")


def decode(ids: Iterable[int]) -> str:
    """Text of `ids`; invalid UTF-8 becomes U+FFFD, as in Hugging Face tokenizers."""
    return decode_bytes(ids).decode("utf-8", errors="replace")


def piece(token_id: int) -> str:
    """The text of one token, as `/tokenize` reports it in `token_strs`."""
    return decode((token_id,))


def valid_ids(ids: Sequence[object]) -> bool:
    """True when every element is an int token id this tokenizer can decode."""
    return all(type(i) is int and 0 <= i <= MAX_TOKEN_ID for i in ids)


class PromptCodec(Protocol):
    """How a simulator turns prompts into token ids and back: `Pieces` (this module's 4-byte
    pieces, ChatML chats; the default) or `sim.hftok.HfPromptTokenizer` (`--tokenizer DIR`).
    Chosen once at start and handed to the request parsers and the server's routes."""

    @property
    def directory(self) -> str | None:
        """The model directory the tokenizer was read from; None for the built-in pieces."""
        ...

    def encode(self, text: str, special: bool) -> list[int]:
        """A prompt's token ids: a completion's prompt with special tokens (`special`), a
        rendered chat without (its template has them), as vLLM encodes them."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a prompt's ids (/detokenize, pooling inputs)."""
        ...

    def piece(self, token_id: int) -> str:
        """One prompt token's text, as `/tokenize` reports it in `token_strs`."""
        ...

    def render_chat(
        self, messages: list[Any], turns: list[tuple[str, str]], add_generation_prompt: bool
    ) -> str:
        """A checked chat's prompt text. `turns` is each message's (role, text) as the caller
        already extracted them while checking `messages` (text parts joined); a template that
        needs the messages as sent reads `messages` instead."""
        ...


class Pieces:
    """The built-in prompt codec: this module's 4-byte pieces, chats rendered as ChatML (as the
    Qwen family's chat template does). It has no special tokens, so `special` changes nothing."""

    directory: str | None = None

    def encode(self, text: str, special: bool) -> list[int]:
        return encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return decode(ids)

    def piece(self, token_id: int) -> str:
        return piece(token_id)

    def render_chat(
        self, messages: list[Any], turns: list[tuple[str, str]], add_generation_prompt: bool
    ) -> str:
        out = [f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns]
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)


_BIG_ENDIAN = array("I", [1]).tobytes()[0] == 0
