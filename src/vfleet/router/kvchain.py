"""A request's KV-block chain, computed the way its engine computes it.

Owns the tokenizers the `kv` policy uses, where they come from, and the cache of chains. An
engine caches a prompt as blocks of `block_size` token ids; the router hashes the same blocks
(`kvindex.chain_hash`) to look them up in the index its events built. So a chat request is
rendered with the model's own chat template (Jinja, as vLLM renders it through Hugging Face's
`apply_chat_template`: trimmed blocks, `add_generation_prompt`, the tokenizer's BOS/EOS) and
tokenized without adding special tokens (the template has them); a completion's prompt is
tokenized with them. Token-id prompts are taken as they are.

Where a tokenizer comes from, per model, from its engine's `/v1/models` card:
- `"tokenizer": "vfleet-sim"`: the simulator's (4-byte pieces, ChatML), built in;
- else `root`, the model's directory (`tokenizer.json`, `tokenizer_config.json`) or a
  Hugging Face repository id found in the local hub cache (never downloaded here); for a LoRA
  adapter (a card with a `parent`) its own directory when it has a tokenizer, else its base
  model's (`base_root`, added by the caller from the parent's card), as vLLM does.
No tokenizer: no chain, and the policy falls back to `prefix`.

A LoRA adapter's chains start from `kvindex.lora_root(adapter)`: vLLM hashes the adapter into
its blocks, so only blocks stored for that adapter are hits (see `router.kvindex`).

Loading and tokenizing run in a small thread pool, never on the event loop; chains are cached
(bounded by count and by tokens) per prompt, and block hashes per (parent, block) so prompts that
share a prefix hash only their new blocks.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from vfleet.router.kvindex import chain_hash, lora_root
from vfleet.router.state import Chain

log = logging.getLogger("vfleet.router.kv")

SIM_TOKENIZER: Final = "vfleet-sim"  # what the simulator's model card names as its tokenizer
MAX_CHAINS: Final = 4096  # prompts whose chains are kept
MAX_CHAIN_TOKENS: Final = 16 * 2**20  # tokens kept over all of them (~ 64 MB of hashes, bounded)
MAX_BLOCK_MEMO: Final = 262_144  # (parent, block) -> hash entries kept
MAX_PROMPT_CHARS: Final = 4 * 2**20  # longer prompts are not tokenized (no chain)

# ChatML, as the simulator renders a chat (sim.api.render_chat): text parts joined by newlines.
CHATML: Final = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% elif m['content'] is iterable %}"
    "{% for p in m['content'] if p['type'] == 'text' %}{{ p['text'] }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Tokenizer(Protocol):
    """What the chain needs of a tokenizer."""

    def encode(self, text: str, special: bool) -> list[int]: ...

    def render_chat(self, messages: list[Any]) -> str: ...


class SimTokenizer:
    """The simulator's tokenizer: UTF-8 cut into 4-byte little-endian pieces (see
    `vfleet.sim.tokenizer`, which the router may not import: engines are known by URL only)."""

    def __init__(self) -> None:
        self._template = _compile(CHATML)

    def encode(self, text: str, special: bool) -> list[int]:
        data = text.encode("utf-8")
        data += b"\x00" * (-len(data) % 4)
        return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]

    def render_chat(self, messages: list[Any]) -> str:
        return str(self._template.render(messages=messages, add_generation_prompt=True))


class HfTokenizer:
    """A Hugging Face `tokenizers` tokenizer with the model's chat template."""

    def __init__(self, tokenizer_json: Path, config: Mapping[str, Any], template: str | None):
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_file(str(tokenizer_json))
        self._template = _compile(template) if template else None
        self._special = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token")}

    def encode(self, text: str, special: bool) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=special).ids)

    def render_chat(self, messages: list[Any]) -> str:
        if self._template is None:
            raise ValueError("the model has no chat template")
        return str(
            self._template.render(messages=messages, add_generation_prompt=True, **self._special)
        )


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _compile(template: str) -> Any:
    """A chat template compiled as Hugging Face compiles one (what vLLM renders through)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def load_tokenizer(card: Mapping[str, Any]) -> Tokenizer | None:
    """The tokenizer a model card names (blocking: file reads; run it off the event loop)."""
    if card.get("tokenizer") == SIM_TOKENIZER:
        return SimTokenizer()
    files = None
    for key in ("root", "base_root"):  # an adapter's own tokenizer, else its base model's
        root = card.get(key)
        if isinstance(root, str) and root:
            files = _model_files(root)
            if files is not None:
                break
    if files is None:
        return None
    tokenizer_json, config_path, template_path = files
    config: dict[str, Any] = {}
    if config_path is not None:
        loaded = json.loads(config_path.read_text())
        config = loaded if isinstance(loaded, dict) else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template_path is not None:
        template = template_path.read_text()
    return HfTokenizer(tokenizer_json, config, template if isinstance(template, str) else None)


def chain_root(model: str, card: Mapping[str, Any]) -> int | None:
    """Where `model`'s chains start: from its adapter's root when the card names a LoRA adapter
    (vLLM lists one with its base model as `parent`), from nothing for a base model."""
    parent = card.get("parent")
    return lora_root(model) if isinstance(parent, str) and parent and parent != model else None


def _model_files(root: str) -> tuple[Path, Path | None, Path | None] | None:
    """(tokenizer.json, tokenizer_config.json, chat_template.jinja) of a model directory or of a
    repository id in the local hub cache; None when there is no tokenizer.json."""
    local = Path(root)
    if local.is_dir():
        found = {n: local / n for n in _FILES if (local / n).is_file()}
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - a dependency
            return None
        found = {}
        for name in _FILES:
            try:
                hit = try_to_load_from_cache(root, name)
            except ValueError:  # not a repository id
                return None
            if isinstance(hit, str):
                found[name] = Path(hit)
    if "tokenizer.json" not in found:
        return None
    return (
        found["tokenizer.json"],
        found.get("tokenizer_config.json"),
        found.get("chat_template.jinja"),
    )


_FILES: Final = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


# -- prompts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prompt:
    """What of a request is tokenized: chat messages, a text prompt, or token ids."""

    messages: tuple[Any, ...] | None = None
    text: str | None = None
    ids: tuple[int, ...] | None = None

    def cache_key(self) -> Any:
        if self.text is not None:
            return ("t", self.text)
        if self.ids is not None:
            return ("i", self.ids)
        return ("m", json.dumps(self.messages, sort_keys=True, default=str))


def prompt_of(fields: Mapping[str, Any]) -> Prompt | None:
    """The prompt of a chat or completion body; None for anything else (a list of prompts,
    embeddings inputs, over MAX_PROMPT_CHARS)."""
    messages = fields.get("messages")
    if isinstance(messages, list):
        if sum(len(str(m)) for m in messages) > MAX_PROMPT_CHARS:
            return None
        return Prompt(messages=tuple(messages))
    prompt = fields.get("prompt")
    if isinstance(prompt, str):
        return Prompt(text=prompt) if len(prompt) <= MAX_PROMPT_CHARS else None
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return Prompt(ids=tuple(prompt))
    return None


def tokens_of(tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """The prompt's token ids as the engine computes them."""
    if prompt.ids is not None:
        return list(prompt.ids)
    if prompt.text is not None:
        return tokenizer.encode(prompt.text, True)
    return tokenizer.encode(tokenizer.render_chat(list(prompt.messages or ())), False)


class BlockMemo:
    """(parent hash, block tokens) -> router block hash, bounded (the oldest go first): prompts
    that share a prefix hash its blocks once. Pool threads share it (under its lock)."""

    def __init__(self, max_entries: int = MAX_BLOCK_MEMO) -> None:
        self.max_entries = max_entries
        self._memo: OrderedDict[tuple[int | None, tuple[int, ...]], int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memo)

    def hashes(
        self, tokens: Sequence[int], block_size: int, root: int | None = None
    ) -> tuple[int, ...]:
        """The chain of `tokens`' full blocks from `root` (a LoRA adapter's, or None)."""
        with self._lock:
            return self._hashes(tokens, block_size, root)

    def _hashes(self, tokens: Sequence[int], block_size: int, root: int | None) -> tuple[int, ...]:
        memo = self._memo
        out: list[int] = []
        parent: int | None = root
        for start in range(0, len(tokens) - block_size + 1, block_size):
            block = tuple(tokens[start : start + block_size])
            key = (parent, block)
            h = memo.get(key)
            if h is None:
                h = memo[key] = chain_hash(parent, block)
                if len(memo) > self.max_entries:
                    memo.popitem(last=False)
            out.append(h)
            parent = h
        return tuple(out)


# -- the cache and the thread pool --------------------------------------------------------------


class Chains:
    """Chains of prompts per model, computed in a thread pool and cached.

    `lookup` answers at once from the cache (the event loop's side); `compute` returns a future
    that a pool thread fulfils (loading the model's tokenizer first, once). A model whose
    tokenizer cannot be had gives None chains, and is tried again only when its card changes.
    """

    def __init__(self, threads: int = 2, max_chains: int = MAX_CHAINS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="vfleet-kvchain")
        self.max_chains = max_chains
        self._chains: OrderedDict[tuple[str, int, Any], Chain] = OrderedDict()
        self._tokens = 0  # summed over _chains
        self._tokenizers: dict[tuple[str, str], Future[Tokenizer | None]] = {}
        self._memo = BlockMemo()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def lookup(self, model: str, block_size: int, prompt: Prompt) -> Chain | None:
        key = (model, block_size, prompt.cache_key())
        chain = self._chains.get(key)
        if chain is not None:
            self._chains.move_to_end(key)
        return chain

    def tokenizer_ready(self, model: str, card: Mapping[str, Any]) -> bool | None:
        """True when the model's tokenizer is loaded, False while it loads, None when it cannot
        be had (its load is started on first call)."""
        future = self._tokenizer(model, card)
        if not future.done():
            return False
        return None if future.exception() is not None or future.result() is None else True

    def compute(
        self, model: str, card: Mapping[str, Any], block_size: int, prompt: Prompt
    ) -> Future[Chain | None]:
        """The prompt's chain, computed in the pool (the tokenizer must be ready) and cached
        when `store` is called with it on the event loop's side."""
        tokenizer = self._tokenizer(model, card)
        root = chain_root(model, card)
        return self._pool.submit(self._chain, tokenizer, block_size, prompt, root)

    def store(self, model: str, block_size: int, prompt: Prompt, chain: Chain) -> None:
        key = (model, block_size, prompt.cache_key())
        old = self._chains.pop(key, None)
        if old is not None:
            self._tokens -= old.tokens
        self._chains[key] = chain
        self._tokens += chain.tokens
        while len(self._chains) > self.max_chains or self._tokens > MAX_CHAIN_TOKENS:
            _, dropped = self._chains.popitem(last=False)
            self._tokens -= dropped.tokens

    def _tokenizer(self, model: str, card: Mapping[str, Any]) -> Future[Tokenizer | None]:
        key = (model, f"{card.get('tokenizer')}|{card.get('root')}|{card.get('base_root')}")
        future = self._tokenizers.get(key)
        if future is None:
            if len(self._tokenizers) > 64:  # models come and go: keep the table bounded
                self._tokenizers.clear()
            future = self._tokenizers[key] = self._pool.submit(_load_logged, dict(card))
        return future

    def _chain(
        self,
        tokenizer: Future[Tokenizer | None],
        block_size: int,
        prompt: Prompt,
        root: int | None,
    ) -> Chain | None:
        tok = tokenizer.result()
        if tok is None:
            return None
        ids = tokens_of(tok, prompt)
        return Chain(self._memo.hashes(ids, block_size, root), len(ids), block_size)


def _load_logged(card: dict[str, Any]) -> Tokenizer | None:
    try:
        tok = load_tokenizer(card)
    except Exception as exc:  # a broken tokenizer file: route without it
        log.warning("kv: no tokenizer for %s: %s", card.get("id"), exc)
        return None
    if tok is None:
        log.warning(
            "kv: no tokenizer for model %s (root %s): routing it as prefix",
            card.get("id"),
            card.get("root"),
        )
    return tok
