"""`vfleet sim --tokenizer DIR`: prompts encoded with a model directory's own Hugging Face
tokenizer and chat template, and a `kv` router that finds that tokenizer from the engines'
cards (`root` = DIR) and so computes the chains the engines' KV events carry.

The tokenizer is a tiny byte-level BPE trained here (~300 ids, milliseconds), saved as a model
directory with a ChatML chat template, as the GPU host's model was (16k ids there)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import SimProcess
from httpclient import Client, wait_for

Factory = Callable[..., SimProcess]
EVENTS = json.dumps({"enable_kv_cache_events": True, "endpoint": "tcp://127.0.0.1:*"})
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WORDS = "the quick brown fox jumps over a lazy dog while careful assistants answer questions"
PREFIX = "You are a careful assistant; answer each question in one short sentence. " * 25


def train(directory: Path) -> Tokenizer:
    """A byte-level BPE saved into `directory` as a model's tokenizer files."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = WORDS.split()
    corpus = [" ".join(words[i % len(words) :] + words[: i % len(words)]) for i in range(200)]
    tok.train_from_iterator(corpus, trainer)
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    config = {"chat_template": CHATML, "eos_token": "<|im_end|>", "bos_token": None}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def chatml(messages: list[dict[str, str]]) -> str:
    """What CHATML renders for `messages` (written out by hand: the test's own reference)."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def metric(client: Client, family: str, label: str = "") -> dict[str, float]:
    """{label value: value} of one family in a /metrics page, summed ('' without `label`)."""
    out: dict[str, float] = {}
    for line in client.get("/metrics").body.decode().splitlines():
        if line.startswith((family + "{", family + " ")):
            m = re.search(label + r'="([^"]*)"', line) if label else None
            key = m.group(1) if m else ""
            out[key] = out.get(key, 0.0) + float(line.rpartition(" ")[2])
    return out


def chat(client: Client, prefix: str, question: str) -> dict[str, object]:
    messages = [{"role": "system", "content": prefix}, {"role": "user", "content": question}]
    resp = client.post(
        "/v1/chat/completions", {"model": "demo", "messages": messages, "max_tokens": 2}
    )
    assert resp.status == 200, resp.body
    body: dict[str, object] = resp.json()
    return body


@pytest.mark.timeout(90)
def test_a_kv_router_routes_by_the_real_tokenizers_blocks(
    sim_factory: Factory, router_factory: Factory, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    tok = train(model_dir)
    engines = []
    for _ in range(2):
        sim = sim_factory(
            "--model", "demo", "--profile", "instant", "--kv-events-config", EVENTS,
            "--tokenizer", str(model_dir),
        )  # fmt: skip
        found = re.search(r"kv-events (\S+)", "".join(sim.log))
        assert found is not None, sim.log
        engines.append((sim, found.group(1)))
    direct = Client(engines[0][0].url)

    # The engine reports DIR as its model's root (where a router finds the tokenizer), and
    # counts prompts in the tokenizer's ids: a chat rendered by the template without special
    # tokens, a completion's prompt with them.
    [card] = direct.get("/v1/models").json()["data"]
    assert Path(card["root"]) == model_dir.resolve()
    assert direct.get("/sim/tokenizer").json()["tokenizer"] != "vfleet-sim"
    messages = [{"role": "system", "content": PREFIX}, {"role": "user", "content": "why?"}]
    want = tok.encode(chatml(messages), add_special_tokens=False).ids
    assert chat(direct, PREFIX, "why?")["usage"]["prompt_tokens"] == len(want)  # type: ignore[index]
    assert len(want) != -(-len(chatml(messages).encode()) // 4)  # not the sim's 4-byte pieces
    tokenized = direct.post("/tokenize", {"model": "demo", "messages": messages}).json()
    assert tokenized["tokens"] == want
    # Content given as parts: this template does not loop over a message's content, so (as
    # vLLM does) it gets the text parts joined by newlines.
    parts = [{"type": "text", "text": PREFIX}, {"type": "text", "text": "why?"}]
    body = {"model": "demo", "messages": [{"role": "user", "content": parts}], "max_tokens": 2}
    resp = direct.post("/v1/chat/completions", body)
    assert resp.status == 200, resp.body
    joined = chatml([{"role": "user", "content": PREFIX + "\n" + "why?"}])
    assert resp.json()["usage"]["prompt_tokens"] == len(tok.encode(joined).ids)
    resp = direct.post("/v1/completions", {"model": "demo", "prompt": WORDS, "max_tokens": 1})
    assert resp.json()["usage"]["prompt_tokens"] == len(tok.encode(WORDS).ids)

    # Through a kv router: a long prefix cached on engine B (sent to B directly, so the router
    # knows it only from B's KV events) is routed to B as a hit, which needs the router's
    # chains to equal the token ids in B's events, and B's prefix cache hits.
    args = ["--policy", "kv"]
    for sim, endpoint in engines:
        args += ["--backend", sim.url, "--kv-events", f"{sim.url}={endpoint}"]
    client = Client(router_factory(*args).url)

    def decided() -> bool:  # its first requests wait for the tokenizer and the first events
        chat(client, "a warm-up prompt long enough to fill blocks " * 20, "warm up")
        reasons = metric(client, "vfleet_router_kv_decisions_total", "reason")
        return any(n for r, n in reasons.items() if r != "fallback")

    assert wait_for(decided, timeout_s=20, interval_s=0.05)
    home = engines[1][0].url
    before = metric(client, "vfleet_router_kv_blocks", "upstream").get(home, 0.0)
    other = "Another long system prompt, cached on one engine before any request for it. " * 25
    chat(Client(home), other, "direct")
    blocks = len(tok.encode(chatml([{"role": "system", "content": other}])).ids) // 16
    assert wait_for(
        lambda: (
            metric(client, "vfleet_router_kv_blocks", "upstream").get(home, 0) >= before + blocks
        ),
        timeout_s=10,
    )
    served = metric(client, "vfleet_router_requests_total", "upstream")
    reasons = metric(client, "vfleet_router_kv_decisions_total", "reason")
    hits = metric(Client(home), "vllm:prefix_cache_hits_total")[""]
    chat(client, other, "first")
    now = metric(client, "vfleet_router_kv_decisions_total", "reason")
    assert now.get("hit", 0.0) == reasons.get("hit", 0.0) + 1, (reasons, now)
    for i in range(4):
        chat(client, other, f"question {i}")
    after = metric(client, "vfleet_router_requests_total", "upstream")
    assert {u: n - served.get(u, 0.0) for u, n in after.items() if n > served.get(u, 0.0)} == {
        home: 5.0
    }
    assert metric(Client(home), "vllm:prefix_cache_hits_total")[""] - hits >= 5 * blocks * 16
