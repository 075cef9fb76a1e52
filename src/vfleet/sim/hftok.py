"""A model's own Hugging Face tokenizer for the simulator's prompts (`vfleet sim --tokenizer DIR`).

DIR is a model directory as vLLM loads one: `tokenizer.json` (read with the `tokenizers`
library), `tokenizer_config.json` (its `chat_template`, `bos_token`, `eos_token`) and optionally
`chat_template.jinja`. A chat is rendered as vLLM renders it through Hugging Face's
`apply_chat_template` (a sandboxed Jinja environment with trimmed blocks, `raise_exception`,
`tojson`, `strftime_now`; `add_generation_prompt`; the tokenizer's BOS/EOS texts) and encoded
without special tokens; a completion's prompt is encoded with them. The router's `kv` policy
(`router.kvtokenizer`) renders and encodes the same way, both through `vfleet.chattemplate`.

Loaded once at start (`load`), before the port opens; `jinja2` and `tokenizers` are imported only
then, so a simulator without `--tokenizer` never loads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vfleet.chattemplate import ChatTemplate, read_settings, special_texts


class HfPromptTokenizer:
    """DIR's tokenizer and chat template (a `sim.tokenizer.PromptCodec`)."""

    def __init__(self, directory: str) -> None:
        from tokenizers import Tokenizer

        root = Path(directory)
        tokenizer_json = root / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise ValueError(f"{directory}: no tokenizer.json")
        self.directory = str(root.resolve())
        self.rust = Tokenizer.from_file(str(tokenizer_json))
        # transformers (through which vLLM encodes) turns off tokenizer.json's own truncation
        # and padding unless asked for them
        self.rust.no_truncation()
        self.rust.no_padding()
        config_path = root / "tokenizer_config.json"
        template_path = root / "chat_template.jinja"
        config, template = read_settings(
            config_path if config_path.is_file() else None,
            template_path if template_path.is_file() else None,
        )
        self._chat = ChatTemplate(template, special_texts(config)) if template else None
        self.vocab_size = self.rust.get_vocab_size()

    def encode(self, text: str, special: bool) -> list[int]:
        ids: list[int] = self.rust.encode(text, add_special_tokens=special).ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        valid = [i for i in ids if 0 <= i < self.vocab_size]  # the filler's ids are not DIR's
        return str(self.rust.decode(valid, skip_special_tokens=False))

    def piece(self, token_id: int) -> str:
        got = self.rust.id_to_token(token_id)
        return got if isinstance(got, str) else ""

    def render_chat(
        self, messages: list[Any], turns: list[tuple[str, str]], add_generation_prompt: bool
    ) -> str:
        # contents as vLLM hands them to this template (joined text, or a list of parts)
        if self._chat is None:
            # vLLM: "As of transformers v4.44, default chat template is no longer allowed"
            raise ValueError(f"the tokenizer in {self.directory} has no chat template")
        return self._chat.render(messages, add_generation_prompt)


def load(directory: str) -> HfPromptTokenizer:
    """DIR's tokenizer; ValueError (or OSError) when it cannot be read."""
    try:
        return HfPromptTokenizer(directory)
    except (ValueError, OSError):
        raise
    except Exception as exc:  # tokenizers' own errors (a malformed tokenizer.json), jinja's
        raise ValueError(f"{directory}: {exc}") from exc
