"""The tokenizers the `kv` policy uses, and where they come from.

A chat request is rendered with the model's own chat template (Jinja, as vLLM renders it through
Hugging Face's `apply_chat_template`: trimmed blocks, `add_generation_prompt`, the tokenizer's
BOS/EOS) and tokenized without adding special tokens (the template has them); a completion's
prompt is tokenized with them.

Where a tokenizer comes from, per model, from its engine's `/v1/models` card:
- `"tokenizer": "vfleet-sim"`: the simulator's (4-byte pieces, ChatML), built in;
- else `root`, the model's directory (`tokenizer.json`, `tokenizer_config.json`) or a
  Hugging Face repository id found in the local hub cache (never downloaded here); for a LoRA
  adapter (a card with a `parent`) its own directory when it has a tokenizer, else its base
  model's (`base_root`, added by the caller from the parent's card), as vLLM does.

A Hugging Face tokenizer encodes through `encode_batch`, which, unlike `encode`, lets go of the
GIL while the Rust tokenizer works (the router's event loop keeps running), and, when its
self-check at load passes (`router.kvtokens`), incrementally: a text sharing a long prefix with
one encoded before reuses its ids up to a safe cut and encodes only the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from vfleet.chattemplate import ChatTemplate, compile_template, read_settings, special_texts
from vfleet.router.kvtokens import (
    MARGIN_CHARS,
    Encoded,
    Encoding,
    Incremental,
    Plan,
    PrefixCache,
    check_texts,
    self_check,
)

log = logging.getLogger("vfleet.router.kv")

SIM_TOKENIZER: Final = "vfleet-sim"  # what the simulator's model card names as its tokenizer

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
        self._template = compile_template(CHATML)

    def encode(self, text: str, special: bool) -> list[int]:
        data = text.encode("utf-8")
        data += b"\x00" * (-len(data) % 4)
        return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]

    def render_chat(self, messages: list[Any]) -> str:
        return str(self._template.render(messages=messages, add_generation_prompt=True))


class HfTokenizer:
    """A Hugging Face `tokenizers` tokenizer with the model's chat template; incremental when
    its self-check passed (`check`: at construction, ~0.1 s)."""

    def __init__(
        self,
        tokenizer_json: Path,
        config: Mapping[str, Any],
        template: str | None,
        check: bool = True,
        name: str = "",
    ):
        from tokenizers import Tokenizer as RustTokenizer

        self.rust = RustTokenizer.from_file(str(tokenizer_json))  # the `tokenizers` object
        # transformers (through which vLLM encodes) turns off a tokenizer.json's own truncation
        # and padding unless asked for them
        self.rust.no_truncation()
        self.rust.no_padding()
        # contents as vLLM hands them to this template (joined text, or a list of parts)
        self._chat = ChatTemplate(template, special_texts(dict(config))) if template else None
        self.name = name
        self.incremental: Incremental | None = None
        self.refused: str | None = None  # why the self-check refused incremental encoding
        # what encoding with special tokens adds around a text (a BOS, an EOS), when constant
        self._frame: tuple[array[int], array[int]] | None = None
        self._guard = threading.Lock()  # the prefix cache, shared by the pool threads
        if check:
            self._check()

    def encode(self, text: str, special: bool) -> list[int]:
        # encode_batch releases the GIL while it tokenizes; encode holds it throughout
        return self.rust.encode_batch([text], add_special_tokens=special)[0].ids

    def body(self, text: str) -> Encoding:
        """`text` encoded without special tokens (offsets and words included), GIL released."""
        return self.rust.encode_batch([text], add_special_tokens=False)[0]

    def plan(self, text: str, special: bool) -> Plan | None:
        """What an incremental encode of `text` would reuse; None when it is encoded in full."""
        if self.incremental is None or (special and self._frame is None):
            return None
        return self.incremental.plan(text)

    def finish(self, plan: Plan, special: bool) -> Encoded:
        """The planned text's ids (with special tokens when `special`), reusing what it may."""
        assert self.incremental is not None
        got = self.incremental.encode(plan)
        if not special or self._frame is None:
            return got
        pre, post = self._frame
        ids = array(got.ids.typecode, pre) + got.ids + array(got.ids.typecode, post)
        return dataclasses.replace(got, ids=ids, reused=len(pre) + got.reused if got.reused else 0)

    def _check(self) -> None:
        """Turn incremental encoding on when it gives exactly what full encodes give on texts
        made of this tokenizer's own pieces (and its chat template's renderings)."""
        rng = random.Random(0x6B76)
        tok = self.rust
        size = tok.get_vocab_size()
        pieces = [tok.decode(rng.sample(range(size), rng.randrange(1, 4))) for _ in range(300)]
        added = [t.content for t in tok.get_added_tokens_decoder().values()]
        margin = MARGIN_CHARS + max((len(a) for a in added), default=0)
        texts = check_texts(pieces, added, rng)
        texts += self._rendered(texts, rng)
        try:
            failure, cuts = self_check(self.body, texts, margin, rng)
        except Exception as exc:  # the tokenizer failed on a text: encode in full, as before
            failure, cuts = f"self-check failed: {exc!r}", 0
        if failure is None and not cuts:
            failure = "no safe cut found"
        if failure is not None:
            self.refused = failure
            log.warning("kv: model %s: prompts are tokenized in full (%s)", self.name, failure)
            return
        self._frame = self._find_frame(texts)
        self.incremental = Incremental(self.body, PrefixCache(margin=margin), self._guard)
        log.info("kv: model %s: prompts sharing a prefix are tokenized incrementally", self.name)

    def _rendered(self, texts: list[str], rng: random.Random) -> list[str]:
        """Chats made of `texts`, rendered with the model's template (a template that rejects
        them gives none)."""
        out = []
        for i in range(min(4, len(texts))):
            parts = [t[: rng.randrange(1, len(t) + 1)] for t in texts[i : i + 4]]
            roles = ["system", "user", "assistant", "user"]
            chat = [{"role": r, "content": p} for r, p in zip(roles, parts, strict=False)]
            try:
                out.append(self.render_chat(chat))
            except Exception:  # a template's own rules (roles, alternation): nothing to check
                continue
        return out

    def _find_frame(self, texts: list[str]) -> tuple[array[int], array[int]] | None:
        """(before, after): the ids encoding with special tokens adds around any text's ids,
        the same for all `texts`; None when they differ (such texts are encoded in full)."""
        frames = set()
        for text in texts[:6]:
            full = self.encode(text, True)
            body = self.body(text).ids
            for start in range(len(full) - len(body) + 1):
                if full[start : start + len(body)] == body:
                    frames.add((tuple(full[:start]), tuple(full[start + len(body) :])))
                    break
            else:
                return None
        if len(frames) != 1:
            return None
        (pre, post), *_ = frames
        try:
            return array("I", pre), array("I", post)
        except OverflowError:
            return None

    def render_chat(self, messages: list[Any]) -> str:
        if self._chat is None:
            raise ValueError("the model has no chat template")
        return self._chat.render(messages)


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
    config, template = read_settings(config_path, template_path)
    name = str(card.get("id") or "")
    return HfTokenizer(tokenizer_json, config, template, name=name)


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


def load_logged(card: dict[str, Any]) -> Tokenizer | None:
    """`load_tokenizer`, its failures logged (None)."""
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
