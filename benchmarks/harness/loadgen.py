"""The harness's Python load generator: fixed-rate and fixed-concurrency phases, and a probe.

Runs as its own process (pinned to the load core by the caller) with the interpreter of a vfleet
venv, and prints one JSON object on stdout. It drives vfleet's own benchmark client
(`vfleet.bench.client`: httptools on uvloop, one timestamp per read), so its cost per request is
small and the same for every system under test.

  rate    open loop: requests leave on a fixed schedule whatever the answers do, and each
          latency is counted from the request's *scheduled* time, so a stalled router shows up
          as latency instead of as fewer requests sent (no coordinated omission).
  stream  closed loop: `--concurrency` clients each stream one chat completion after another;
          SSE token events per second, time to the first token event, whole-stream time.
  probe   one request per route a router should pass through; status and a validity check.

usage: python loadgen.py rate --url http://127.0.0.1:PORT --rate 300 --duration 10
       python loadgen.py stream --url ... --concurrency 32 --tokens 64 --gap-ms 10
       python loadgen.py probe --url ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
from typing import Any

import uvloop

from vfleet.bench.client import Client
from vfleet.bench.stats import distribution

CHAT = "/v1/chat/completions"
TIMEOUT_S = 30.0


def chat_body(model: str, text: str, tokens: int, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    body["max_tokens"] = tokens
    if stream:
        body["stream"] = True
    return body


def ms(values: list[float]) -> dict[str, float | None]:
    return {k: None if v is None else round(v * 1000.0, 4) for k, v in distribution(values).items()}


async def fixed_rate(url: str, model: str, rate: float, duration: float, warmup: float) -> dict:
    client = Client(url)
    body = chat_body(model, "Reply with a short greeting.", 6)
    latencies: list[float] = []
    late: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}

    async def one(due: float, counted: bool) -> None:
        try:
            ex = await client.post(CHAT, body, TIMEOUT_S)
        except OSError as exc:
            if counted:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if counted:
            statuses[str(ex.status)] = statuses.get(str(ex.status), 0) + 1
            if ex.status == 200 and ex.done is not None:
                latencies.append(ex.done - due)

    interval = 1.0 / rate
    n_warm, n_all = round(warmup * rate), round((warmup + duration) * rate)
    start = time.perf_counter() + 0.05
    running: set[asyncio.Task[None]] = set()
    for i in range(n_all):
        due = start + i * interval
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        if i >= n_warm:
            late.append(time.perf_counter() - due)
        task = asyncio.create_task(one(due, i >= n_warm))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    client.close()
    return {
        "mode": "rate",
        "rate": rate,
        "sent": n_all - n_warm,
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "errors": errors,
        "latency_ms": ms(latencies),
        "send_late_ms": ms(late),
    }


async def streams(
    url: str,
    model: str,
    concurrency: int,
    tokens: int,
    gap_ms: float,
    duration: float,
    warmup: float,
) -> dict:
    client = Client(url)
    text = f"Stream a long answer. bench-gap-ms={gap_ms:g}" if gap_ms else "Stream an answer."
    body = chat_body(model, text, tokens, stream=True)
    ttft: list[float] = []
    whole: list[float] = []
    res = {"events": 0, "ok": 0, "bad": 0, "short": 0}
    errors: dict[str, int] = {}
    now = time.perf_counter
    t_count = now() + warmup
    t_end = t_count + duration

    async def client_loop() -> None:
        # spread the starts over one stream's length so the clients do not move in step
        await asyncio.sleep(random.uniform(0.0, max(0.05, tokens * gap_ms / 1000.0)))
        while now() < t_end:
            counted = now() >= t_count
            try:
                ex = await client.post(CHAT, body, TIMEOUT_S)
            except OSError as exc:
                if counted:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if not counted:
                continue
            res["events"] += ex.chunks
            if ex.status != 200 or ex.first_token is None or ex.done is None or ex.error:
                res["bad"] += 1
                continue
            res["ok"] += 1
            res["short"] += ex.chunks != tokens  # a router must not drop or merge events
            ttft.append(ex.first_token - ex.sent)
            whole.append(ex.done - ex.sent)

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    elapsed = now() - t_count
    client.close()
    return {
        "mode": "stream",
        "concurrency": concurrency,
        "tokens": tokens,
        "gap_ms": gap_ms,
        "seconds": round(elapsed, 3),
        "events": res["events"],
        "events_per_s": round(res["events"] / elapsed, 1),
        "streams_ok": res["ok"],
        "streams_bad": res["bad"],
        "streams_short": res["short"],
        "errors": errors,
        "ttft_ms": ms(ttft),
        "stream_ms": ms(whole),
    }


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


async def probe(url: str, model: str) -> dict:
    out: dict[str, Any] = {}
    for path in ("/v1/models", "/health", "/metrics"):
        status, raw = await asyncio.to_thread(_get, url + path)
        out[f"GET {path}"] = {"status": status, "bytes": len(raw)}
    client = Client(url)
    checks = [
        ("/v1/chat/completions", chat_body(model, "hi", 4), "choices"),
        ("/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 4}, "choices"),
        ("/v1/embeddings", {"model": model, "input": "hi"}, "data"),
    ]
    for path, body, key in checks:
        try:
            ex = await client.post(path, body, TIMEOUT_S)
        except OSError as exc:
            out[f"POST {path}"] = {"status": 0, "error": type(exc).__name__}
            continue
        try:
            valid = bool(json.loads(ex.body).get(key))
        except ValueError:
            valid = False
        out[f"POST {path}"] = {"status": ex.status, "valid": valid}
    try:
        ex = await client.post(CHAT, chat_body(model, "hi", 8, stream=True), TIMEOUT_S)
        out["POST /v1/chat/completions (stream)"] = {"status": ex.status, "events": ex.chunks}
    except OSError as exc:
        out["POST /v1/chat/completions (stream)"] = {"status": 0, "error": type(exc).__name__}
    client.close()
    return {"mode": "probe", "routes": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["rate", "stream", "probe"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--rate", type=float, default=300.0, help="rate: requests per second")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds run first, not measured")
    ap.add_argument("--concurrency", type=int, default=32, help="stream: clients")
    ap.add_argument("--tokens", type=int, default=64, help="stream: token events per stream")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="stream: ms between token events")
    a = ap.parse_args()
    url = a.url.rstrip("/")
    if a.mode == "rate":
        job = fixed_rate(url, a.model, a.rate, a.duration, a.warmup)
    elif a.mode == "stream":
        job = streams(url, a.model, a.concurrency, a.tokens, a.gap_ms, a.duration, a.warmup)
    else:
        job = probe(url, a.model)
    json.dump(uvloop.run(job), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
