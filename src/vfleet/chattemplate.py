"""A model's chat template and tokenizer settings, read and compiled as Hugging Face's
`apply_chat_template` does (what vLLM renders chats through). Shared by the router's `kv` policy
(router.kvtokenizer), which must render a chat exactly as the engine will, and the simulator's
`--tokenizer DIR` (sim.hftok), which plays that engine; neither may import the other.

A chat's message contents reach the template as vLLM hands them over, which depends on the
template (its "content format", found once from its syntax tree): a template that loops over a
message's `content` gets every content as a list of parts (`{"type": "text", "text": ...}`, a plain
string wrapped as one part); any other gets a string (the text parts joined by newlines). Without
this a request whose content is a list of parts would render differently in the router than in
the engine, and its KV-block chain would miss.

`jinja2` is imported only when a template is compiled, so a process that never renders a model's
template never loads it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

ContentFormat = Literal["string", "openai"]


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


class ChatTemplate:
    """A model's chat template, rendered as vLLM renders it: compiled as Hugging Face compiles
    it, given the tokenizer's BOS/EOS texts, each message's content in the template's format."""

    def __init__(self, source: str, special: dict[str, str]) -> None:
        self._template = compile_template(source)
        self._special = special
        self.content_format: ContentFormat = content_format(self._template.environment, source)

    def render(self, messages: list[Any], add_generation_prompt: bool = True) -> str:
        chat = [with_content(m, self.content_format) for m in messages]
        return str(
            self._template.render(
                messages=chat, add_generation_prompt=add_generation_prompt, **self._special
            )
        )


def with_content(message: Any, fmt: ContentFormat) -> Any:
    """`message` with its content as a template of format `fmt` receives it (others as sent)."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        if fmt == "string":
            return message
        parts: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = [_text_part(p) for p in content]
        if fmt == "string":
            texts = [p["text"] for p in parts if isinstance(p, dict) and p.get("type") == "text"]
            return {**message, "content": "\n".join(texts)}
    else:
        return message
    return {**message, "content": parts}


def _text_part(part: Any) -> Any:
    """A text part as vLLM keeps it (`type` and `text` only); a bare string is one too."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    return part


def content_format(env: Any, source: str) -> ContentFormat:
    """ "openai" when the template loops over the `content` of a message it took from a loop over
    `messages` (through filters, tests or slices), else "string"; a template that does not parse
    is "string"."""
    from jinja2 import nodes

    try:
        tree = env.parse(source)
    except Exception:  # a template jinja cannot parse renders nothing anyway
        return "string"
    loops = list(tree.find_all(nodes.For))
    message_vars = {
        loop.target.name
        for loop in loops
        if isinstance(loop.target, nodes.Name) and _reads(loop.iter, "messages", None)
    }
    for loop in loops:
        if any(_reads(loop.iter, var, "content") for var in message_vars):
            return "openai"
    return "string"


def _reads(node: Any, var: str, key: str | None) -> bool:
    """Whether `node` is `var` (or `var[key]` / `var.key`), under filters, tests and slices."""
    from jinja2 import nodes

    if isinstance(node, nodes.Filter | nodes.Test):
        return node.node is not None and _reads(node.node, var, key)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        return _reads(node.node, var, key)
    if key is None:
        return isinstance(node, nodes.Name) and node.name == var
    if isinstance(node, nodes.Getitem):
        return (
            isinstance(node.node, nodes.Name)
            and node.node.name == var
            and isinstance(node.arg, nodes.Const)
            and node.arg.value == key
        )
    if isinstance(node, nodes.Getattr):
        return isinstance(node.node, nodes.Name) and node.node.name == var and node.attr == key
    return False
