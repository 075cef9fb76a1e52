"""Incremental tokenization: a prompt that shares a long text prefix with one tokenized before
takes that one's token ids up to a safe cut and encodes only the rest.

Owns the prefix cache (anchors, entries and their bounds), where a text may be cut, and the
self-check that decides, once per tokenizer, whether it may be cut at all. Pure: the tokenizer
comes in as a function (`router.kvchain` hands in Hugging Face `tokenizers`), and the pool
threads that share one cache serialize on the `guard` their caller gives.

Why a cut is exact. A full encode splits the text into pre-tokens (regex or whitespace splits,
after the normalizer; added tokens first) and the model encodes each pre-token alone. A cut at
character c of an earlier text, where that text's encoding starts a new pre-token (a new word id,
offsets touching the previous token's), is a cut of any later text equal to it through
c + `margin`: the splits before c were decided by characters up to c (the greedy runs that ended
there stopped at c, because the character class changes there, which is also required), and the
splits from c on are what encoding text[c:] alone finds, as long as the tokenizer adds nothing
at the start of a text (a prefix space, a prepended ▁). Tokenizers differ in exactly those
ways, so `self_check` compares incremental and full encodes on generated texts (whitespace runs,
digits, combining marks, added tokens, chat templates) and a tokenizer that fails once is never
cut (its caller encodes in full).

Anchors: every `anchor_chars` characters a running hash of the text so far keys the cached text
that a text sharing that much may reuse. Looking a text up hashes its own prefixes and takes the
longest anchor whose text really matches, then compares on in steps of `cut_chars` (finer: a
prompt's shared prefix rarely ends at an anchor) to find how much it really shares; it is cut at
the last safe cut at least `margin` characters before that, kept per step (measured, issue 11:
with 512-character anchors alone a hit re-encoded ~300 characters of the shared text, ~28% of
what it encoded; steps of 128 leave ~125, their cuts ~3 us each to find: a hit 10% cheaper).
"""

from __future__ import annotations

import contextlib
import random
import unicodedata
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

ANCHOR_CHARS: Final = 512  # text between two anchors (hashed: what a lookup costs)
CUT_CHARS: Final = 128  # text between kept cuts (a hit re-encodes at most that, besides; 8 B each)
MARGIN_CHARS: Final = 32  # a cut stays this far before the shared text ends (plus added tokens)
# Per tokenizer (a router keeps up to 64): ~4 MB of ids and 4 M characters, e.g. 200 prompts of
# 20,000 characters, or a thousand shorter ones.
MAX_ENTRIES: Final = 1024  # texts whose tokens are kept
MAX_TOKENS: Final = 2**20  # their tokens, all together (4 bytes each)
MAX_CHARS: Final = 2**22  # their characters, all together
WALK_TOKENS: Final = 48  # tokens looked back from a step's end for a safe cut

CHECK_ANCHOR_CHARS: Final = 24  # the self-check's cut steps (plus the margin): many cuts
CHECK_TEXTS: Final = 12
CHECK_CUTS: Final = 4  # shared lengths tried per text

# Pieces the self-check's texts are made of: what tokenizers treat differently at a boundary.
_TRICKY: Final = (
    " ",
    "  ",
    "   ",
    "\n",
    "\n\n",
    "\t",
    " \n ",
    "\r\n",
    " " * 40,
    "\n" * 9,
    "\u00a0",
    "\u3000",
    "the",
    " quick",
    " brown",
    "fox",
    " jumps",
    "don't",
    " it's",
    " WE'LL",
    "x",
    "I",
    "a",
    ".",
    ",",
    "!?",
    "...",
    "(",
    ")",
    "[x]",
    "{}",
    '"',
    "'",
    "`",
    "#",
    "->",
    "==",
    "//",
    "<",
    ">",
    "0",
    "7",
    "12",
    "345",
    " 2026",
    "3.14",
    "1,000",
    "\u00bd",
    "\u216b",
    "\u0663\u0664",
    "caf\u00e9",
    "cafe\u0301",
    "na\u00efve",
    "\u65e5\u672c\u8a9e\u306e",
    "\ud55c\uad6d\uc5b4",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0639\u0631\u0628\u0649",
    "\U0001f600",
    "\U0001f44d\U0001f3fd",
    "\U0001f468\u200d\U0001f469",
    "\u2764\ufe0f",
    "\u200b",
    "\ufb01",
    "\u00c5",
    "A\u030a",
    "\u0130",
    "\u00df",
    "a" * 70,
    "9" * 50,
    "." * 30,
)


class Encoding(Protocol):
    """What is read of one encode's result (a `tokenizers.Encoding`)."""

    @property
    def ids(self) -> list[int]: ...

    def char_to_token(self, char_pos: int, /) -> int | None: ...

    def token_to_chars(self, token_index: int, /) -> tuple[int, int] | None: ...

    def token_to_word(self, token_index: int, /) -> int | None: ...


Encode = Callable[[str], Encoding]  # a text's tokens, special tokens not added


@dataclass(eq=False, slots=True)
class Entry:
    """One tokenized text and, per anchor, where a text sharing that anchor may be cut."""

    text: str
    ids: array[int]  # its token ids (special tokens not added)
    cut_chars: array[int]  # per step j = 1.. of cut_chars: the cut's character (0: no cut)
    cut_tokens: array[int]  # per step: tokens before the cut
    keys: list[int]  # per anchor: the running hash of the text through it
    memo: dict[Any, Any] = field(default_factory=dict)  # the caller's (chain hashes), bounded there


@dataclass(slots=True)
class Plan:
    """What a text's encode will reuse; `todo` characters are left to encode."""

    text: str
    keys: list[int]
    source: Entry | None = None  # the cached text it shares anchors with
    shared: int = 0  # cut steps it shares with it (all of their text)
    cut_char: int = 0
    cut_token: int = 0

    @property
    def exact(self) -> bool:
        return self.source is not None and self.source.text == self.text

    @property
    def todo(self) -> int:
        return 0 if self.exact else len(self.text) - self.cut_char


@dataclass(frozen=True, slots=True)
class Encoded:
    """A text's token ids, as a full encode gives them."""

    ids: array[int]
    reused: int  # leading ids taken from `source`
    source: Entry | None
    entry: Entry | None  # the text's own entry (None: not cached)


def char_kind(ch: str) -> int:
    """The class of a character a pre-tokenizer's runs are made of."""
    if ch.isspace():
        return 0
    if ch.isalpha():
        return 1
    return 2 if ch.isnumeric() else 3


def may_cut_between(before: str, after: str) -> bool:
    """Whether a cut between these two characters can be a pre-token boundary that nothing after
    it decided: the run before ends there, and `after` does not attach to what precedes it."""
    if char_kind(before) == char_kind(after):
        return False
    # combining marks, joiners, variation selectors, surrogates: they belong to the previous char
    return unicodedata.category(after) not in ("Mn", "Mc", "Me", "Cf", "Cs")


class PrefixCache:
    """Tokenized texts by anchor, bounded by count, tokens and characters (least recently used
    go first). Not thread-safe: `Incremental` calls it under its guard."""

    def __init__(
        self,
        anchor_chars: int = ANCHOR_CHARS,
        margin: int = MARGIN_CHARS,
        max_entries: int = MAX_ENTRIES,
        max_tokens: int = MAX_TOKENS,
        max_chars: int = MAX_CHARS,
        cut_chars: int | None = None,
    ) -> None:
        if anchor_chars <= margin:
            raise ValueError("anchors must be further apart than the margin")
        if cut_chars is None:  # CUT_CHARS where it divides the anchors' distance
            cut_chars = CUT_CHARS if anchor_chars % CUT_CHARS == 0 else anchor_chars
        if cut_chars <= 0 or anchor_chars % cut_chars:
            raise ValueError("cut steps must divide the anchors' distance")
        self.anchor_chars = anchor_chars
        self.cut_chars = cut_chars
        self.margin = margin
        self.max_entries = max_entries
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # id(entry) -> entry
        self._anchors: dict[int, tuple[Entry, int]] = {}  # key -> (entry, anchor number)
        self.tokens = 0
        self.chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def anchors(self) -> int:
        return len(self._anchors)

    def clear(self) -> None:
        self._entries.clear()
        self._anchors.clear()
        self.tokens = self.chars = 0

    def keys(self, text: str) -> list[int]:
        """The running hash of `text` through each of its anchors (computed outside the guard)."""
        n = self.anchor_chars
        out: list[int] = []
        h = 0
        for end in range(n, len(text) + 1, n):
            h = hash((h, text[end - n : end]))
            out.append(h)
        return out

    def plan(self, text: str, keys: list[int]) -> Plan:
        """The longest cached prefix `text` may reuse (its text compared, not only its hash)."""
        anchors, step = self._anchors, self.cut_chars
        for k in range(len(keys), 0, -1):
            hit = anchors.get(keys[k - 1])
            if hit is None:
                continue
            entry, number = hit
            if number != k:
                continue
            done = k * self.anchor_chars
            if not entry.text.startswith(text[:done]):
                continue  # a hash collision
            # shared past the anchor: whole steps compared (at most the texts' length)
            j, last = done // step, min(len(entry.cut_chars), len(text) // step)
            other = entry.text
            while (
                j < last and text[j * step : j * step + step] == other[j * step : j * step + step]
            ):
                j += 1
            if not entry.cut_tokens[j - 1]:
                continue  # no cut that early (cuts only move on: none before either)
            self._entries.move_to_end(id(entry))
            return Plan(text, keys, entry, j, entry.cut_chars[j - 1], entry.cut_tokens[j - 1])
        return Plan(text, keys)

    def add(self, entry: Entry) -> None:
        """Keep `entry`; its anchors now lead to it (the newest text with a prefix is kept
        longest). Texts without an anchor (never found) or over a quarter of a bound are not."""
        if not entry.keys:
            return
        if len(entry.text) * 4 > self.max_chars or len(entry.ids) * 4 > self.max_tokens:
            return
        self._entries[id(entry)] = entry
        self.tokens += len(entry.ids)
        self.chars += len(entry.text)
        for k, key in enumerate(entry.keys, 1):
            self._anchors[key] = (entry, k)
        while (
            len(self._entries) > self.max_entries
            or self.tokens > self.max_tokens
            or self.chars > self.max_chars
        ):
            _, old = self._entries.popitem(last=False)
            self.tokens -= len(old.ids)
            self.chars -= len(old.text)
            for key in old.keys:
                hit = self._anchors.get(key)
                if hit is not None and hit[0] is old:
                    del self._anchors[key]


class Incremental:
    """Encodes texts through a `PrefixCache`: a cached prefix's ids plus an encode of the rest.

    `plan` (cheap, under `guard`) says how much is left to encode, so that a caller can decide
    whether to wait; `encode` does it (the tokenizer outside the guard) and caches the text."""

    def __init__(
        self,
        encode: Encode,
        cache: PrefixCache,
        guard: AbstractContextManager[Any] | None = None,
    ) -> None:
        self._encode = encode
        self.cache = cache
        self._guard: AbstractContextManager[Any] = guard or contextlib.nullcontext()

    def plan(self, text: str) -> Plan:
        keys = self.cache.keys(text)
        with self._guard:
            return self.cache.plan(text, keys)

    def encode(self, plan: Plan) -> Encoded:
        source = plan.source
        if source is not None and plan.exact:
            return Encoded(source.ids, len(source.ids), source, source)
        text, cut_c, cut_t = plan.text, plan.cut_char, plan.cut_token
        enc = self._encode(text[cut_c:] if cut_c else text)
        try:
            rest = array("I", enc.ids)
        except OverflowError:  # ids over 32 bits: not cached, never cut
            return Encoded(array("Q", enc.ids), 0, None, None)
        ids = source.ids[:cut_t] + rest if source is not None else rest
        if source is None:  # nothing reused: no cut before the first anchor's
            chars, toks = array("I"), array("I")
        else:  # the source's cuts in the shared steps are the text's too
            chars, toks = source.cut_chars[: plan.shared], source.cut_tokens[: plan.shared]
        # a text without an anchor is never cached: no cuts to find
        steps = len(text) // self.cache.cut_chars if plan.keys else 0
        self._cuts(text, enc, cut_c, cut_t, chars, toks, steps)
        entry = Entry(text, ids, chars, toks, plan.keys)
        with self._guard:
            self.cache.add(entry)
        return Encoded(ids, cut_t if source is not None else 0, source, entry)

    def _cuts(
        self,
        text: str,
        enc: Encoding,
        base_c: int,
        base_t: int,
        chars: array[int],
        toks: array[int],
        steps: int,
    ) -> None:
        """Append the cuts of steps len(chars)+1..`steps`, found in `enc` (the encoding of
        text[base_c:], which starts after base_t tokens; base_c is a cut itself when > 0)."""
        n, margin = self.cache.cut_chars, self.cache.margin
        last_c, last_t = (chars[-1], toks[-1]) if chars else (base_c, base_t)
        for k in range(len(chars) + 1, steps + 1):
            local = k * n - margin - base_c  # the cut's latest character, in enc
            found = _cut_before(text, enc, base_c, local)
            if found is not None:
                last_c, last_t = base_c + found[0], base_t + found[1]
            chars.append(last_c)
            toks.append(last_t)


def _cut_before(text: str, enc: Encoding, base: int, local: int) -> tuple[int, int] | None:
    """(character, token index) in `enc` of the last safe cut at or before character `local`
    within WALK_TOKENS tokens; (0, 0) at enc's start when `base` > 0 (a cut already)."""
    j = None
    for back in range(min(local, 64) + 1):  # a character no token covers (stripped): go back
        j = enc.char_to_token(local - back)
        if j is not None:
            break
    if j is None:
        return None
    for i in range(j, max(j - WALK_TOKENS, -1), -1):
        if i == 0:
            return (0, 0) if base > 0 else None
        here, prev = enc.token_to_chars(i), enc.token_to_chars(i - 1)
        if here is None or prev is None or here[0] > local:
            continue
        if prev[1] != here[0] or prev[0] >= here[0]:
            continue  # trimmed offsets, or a character split over tokens
        word, prev_word = enc.token_to_word(i), enc.token_to_word(i - 1)
        if word is None or prev_word is None or word == prev_word:
            continue
        c = base + here[0]
        if c > 0 and may_cut_between(text[c - 1], text[c]):
            return here[0], i
    return None


# -- the self-check ------------------------------------------------------------------------------


def check_texts(
    pieces: Sequence[str], specials: Sequence[str], rng: random.Random, count: int = CHECK_TEXTS
) -> list[str]:
    """Texts made of the tokenizer's own pieces, the tricky ones above and its added tokens."""
    pool = [*_TRICKY, *pieces, *pieces]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(150, 400)):
            if specials and rng.random() < 0.03:
                parts.append(rng.choice(["", " ", "\n"]) + rng.choice(specials))
            else:
                parts.append(rng.choice(pool))
        out.append("".join(parts))
    return out


def self_check(
    encode: Encode, texts: Sequence[str], margin: int, rng: random.Random
) -> tuple[str | None, int]:
    """(None, cuts used) when every incremental encode of `texts` equals the full encode, else
    (what differed, cuts used). Each text is encoded after one that shares a random prefix with
    it, then goes on differently (a new suffix) or not at all (a conversation growing)."""
    # cut steps as dense as the anchors were, anchors two steps apart: a cut between anchors
    # (the shared text compared past its anchor) is checked too
    step = CHECK_ANCHOR_CHARS + margin
    cache = PrefixCache(anchor_chars=2 * step, margin=margin, cut_chars=step)
    inc = Incremental(encode, cache)
    used = 0
    for i, text in enumerate(texts):
        full = list(encode(text).ids)
        other = texts[(i + 1) % len(texts)]
        for attempt in range(CHECK_CUTS):
            share = rng.randrange(1, len(text) + 1)
            earlier = text[:share]
            if attempt % 2 == 0:
                earlier += other[rng.randrange(len(other) + 1) :]
            cache.clear()
            inc.encode(inc.plan(earlier))
            got = inc.encode(inc.plan(text))
            if list(got.ids) != full:
                where = next(
                    (n for n, (a, b) in enumerate(zip(got.ids, full, strict=False)) if a != b),
                    min(len(got.ids), len(full)),
                )
                return f"token {where} differs after a cut at {got.reused} tokens", used
            used += got.reused > 0
    return None, used
