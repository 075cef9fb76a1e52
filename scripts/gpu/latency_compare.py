"""Streams the same load to several OpenAI-compatible servers and reports latency and throughput.

Used to calibrate the simulator's latency profiles against real vLLM: N concurrent streamed
completions (prompt of P words, T output tokens, ignore_eos), measured client-side: time to
first token (p50, p99), mean inter-token latency, output tokens/s. Needs aiohttp (a vLLM
dependency, so it is present wherever vLLM runs).

usage: latency_compare.py --model NAME [--api-key KEY] URL [URL ...] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from itertools import pairwise

import aiohttp

Result = tuple[float, list[float], int]  # TTFT, inter-token gaps, tokens


async def one(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> Result:
    start = time.perf_counter()
    stamps: list[float] = []
    async with session.post(url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text"):
                stamps.append(time.perf_counter())
    ttft = stamps[0] - start if stamps else float("nan")
    gaps = [b - a for a, b in pairwise(stamps)]
    return ttft, gaps, len(stamps)


async def run(url: str, args: argparse.Namespace) -> dict[str, float]:
    sem = asyncio.Semaphore(args.concurrency)
    results: list[Result] = []
    conn = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

        async def task(i: int) -> None:
            prompt = f"request {i} " + "lorem ipsum " * args.prompt_words
            body = {
                "model": args.model,
                "prompt": prompt,
                "max_tokens": args.tokens,
                "ignore_eos": True,
                "stream": True,
            }
            async with sem:
                results.append(await one(session, url, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(args.requests)))
        wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    gaps = [g for r in results for g in r[1]]
    return {
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p99_ms": 1000 * ttfts[int(0.99 * (len(ttfts) - 1))],
        "itl_mean_ms": 1000 * statistics.fmean(gaps) if gaps else float("nan"),
        "output_tok_per_s": sum(r[2] for r in results) / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt-words", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    for url in args.urls:
        asyncio.run(run(url, argparse.Namespace(**{**vars(args), "requests": 16})))  # warm-up
        stats = asyncio.run(run(url, args))
        print(url, json.dumps({k: round(v, 2) for k, v in stats.items()}))


if __name__ == "__main__":
    main()
