"""Chat templates rendered as vLLM renders them (vfleet.chattemplate): a message's content
reaches a template in the form the template reads (joined text, or a list of text parts), found
from the template's syntax, so the router's `kv` chains and the engine's prompt agree."""

from __future__ import annotations

import pytest

from vfleet.chattemplate import ChatTemplate

# Reads message['content'] as a string (Qwen2-style): the "string" content format.
STRING = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Loops over a message's content parts (Llama-4-style): the "openai" content format.
PARTS = (
    "{{ bos_token }}{% for m in messages | rejectattr('role', 'equalto', 'tool') %}"
    "[{{ m.role }}]{% for p in m.content %}({{ p['type'] }}:{{ p['text'] }}){% endfor %}"
    "{% endfor %}"
)
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def test_a_template_reading_content_as_text_gets_parts_joined_by_newlines() -> None:
    chat = ChatTemplate(STRING, SPECIAL)
    assert chat.content_format == "string"
    parts = [
        {"type": "text", "text": "one"},
        {"type": "image_url"},
        {"type": "text", "text": "two"},
    ]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}]
    assert chat.render(messages) == "<|system|>be brief\n<|user|>one\ntwo\n<|assistant|>"
    assert chat.render(messages, add_generation_prompt=False).endswith("<|user|>one\ntwo\n")


def test_a_template_looping_over_content_gets_parts_and_strings_as_one_part() -> None:
    chat = ChatTemplate(PARTS, SPECIAL)
    assert chat.content_format == "openai"
    parts = [{"type": "text", "text": "a", "extra": 1}, "b"]
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "tool", "content": "skipped by the template"},
        {"role": "user", "content": parts},
    ]
    assert chat.render(messages) == "<s>[user](text:hello)[user](text:a)(text:b)"


@pytest.mark.parametrize(
    ("loop", "expected"),
    [
        ("{% for c in msg['content'] %}{{ c }}{% endfor %}", "openai"),
        ("{% for c in msg.content %}{{ c }}{% endfor %}", "openai"),
        ("{% for c in msg['content'] | list %}{{ c }}{% endfor %}", "openai"),
        ("{% for c in other['content'] %}{{ c }}{% endfor %}", "string"),  # not a message
        ("{{ msg['content'] }}", "string"),
    ],
)
def test_the_content_format_comes_from_the_templates_loops(loop: str, expected: str) -> None:
    source = "{% for msg in messages[1:] %}" + loop + "{% endfor %}"
    assert ChatTemplate(source, SPECIAL).content_format == expected
