"""The simulator's deterministic tokenizer.

Text is encoded as UTF-8 and cut into 4-byte pieces; each piece is one token whose id is the piece
read as a little-endian unsigned 32-bit integer (a short last piece is padded with NUL bytes, which
decoding strips). The scheme is reversible, needs no vocabulary file, gives about one token per
four characters of English text (close to a real BPE tokenizer), and maps equal text prefixes to
equal token prefixes, so prefix caching and KV-cache events are reproducible across processes.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

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


_BIG_ENDIAN = array("I", [1]).tobytes()[0] == 0
