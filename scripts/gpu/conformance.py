"""Does `vfleet sim` answer like `vllm serve`? Sends the same requests to both and compares.

For each probe it compares the HTTP status, the JSON shape (keys and value types, recursively;
texts, numbers and ids naturally differ between a random-weight model and the simulator) and,
for errors, the error `type` and `param`. Prints one line per probe and writes a JSON report.
Uses only the standard library, so it runs on a GPU host next to vLLM with nothing installed.

usage: conformance.py --vllm URL --sim URL --model NAME [--embed-vllm URL --embed-sim URL
       --embed-model NAME] [--api-key KEY] [--out report.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Reply:
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def shape(v: Any) -> Any:
    """Keys and value types, recursively; a list is described by its first element."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "null" if v is None else type(v).__name__


def diff(a: Any, b: Any, path: str = "$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in b:
                out.append(f"{path}.{k}: only in vLLM")
            elif k not in a:
                out.append(f"{path}.{k}: only in sim")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        return diff(a[0], b[0], path + "[0]") if a and b else []
    # null vs a value is not a shape difference (e.g. a stop_reason set on one side only).
    if a != b and "null" not in (a, b):
        return [f"{path}: vLLM {a} vs sim {b}"]
    return []


def sse_events(body: bytes) -> list[Any]:
    events = []
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def stream_shape(body: bytes) -> Any:
    """The shape of each kind of SSE event: first, middle, last-with-choices, usage, [DONE]."""
    ev = sse_events(body)
    kinds: dict[str, Any] = {}
    with_choices = [e for e in ev if isinstance(e, dict) and e.get("choices")]
    if with_choices:
        kinds["first"] = shape(with_choices[0])
        kinds["last"] = shape(with_choices[-1])
        if len(with_choices) > 2:
            kinds["middle"] = shape(with_choices[len(with_choices) // 2])
    usage = [e for e in ev if isinstance(e, dict) and e.get("choices") == []]
    if usage:
        kinds["usage"] = shape(usage[-1])
    kinds["done_last"] = "bool" if ev and ev[-1] == "[DONE]" else "missing"
    return kinds


def metric_families(text: bytes) -> dict[str, str]:
    out = {}
    for line in text.decode().splitlines():
        m = re.match(r"# TYPE (vllm:\S+) (\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@dataclass
class Probe:
    name: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    exact: tuple[str, ...] = ()  # error fields compared by value


def generate_probes(model: str, key: str | None) -> list[Probe]:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    msgs = [{"role": "user", "content": "Say something about foxes."}]
    too_long = "word " * 2000
    err = ("type", "param", "code")
    return [
        Probe("health", "GET", "/health"),
        Probe("ping", "GET", "/ping"),
        Probe("version", "GET", "/version"),
        Probe("models", "GET", "/v1/models", headers=auth),
        Probe("load", "GET", "/load"),
        Probe("unknown route", "GET", "/nope"),
        Probe("wrong method", "POST", "/v1/models", body={}, headers=auth),
        Probe(
            "completion",
            "POST",
            "/v1/completions",
            headers=auth,
            body={"model": model, "prompt": "Hello there", "max_tokens": 8, "ignore_eos": True},
        ),
        Probe(
            "completion n=2 + stop",
            "POST",
            "/v1/completions",
            headers=auth,
            body={"model": model, "prompt": ["a", "b"], "n": 2, "max_tokens": 8, "stop": ["zzz"]},
        ),
        Probe(
            "chat",
            "POST",
            "/v1/chat/completions",
            headers=auth,
            body={"model": model, "messages": msgs, "max_tokens": 8, "ignore_eos": True},
        ),
        Probe(
            "chat stream + usage",
            "POST",
            "/v1/chat/completions",
            headers=auth,
            stream=True,
            body={
                "model": model,
                "messages": msgs,
                "max_tokens": 8,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
        Probe(
            "chat stream",
            "POST",
            "/v1/chat/completions",
            headers=auth,
            stream=True,
            body={
                "model": model,
                "messages": msgs,
                "max_tokens": 8,
                "ignore_eos": True,
                "stream": True,
            },
        ),
        Probe(
            "completion stream + usage",
            "POST",
            "/v1/completions",
            headers=auth,
            stream=True,
            body={
                "model": model,
                "prompt": "Hi",
                "max_tokens": 8,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
        Probe(
            "unknown model",
            "POST",
            "/v1/chat/completions",
            headers=auth,
            exact=(*err, "message"),
            body={"model": "nope", "messages": msgs},
        ),
        Probe(
            "invalid json",
            "POST",
            "/v1/chat/completions",
            headers=auth,
            raw=b"{not json",
            exact=("type", "code"),
        ),
        Probe(
            "missing messages",
            "POST",
            "/v1/chat/completions",
            headers=auth,
            exact=err,
            body={"model": model},
        ),
        Probe(
            "max_tokens 0",
            "POST",
            "/v1/completions",
            headers=auth,
            exact=(*err, "message"),
            body={"model": model, "prompt": "x", "max_tokens": 0},
        ),
        Probe(
            "max_tokens > max_model_len",
            "POST",
            "/v1/completions",
            headers=auth,
            exact=err,
            body={"model": model, "prompt": "x", "max_tokens": 100000},
        ),
        Probe(
            "prompt too long",
            "POST",
            "/v1/completions",
            headers=auth,
            exact=err,
            body={"model": model, "prompt": too_long, "max_tokens": 4},
        ),
        Probe(
            "stream_options without stream",
            "POST",
            "/v1/completions",
            headers=auth,
            exact=err,
            body={"model": model, "prompt": "x", "stream_options": {"include_usage": True}},
        ),
        Probe(
            "text/plain body",
            "POST",
            "/v1/completions",
            exact=("type", "code"),
            headers={**auth, "Content-Type": "text/plain"},
            raw=b'{"prompt": "x"}',
        ),
        Probe("no api key", "GET", "/v1/models"),
        Probe("wrong api key", "GET", "/v1/models", headers={"Authorization": "Bearer wrong"}),
        Probe(
            "embeddings on a generate model",
            "POST",
            "/v1/embeddings",
            headers=auth,
            body={"model": model, "input": "x"},
        ),
        Probe("tokenize prompt", "POST", "/tokenize", body={"model": model, "prompt": "Hello"}),
        Probe(
            "tokenize messages",
            "POST",
            "/tokenize",
            body={"model": model, "messages": msgs, "return_token_strs": True},
        ),
        Probe("detokenize", "POST", "/detokenize", body={"model": model, "tokens": [1, 2, 3]}),
        Probe(
            "unload unknown lora",
            "POST",
            "/v1/unload_lora_adapter",
            headers=auth,
            exact=(*err, "message"),
            body={"lora_name": "nope"},
        ),
        Probe("is_sleeping", "GET", "/is_sleeping"),
    ]


def embed_probes(model: str) -> list[Probe]:
    docs = ["the fox runs", "stock prices fell", "a quick brown fox"]
    return [
        Probe("embeddings", "POST", "/v1/embeddings", body={"model": model, "input": ["a", "b"]}),
        Probe(
            "embeddings token ids",
            "POST",
            "/v1/embeddings",
            body={"model": model, "input": [1000, 2000, 3000]},
        ),
        Probe(
            "rerank",
            "POST",
            "/v1/rerank",
            body={"model": model, "query": "fox", "documents": docs, "top_n": 2},
        ),
        Probe(
            "score", "POST", "/v1/score", body={"model": model, "queries": "fox", "documents": docs}
        ),
        Probe(
            "chat on an embedding model",
            "POST",
            "/v1/chat/completions",
            body={"model": model, "messages": [{"role": "user", "content": "x"}]},
        ),
        Probe(
            "embeddings missing input",
            "POST",
            "/v1/embeddings",
            exact=("type", "code"),
            body={"model": model},
        ),
    ]


def compare(probe: Probe, vllm: str, sim: str) -> dict[str, Any]:
    a = call(vllm, probe.method, probe.path, probe.body, probe.headers, probe.raw)
    b = call(sim, probe.method, probe.path, probe.body, probe.headers, probe.raw)
    problems = []
    if a.status != b.status:
        problems.append(f"status: vLLM {a.status} vs sim {b.status}")
    if probe.stream:
        problems += diff(stream_shape(a.body), stream_shape(b.body))
    else:
        ja, jb = a.json(), b.json()
        if (ja is None) != (jb is None):
            problems.append(f"body: vLLM {a.body[:80]!r} vs sim {b.body[:80]!r}")
        elif ja is not None:
            problems += diff(shape(ja), shape(jb))
            ea = ja.get("error") if isinstance(ja, dict) else None
            eb = jb.get("error") if isinstance(jb, dict) else None
            if isinstance(ea, dict) and isinstance(eb, dict):
                for key in probe.exact:
                    if ea.get(key) != eb.get(key):
                        problems.append(f"error.{key}: vLLM {ea.get(key)!r} vs sim {eb.get(key)!r}")
        elif a.body != b.body:
            problems.append(f"body: vLLM {a.body[:80]!r} vs sim {b.body[:80]!r}")
    return {
        "probe": probe.name,
        "ok": not problems,
        "problems": problems,
        "vllm": {"status": a.status, "body": a.body[:2000].decode(errors="replace")},
        "sim": {"status": b.status, "body": b.body[:2000].decode(errors="replace")},
    }


def compare_metrics(vllm: str, sim: str) -> dict[str, Any]:
    fa = metric_families(call(vllm, "GET", "/metrics").body)
    fb = metric_families(call(sim, "GET", "/metrics").body)
    problems = [f"{k}: missing in sim" for k in sorted(set(fa) - set(fb))]
    problems += [
        f"{k}: vLLM {fa[k]} vs sim {fb[k]}" for k in sorted(set(fa) & set(fb)) if fa[k] != fb[k]
    ]
    return {
        "probe": "metrics families",
        "ok": not problems,
        "problems": problems,
        "extra_in_sim": sorted(set(fb) - set(fa)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vllm", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--embed-vllm")
    ap.add_argument("--embed-sim")
    ap.add_argument("--embed-model")
    ap.add_argument("--out", default="conformance.json")
    args = ap.parse_args()
    results = [compare(p, args.vllm, args.sim) for p in generate_probes(args.model, args.api_key)]
    results.append(compare_metrics(args.vllm, args.sim))
    if args.embed_vllm and args.embed_sim and args.embed_model:
        for p in embed_probes(args.embed_model):
            r = compare(p, args.embed_vllm, args.embed_sim)
            r["probe"] = "embed: " + r["probe"]
            results.append(r)
    for r in results:
        print(("ok   " if r["ok"] else "DIFF ") + r["probe"])
        for problem in r["problems"]:
            print("       " + problem)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    bad = sum(not r["ok"] for r in results)
    print(f"{len(results) - bad}/{len(results)} probes agree; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
