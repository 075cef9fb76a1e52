"""A request's KV-block chain (router.kvchain): the simulator's tokenizer and chat rendering as
the simulator itself computes them, a Hugging Face tokenizer loaded from a model directory with
its chat template, and the bounded caches."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.router.kvchain import (
    BlockMemo,
    Chains,
    HfTokenizer,
    Prompt,
    SimTokenizer,
    chain_root,
    load_tokenizer,
    prompt_of,
    tokens_of,
)
from vfleet.router.kvindex import chain_hashes, lora_root
from vfleet.sim import tokenizer as sim_tokenizer
from vfleet.sim.api import render_chat

text = st.text(max_size=60)
parts = st.lists(
    st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, text),
        st.just({"type": "image_url", "image_url": {"url": "x"}}),
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant"]),
            "content": st.one_of(text, parts, st.none()),
        }
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(messages=messages, prompt=text)
def test_the_sim_tokenizer_and_chat_match_the_simulator(
    messages: list[dict[str, Any]], prompt: str
) -> None:
    tok = SimTokenizer()
    assert tok.encode(prompt, True) == sim_tokenizer.encode(prompt)
    rendered = tok.render_chat(messages)
    assert rendered == render_chat(messages, {}, sim_tokenizer.Pieces())
    assert tokens_of(tok, Prompt(messages=tuple(messages))) == sim_tokenizer.encode(rendered)


def save_tokenizer(folder: Path) -> Any:
    """A small word-level tokenizer saved as `folder`/tokenizer.json; the Rust object."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<s>": 1, "hello": 2, "world": 3, "user": 4, ":": 5}
    rust = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    rust.save(str(folder / "tokenizer.json"))
    return rust


def test_a_model_directory_gives_its_tokenizer_and_chat_template(tmp_path: Path) -> None:
    rust = save_tokenizer(tmp_path)
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
    )
    config = {"chat_template": template, "bos_token": {"content": "<s>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer({"id": "m", "root": str(tmp_path)})
    assert isinstance(tok, HfTokenizer)
    chat = [{"role": "user", "content": "hello world"}]
    # trim_blocks, as Hugging Face renders templates: the newline after a block tag goes.
    assert tok.render_chat(chat) == "<s>user : hello world\nassistant :"
    # A chat is the rendered template, tokenized without adding special tokens (it has them).
    rendered = tok.render_chat(chat)
    assert tokens_of(tok, Prompt(messages=tuple(chat))) == rust.encode(rendered).ids
    assert tok.encode("hello world", True) == [2, 3]
    assert load_tokenizer({"id": "m", "root": str(tmp_path / "absent")}) is None
    assert load_tokenizer({"id": "m", "root": "not/a-cached-repo"}) is None


def ready(chains: Chains, model: str, card: dict[str, Any]) -> None:
    """Wait (bounded) until the model's tokenizer is loaded (the slow lane loads it)."""
    deadline = time.monotonic() + 20
    while not chains.tokenizer_ready(model, card):
        assert time.monotonic() < deadline, "the tokenizer did not load"
        time.sleep(0.01)


def test_chains_are_computed_off_the_caller_and_cached() -> None:
    chains = Chains()
    card = {"id": "m", "tokenizer": "vfleet-sim"}
    try:
        assert chains.tokenizer_ready("m", card) in (False, True)
        ready(chains, "m", card)
        prompt = prompt_of({"prompt": "x" * 200})
        assert prompt is not None
        future = chains.compute("m", card, 16, prompt)
        assert future is not None
        chain = future.result(timeout=10)
        assert chain is not None and chain.tokens == 50 and chain.block_size == 16
        assert list(chain.blocks) == chain_hashes(sim_tokenizer.encode("x" * 200), 16)
        assert chains.lookup("m", 16, prompt) == chain  # the pool thread cached it
        small = Chains(max_chains=2)
        for i in range(5):
            small.store("m", 16, Prompt(text=str(i)), chain)
        assert small.lookup("m", 16, Prompt(text="4")) == chain
        assert small.lookup("m", 16, Prompt(text="0")) is None
        small.close()
        # Bounded by the characters of the prompts that key them, too.
        by_chars = Chains(max_key_chars=1000)
        for i in range(5):
            by_chars.store("m", 16, Prompt(text=str(i) * 400), chain)
        assert len(by_chars) == 2 and by_chars.lookup("m", 16, Prompt(text="4" * 400)) == chain
        by_chars.close()
    finally:
        chains.close()


def test_the_block_memo_is_bounded_and_agrees_with_plain_hashing() -> None:
    memo = BlockMemo(max_entries=10)
    for n in (5, 40, 40):
        tokens = list(range(n * 4))
        assert list(memo.hashes(tokens, 4)) == chain_hashes(tokens, 4)
        assert len(memo) <= 10
    # A LoRA adapter's chain starts from its root: other hashes, memoized apart.
    tokens = list(range(20))
    root = lora_root("sql-lora")
    assert list(memo.hashes(tokens, 4, root)) == chain_hashes(tokens, 4, root)
    assert set(memo.hashes(tokens, 4, root)).isdisjoint(memo.hashes(tokens, 4))


def test_an_adapters_chains_are_keyed_by_the_adapter() -> None:
    base = {"id": "llama", "root": "/models/llama", "parent": None}
    adapter = {"id": "sql-lora", "root": "/adapters/sql", "parent": "llama"}
    assert chain_root("llama", base) is None
    assert chain_root("sql-lora", adapter) == lora_root("sql-lora")
    assert lora_root("sql-lora") != lora_root("chat-lora")
    chains = Chains()
    try:
        prompt = Prompt(text="y" * 160)
        card = {**adapter, "tokenizer": "vfleet-sim"}
        base_card = {**base, "tokenizer": "vfleet-sim"}
        ready(chains, "sql-lora", card)
        ready(chains, "llama", base_card)
        adapted, plain = (
            chains.compute(m, c, 16, prompt) for m, c in (("sql-lora", card), ("llama", base_card))
        )
        assert adapted is not None and plain is not None
        got, got_plain = adapted.result(timeout=10), plain.result(timeout=10)
        ids = sim_tokenizer.encode("y" * 160)
        assert got is not None and list(got.blocks) == chain_hashes(ids, 16, lora_root("sql-lora"))
        assert got_plain is not None and list(got_plain.blocks) == chain_hashes(ids, 16)
    finally:
        chains.close()


def test_an_adapter_without_a_tokenizer_uses_its_base_models(tmp_path: Path) -> None:
    save_tokenizer(tmp_path / "base")
    (tmp_path / "adapter").mkdir()  # adapter weights only, as most LoRA folders are
    card = {
        "id": "sql-lora",
        "root": str(tmp_path / "adapter"),
        "parent": "m",
        "base_root": str(tmp_path / "base"),
    }
    tok = load_tokenizer(card)
    assert tok is not None and tok.encode("hello world", True) == [2, 3]
    assert load_tokenizer({**card, "base_root": None}) is None


def test_prompts_the_router_tokenizes() -> None:
    assert prompt_of({"prompt": [1, 2, 3]}) == Prompt(ids=(1, 2, 3))
    assert prompt_of({"prompt": ["a", "b"]}) is None  # several prompts: no single chain
    assert prompt_of({"input": "embed me"}) is None
    assert prompt_of({"messages": [{"role": "user", "content": "hi"}]}) is not None
