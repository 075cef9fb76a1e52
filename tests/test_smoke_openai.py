"""The issue's acceptance check: the official openai client against `vfleet sim`."""

from __future__ import annotations

import openai

from conftest import SimProcess, start_sim


def test_openai_client_lists_streams_and_embeds() -> None:
    gen: SimProcess = start_sim("--model", "demo", "--profile", "small")
    emb: SimProcess = start_sim("--model", "embedder", "--task", "embed", "--profile", "small")
    try:
        client = openai.OpenAI(base_url=gen.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["demo"]

        stream = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "Say something."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finals = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finals[-1] in ("stop", "length")
        assert finals[:-1] == [None] * (len(finals) - 1)
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens >= 1
        assert usage.completion_tokens <= 12
        assert len(text) > 0

        eclient = openai.OpenAI(base_url=emb.url + "/v1", api_key="unused", max_retries=0)
        res = eclient.embeddings.create(model="embedder", input=["hello world", "bye"])
        assert len(res.data) == 2
        vec = res.data[0].embedding
        assert len(vec) == 384
        assert abs(sum(v * v for v in vec) - 1.0) < 1e-6
        assert res.usage.prompt_tokens > 0
        client.close()  # their pooled sockets, closed now rather than whenever GC finds them
        eclient.close()
    finally:
        gen.stop()
        emb.stop()
