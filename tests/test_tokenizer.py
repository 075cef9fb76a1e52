"""The 4-byte-piece tokenizer: exact ids, reversibility, prefix stability, `piece`, `valid_ids`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.sim import tokenizer
from vfleet.sim.tokenizer import MAX_TOKEN_ID, PIECE_BYTES, decode, decode_bytes, encode, piece

# Lone surrogates cannot be UTF-8 encoded; the JSON parser in front of the tokenizer rejects them.
no_nul_text = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=200
)
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


def test_empty_text_has_no_tokens() -> None:
    assert encode("") == []
    assert decode([]) == ""
    assert decode_bytes([]) == b""


def test_ids_are_little_endian_u32_of_four_byte_pieces() -> None:
    assert encode("abcd") == [int.from_bytes(b"abcd", "little")]
    assert encode("The ") == [0x20656854]
    # A short last piece is NUL-padded on the right, which is its high bytes in little-endian.
    assert encode("abcde") == [int.from_bytes(b"abcd", "little"), ord("e")]
    assert encode("ab") == [ord("a") | ord("b") << 8]


def test_multibyte_characters_are_cut_at_byte_boundaries() -> None:
    # "é" is two UTF-8 bytes: the first token holds "abc" and half of it.
    ids = encode("abcé")
    assert ids == [int.from_bytes(b"abc\xc3", "little"), 0xA9]
    assert decode(ids) == "abcé"
    assert piece(ids[0]) == "abc\ufffd"
    assert piece(ids[1]) == "\ufffd"


def test_piece_of_a_whole_piece_and_a_padded_one() -> None:
    assert piece(int.from_bytes(b"fox ", "little")) == "fox "
    assert piece(ord("x")) == "x"
    assert piece(0) == ""
    assert piece(MAX_TOKEN_ID) == "\ufffd" * 4  # b"\xff" * 4 is not UTF-8


def test_decode_replaces_invalid_utf8() -> None:
    assert decode([0xFF]) == "\ufffd"
    assert decode_bytes([0xFF]) == b"\xff"


@settings(max_examples=150, deadline=None)
@given(no_nul_text)
def test_round_trip(text: str) -> None:
    ids = encode(text)
    assert decode(ids) == text
    assert decode_bytes(ids) == text.encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(any_text)
def test_token_count_and_id_range(text: str) -> None:
    ids = encode(text)
    n_bytes = len(text.encode("utf-8"))
    assert len(ids) == -(-n_bytes // PIECE_BYTES)
    assert all(type(i) is int and 0 <= i <= MAX_TOKEN_ID for i in ids)
    assert tokenizer.valid_ids(ids)


@settings(max_examples=150, deadline=None)
@given(no_nul_text, no_nul_text, no_nul_text)
def test_equal_prefixes_give_equal_token_prefixes(prefix: str, a: str, b: str) -> None:
    whole = len(prefix.encode("utf-8")) // PIECE_BYTES
    ta, tb = encode(prefix + a), encode(prefix + b)
    assert ta[:whole] == tb[:whole]
    assert ta[:whole] == encode(prefix)[:whole]


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=100))
def test_pieces_of_ascii_text_concatenate_to_the_text(text: str) -> None:
    ids = encode(text)
    pieces = [piece(i) for i in ids]
    assert "".join(pieces) == text
    assert all(0 < len(p) <= PIECE_BYTES for p in pieces)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=MAX_TOKEN_ID), max_size=50))
def test_decode_bytes_is_concatenation_of_pieces(ids: list[int]) -> None:
    assert decode_bytes(ids) == b"".join(decode_bytes([i]) for i in ids)
    for i in ids:
        raw = i.to_bytes(PIECE_BYTES, "little")
        assert decode_bytes([i]) == raw.replace(b"\x00", b"")


def test_valid_ids() -> None:
    assert tokenizer.valid_ids([])
    assert tokenizer.valid_ids([0, 1, MAX_TOKEN_ID])
    assert not tokenizer.valid_ids([-1])
    assert not tokenizer.valid_ids([MAX_TOKEN_ID + 1])
    assert not tokenizer.valid_ids([True])  # bool is an int subclass, not a token id
    assert not tokenizer.valid_ids([1.0])
    assert not tokenizer.valid_ids(["1"])
    assert not tokenizer.valid_ids([1, None])
