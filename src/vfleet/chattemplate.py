"""A model's chat template and tokenizer settings, read and compiled as Hugging Face's
`apply_chat_template` does (what vLLM renders chats through). Shared by the router's `kv` policy
(router.kvtokenizer), which must render a chat exactly as the engine will, and the simulator's
`--tokenizer DIR` (sim.hftok), which plays that engine; neither may import the other.

`jinja2` is imported only when a template is compiled, so a process that never renders a model's
template never loads it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any


def read_settings(
    config_path: Path | None, template_path: Path | None
) -> tuple[dict[str, Any], str | None]:
    """(tokenizer_config.json's contents, the chat template) of a model directory's files:
    `chat_template.jinja` wins over the config's `chat_template`; of named templates, the
    default one."""
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
    return config, template if isinstance(template, str) and template else None


def special_texts(config: dict[str, Any]) -> dict[str, str]:
    """The BOS/EOS texts a template sees (`bos_token`, `eos_token`: a string or an added-token
    object with `content`; empty when unset)."""
    out = {}
    for name in ("bos_token", "eos_token"):
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        out[name] = value if isinstance(value, str) else ""
    return out


def compile_template(template: str) -> Any:
    """A chat template compiled as Hugging Face compiles one: a sandboxed environment with
    trimmed blocks, loop controls, `raise_exception`, `tojson` and `strftime_now`."""
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
