"""Cost of one `kv` routing decision: a 16k-token prompt over 64 engines, tokenization excluded.

Builds a KV-event index the way the router does (BlockStored events re-hashed from their token
ids) in which the 64 engines hold the prompt's 1,000 blocks (16 tokens each) to 64 different
depths, plus unrelated chains, and times `KvAffinity.choose` on it: the index lookup, the
policy's own predictions (recorded by every decision), the cost model and the overload bound.
The request's chain is computed once beforehand, as the router caches it.

References timed in the same process, interleaved in rounds (A/B), over the same 64 endpoint
snapshots: `least_load` (no affinity at all) and `prefix` (the router's approximate policy).
Prints p50/p99 in microseconds and the ratios to the references; issue 11's target is a
decision <= 200 us p99.

usage: python benchmarks/kv_decision.py [--engines 64] [--holders N] [--tokens 16384] [--rounds 20]
       [--per-round 500]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from vfleet.router.kvindex import KvIndex, chain_hashes
from vfleet.router.policies import KvAffinity, LeastLoad, Policy, PrefixAffinity, prefix_hashes
from vfleet.router.state import Chain, EndpointState, RouteKey

BLOCK = 16


def build(
    engines: int, tokens: int, seed: int, holders: int | None = None
) -> tuple[KvIndex, list[int], list[str]]:
    """An index where each of `holders` engines (default: all) holds the first depth_i blocks
    of the prompt (all depths different: the bisection's worst case), and every engine a chain
    of its own; the prompt's token ids; the engine urls."""
    rng = random.Random(seed)
    prompt = [rng.randrange(150_000) for _ in range(tokens)]
    blocks = tokens // BLOCK
    urls = [f"http://10.0.{i // 250}.{i % 250}:8000" for i in range(engines)]
    index = KvIndex()
    depths = rng.sample(range(1, blocks + 1), engines)
    for i in range(engines if holders is None else holders, engines):
        depths[i] = 0
    for i, (url, depth) in enumerate(zip(urls, depths, strict=True)):
        own = [rng.randrange(150_000) for _ in range(256 * BLOCK)]
        events = [
            _stored(prompt[: depth * BLOCK], 1_000_000 * i),
            _stored(own, 1_000_000 * i + 500_000),
        ]
        index.apply(url, 0, events)
    return index, prompt, urls


def _stored(tokens: list[int], first_hash: int) -> dict[str, object]:
    n = len(tokens) // BLOCK
    return {
        "type": "BlockStored",
        "block_hashes": list(range(first_hash, first_hash + n)),
        "parent_block_hash": None,
        "token_ids": tokens[: n * BLOCK],
        "block_size": BLOCK,
    }


def timed(choose: Callable[[], object], n: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        choose()
        out.append((clock() - t0) / 1000.0)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=500)
    ap.add_argument("--holders", type=int, default=None, help="engines holding the prompt")
    args = ap.parse_args()
    index, prompt, urls = build(args.engines, args.tokens, seed=1, holders=args.holders)
    rng = random.Random(2)
    snapshot = [
        EndpointState(u, True, inflight=rng.randrange(8), running=rng.randrange(16)) for u in urls
    ]
    chain = Chain(tuple(chain_hashes(prompt, BLOCK)), len(prompt), BLOCK)
    text = "".join(chr(0x4E00 + t % 2000) for t in prompt)  # ~ a 16k-token prompt's text
    prefix = prefix_hashes(text)
    kv = KvAffinity(index)
    kv.observe = lambda decision: None  # the router always observes (its metrics)
    policies: dict[str, tuple[Policy, RouteKey]] = {
        "kv": (kv, RouteKey("m", prefix=prefix, chain=chain)),
        "least_load": (LeastLoad(), RouteKey("m")),
        "prefix": (PrefixAffinity(), RouteKey("m", prefix=prefix)),
    }
    samples: dict[str, list[float]] = {name: [] for name in policies}
    now = 0.0
    for r in range(args.rounds):
        order = list(policies)
        order = order[r % len(order) :] + order[: r % len(order)]  # rotate: no fixed position
        for name in order:
            policy, key = policies[name]
            if name == "kv":
                now += 0.5  # predictions recorded a round ago start to expire
                key = RouteKey("m", prefix=prefix, chain=chain, now=now)
            samples[name] += timed(lambda p=policy, k=key: p.choose(snapshot, k), args.per_round)
    blocks = len(chain.blocks)
    print(
        f"kv decision: {len(prompt)} tokens ({blocks} blocks of {BLOCK}) over {len(urls)} "
        f"engines ({args.holders or args.engines} holding it), index of {index.size()} blocks; "
        f"{args.rounds} x {args.per_round} per policy"
    )
    ref = {n: (pct(s, 0.5), pct(s, 0.99)) for n, s in samples.items()}
    for name, (p50, p99) in ref.items():
        mean = statistics.fmean(samples[name])
        print(f"  {name:<10} p50 {p50:8.1f} us  p99 {p99:8.1f} us  mean {mean:8.1f} us")
    kv50, kv99 = ref["kv"]
    for name in ("least_load", "prefix"):
        print(f"  kv / {name}: p50 x{kv50 / ref[name][0]:.2f}, p99 x{kv99 / ref[name][1]:.2f}")
    print(f"  target: kv p99 <= 200 us -> {'met' if kv99 <= 200 else 'NOT met'} ({kv99:.1f} us)")


if __name__ == "__main__":
    main()
