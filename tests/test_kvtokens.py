"""Incremental tokenization (router.kvtokens, through router.kvtokenizer and router.kvchain):
with tokenizers trained here on the standard library's sources (nothing downloaded), a prompt
that reuses a cached prompt's ids up to a cut gets exactly the ids a full encode gives; the
self-check refuses tokenizers that add something at a text's start; every cache is bounded; and
`Chains` answers a prompt that needs a full encode at once (computing it in the background for
the next request), and bounds the computations under way."""

from __future__ import annotations

import glob
import json
import os
import random
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfleet.router.kvchain import CHATML, Chains, HfTokenizer, Prompt, text_chain
from vfleet.router.kvindex import chain_hashes
from vfleet.router.kvtokens import (
    Incremental,
    PrefixCache,
    char_kind,
    check_texts,
    may_cut_between,
)

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]


def stdlib_files(budget: int = 400_000) -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files: list[str] = []
    size = 0
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        files.append(path)
        size += os.path.getsize(path)
        if size > budget:
            break
    return files


def build(kind: str, files: list[str]) -> Any:
    """A small tokenizer of one family, trained on `files`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    byte_level = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=kind.startswith("metaspace")))
    if kind == "bytelevel":  # Qwen's and GPT-2's kind
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif kind == "bytelevel-prefix-space":  # adds a space before every text: never cut
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif kind == "llama3":  # its split regex, then bytes
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif kind == "metaspace":  # SentencePiece-like: ▁ for spaces, prepended to every text
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    elif kind == "metaspace-first":  # prepended to the first piece only: never cut
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    alphabet = [] if kind.startswith("metaspace") else byte_level  # metaspace: byte fallback
    trainer = trainers.BpeTrainer(
        vocab_size=3000, special_tokens=SPECIALS, show_progress=False, initial_alphabet=alphabet
    )
    tok.train(files, trainer)
    bos = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    if kind == "llama3":
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), bos])
    elif kind == "metaspace":
        tok.post_processor = bos
    elif kind.startswith("bytelevel"):
        tok.post_processor = processors.ByteLevel(trim_offsets=kind != "bytelevel")
    tok.decoder = decoders.Metaspace() if kind.startswith("metaspace") else decoders.ByteLevel()
    return tok


KINDS = ["bytelevel", "llama3", "metaspace", "bytelevel-prefix-space", "metaspace-first"]
EXACT = KINDS[:3]  # the families the self-check accepts


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model directories (tokenizer.json, a ChatML chat template) of each family."""
    files = stdlib_files()
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        build(kind, files).save(str(folder / "tokenizer.json"))
        config = {"chat_template": CHATML, "bos_token": "<s>", "eos_token": "</s>"}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        out[kind] = folder
    return out


@pytest.fixture(scope="module")
def loaded(models: dict[str, Path]) -> dict[str, HfTokenizer]:
    out = {}
    for kind, folder in models.items():
        config = json.loads((folder / "tokenizer_config.json").read_text())
        out[kind] = HfTokenizer(folder / "tokenizer.json", config, CHATML, name=kind)
    return out


# Texts made of what tokenizers treat differently at a boundary, long enough for several anchors.
segment = st.one_of(
    st.sampled_from(
        [
            " ",
            "  ",
            "\n",
            "\n\n",
            "\t",
            " " * 30,
            "the",
            " quick",
            "don't",
            " it's",
            "(",
            ").",
            "12",
            "345678",
            " 2026",
            "caf\u00e9",
            "cafe\u0301",
            "\u65e5\u672c",
            "\U0001f44d\U0001f3fd",
            "\u200d",
            "\ufe0f",
            "<|im_start|>",
            "<|im_end|>",
            "<s>",
            " <s> ",
            "a" * 40,
            "==",
            "'s",
        ]
    ),
    st.text(alphabet=" \n\tabcXYZ019.,!?'\"()-_/\u00e9\u0301\u00a0\u4e2d\U0001f600", max_size=12),
)
texts = st.lists(segment, min_size=60, max_size=400).map("".join)


def encode_full(tok: HfTokenizer, text: str, special: bool) -> list[int]:
    return tok.rust.encode(text, add_special_tokens=special).ids


def test_the_self_check_accepts_what_cuts_exactly_and_refuses_the_rest(
    loaded: dict[str, HfTokenizer],
) -> None:
    for kind in EXACT:
        assert loaded[kind].incremental is not None, (kind, loaded[kind].refused)
    for kind in ("bytelevel-prefix-space", "metaspace-first"):
        tok = loaded[kind]
        assert tok.incremental is None and tok.refused, kind
        text = "hello world, " * 200
        assert tok.plan(text, True) is None  # encoded in full, always
        assert tok.encode(text, True) == encode_full(tok, text, True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, other=texts, share=st.floats(0, 1), grow=st.booleans(), special=st.booleans())
def test_an_incremental_encode_equals_the_full_one(
    loaded: dict[str, HfTokenizer], text: str, other: str, share: float, grow: bool, special: bool
) -> None:
    """A text encoded after one sharing a prefix with it (a conversation that grew, or a new
    suffix): the ids are the full encode's, with the router's anchors and with dense ones."""
    cut = int(len(text) * share)
    earlier = text[:cut] if grow else text[:cut] + other
    for kind, tok in loaded.items():
        full = encode_full(tok, text, special)
        for t in (earlier, text):
            plan = tok.plan(t, special)
            if plan is None:
                assert kind not in EXACT
                assert tok.encode(t, special) == encode_full(tok, t, special)
                continue
            got = tok.finish(plan, special)
            assert list(got.ids) == encode_full(tok, t, special), kind
        if kind in EXACT:
            again = tok.plan(text, special)
            assert (
                again is not None and list(tok.finish(again, special).ids) == full
            )  # anchors every few characters: many more cut points
            assert tok.incremental is not None
            margin = tok.incremental.cache.margin
            dense = Incremental(tok.body, PrefixCache(anchor_chars=margin + 7, margin=margin))
            dense.encode(dense.plan(earlier))
            assert list(dense.encode(dense.plan(text)).ids) == encode_full(tok, text, False)


def test_a_hit_reuses_most_of_a_long_shared_prefix(loaded: dict[str, HfTokenizer]) -> None:
    tok = loaded["bytelevel"]
    prefix = "".join(check_texts(["alpha beta", " gamma(delta)", "\n\n"], [], random.Random(1), 4))
    first, second = prefix + " first question?", prefix + " a second question, longer."
    planned = tok.plan(first, True)
    assert planned is not None
    tok.finish(planned, True)
    plan = tok.plan(second, True)
    assert plan is not None and plan.source is not None
    assert plan.todo < len(second) / 5  # an anchor's span, the margin, a few tokens, the suffix
    got = tok.finish(plan, True)
    assert got.reused > 0 and list(got.ids) == encode_full(tok, second, True)
    # The chain reuses the first prompt's block hashes: the same as hashing all blocks.
    for special in (True, False):
        text_chain(tok, first, special, 16)
        chain = text_chain(tok, second, special, 16, None, tok.plan(second, special))
        assert list(chain.blocks) == chain_hashes(encode_full(tok, second, special), 16)


def test_cuts_fall_where_the_character_class_changes() -> None:
    assert [char_kind(c) for c in " a7."] == [0, 1, 2, 3]
    assert may_cut_between("a", " ") and may_cut_between(" ", "a") and may_cut_between("a", "(")
    assert not may_cut_between(" ", "\n")  # a whitespace run: its split depends on what follows
    assert not may_cut_between("1", "2") and not may_cut_between("a", "b")
    assert not may_cut_between("e", "\u0301")  # a combining mark belongs to its letter
    assert not may_cut_between("\U0001f468", "\u200d")  # so does a joiner


def test_the_prefix_cache_is_bounded(loaded: dict[str, HfTokenizer]) -> None:
    tok = loaded["bytelevel"]
    assert tok.incremental is not None
    margin = tok.incremental.cache.margin
    for bounds in ({"max_entries": 3}, {"max_tokens": 600}, {"max_chars": 1200}):
        cache = PrefixCache(anchor_chars=100, margin=margin, **bounds)
        inc = Incremental(tok.body, cache)
        first = None
        for i in range(12):
            text = f"prompt {i}: " + "some words, and more (words) " * 10  # ~300 characters
            got = inc.encode(inc.plan(text))
            assert len(got.ids) * 4 <= 600  # small enough to be kept under every bound here
            first = first or got.entry
            assert 0 < len(cache) <= bounds.get("max_entries", 12)
            assert cache.tokens <= bounds.get("max_tokens", 10**9)
            assert cache.chars <= bounds.get("max_chars", 10**9)
            assert cache.anchors <= len(cache) * len(text) // 100  # the evicted ones' are gone
        assert first is not None and inc.plan(first.text).source is None  # evicted


def wait_until(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_chains_answer_a_new_prefix_at_once_and_share_it_with_the_next_prompts(
    models: dict[str, Path],
) -> None:
    chains = Chains()
    card = {"id": "qwen-like", "root": str(models["bytelevel"])}
    reference = HfTokenizer(models["bytelevel"] / "tokenizer.json", {}, CHATML, check=False)
    system = "You are a careful assistant; answer in one sentence. " * 120  # ~6,500 characters

    def completion(question: str) -> tuple[Prompt, list[int]]:
        return Prompt(text=system + question), reference.encode(system + question, True)

    def chat(question: str) -> tuple[Prompt, list[int]]:
        messages = ({"role": "system", "content": system}, {"role": "user", "content": question})
        rendered = reference.render_chat(list(messages))
        return Prompt(messages=messages), reference.encode(rendered, False)

    try:
        wait_until(lambda: chains.tokenizer_ready("qwen-like", card) is True)
        for make in (completion, chat):
            first, _ = make("question one")
            future = chains.compute("qwen-like", card, 16, first)
            assert future is not None
            assert future.result(timeout=10) is None  # a full encode: the request goes now
            wait_until(lambda: chains.lookup("qwen-like", 16, first) is not None)  # noqa: B023
            second, ids = make("another question, about something else")
            future = chains.compute("qwen-like", card, 16, second)
            assert future is not None
            chain = future.result(timeout=10)  # a shared prefix: computed while it waits
            assert chain is not None and list(chain.blocks) == chain_hashes(ids, 16)
            assert chain.tokens == len(ids)
            assert chains.lookup("qwen-like", 16, second) == chain
    finally:
        chains.close()


def test_computations_under_way_are_bounded() -> None:
    chains = Chains(threads=1, max_pending=3)
    card = {"id": "m", "tokenizer": "vfleet-sim"}
    gate = threading.Event()
    try:
        wait_until(lambda: chains.tokenizer_ready("m", card) is True)
        # The one quick-lane thread is kept busy (reaching into the pool: nothing else blocks it
        # for as long as a test needs), so that computations queue.
        chains._pool.submit(gate.wait, 20)
        prompts = [Prompt(text=f"prompt {i} " * 20) for i in range(5)]
        futures = [chains.compute("m", card, 16, p) for p in prompts]
        assert chains.would_queue()
        assert [f is not None for f in futures] == [True, True, True, False, False]
        queued = futures[1]
        assert queued is not None and queued.cancel()  # its request went without: skipped
        gate.set()
        for i in (0, 2):
            got = futures[i]
            assert got is not None and got.result(timeout=10) is not None
        assert chains.lookup("m", 16, prompts[1]) is None
        wait_until(lambda: not chains.would_queue())
        again = chains.compute("m", card, 16, prompts[3])
        assert again is not None and again.result(timeout=10) is not None
    finally:
        gate.set()
        chains.close()


def test_a_hit_is_cut_past_its_last_anchor(loaded: dict[str, HfTokenizer]) -> None:
    """The shared text is compared on past the last shared anchor, in cut steps: a prompt
    whose shared prefix ends between anchors is cut near where it ends, not at the anchor."""
    tok = loaded["bytelevel"]
    assert tok.incremental is not None
    margin = tok.incremental.cache.margin
    step = margin + 20
    inc = Incremental(tok.body, PrefixCache(anchor_chars=4 * step, margin=margin, cut_chars=step))
    prefix = "".join(check_texts(["alpha beta", " gamma(delta)", "\n\n"], [], random.Random(2), 2))
    shared = 4 * step * 3 + 2 * step + 5  # 3 anchors and 2 steps shared, then a different text
    inc.encode(inc.plan(prefix[:shared] + " the first one, and its own words"))
    text = prefix[:shared] + " a second one (other words)."
    plan = inc.plan(text)
    assert plan.source is not None and plan.shared == 3 * 4 + 2
    assert 4 * step * 3 < plan.cut_char <= shared - margin  # past the anchor, the margin kept
    assert list(inc.encode(plan).ids) == encode_full(tok, text, False)
