"""Cost of a request's KV-block chain when prompts share long prefixes: the router's old full
path against the incremental one (issue 11), measured in the same run.

Needs nothing but the repository: it trains its own byte-level BPE tokenizer (16k vocabulary,
like Qwen's or Llama 3's kind) on the Python standard library's sources, and loads it as the
router does (`HfTokenizer`, self-check included). Prompts are like vLLM's prefix_repetition
dataset: `--prefixes` prefixes of `--prefix-tokens` random token ids decoded to text, and each
request one of them plus a fresh suffix of `--suffix-tokens` random ids.

Part 1, per request, in this thread, the two paths interleaved in rounds (A/B):
- old: `Tokenizer.encode` of the whole prompt (the GIL held throughout), then its block hashes
  through the router's `BlockMemo` (warm: the prefixes' blocks are memoized);
- new: `HfTokenizer.plan` + `text_chain`: a cached prompt's ids up to a safe cut, the rest
  encoded with the GIL released, block hashes reused from the cached prompt.
Every new chain is checked against the old one (they must be equal). Also timed: a prompt of a
prefix never seen (a miss: both paths encode in full; the new one also notes where to cut).

Part 2, through the router's pool at `--rate` requests/s on an asyncio loop: how long a request
waits before it can be routed, how many got a chain, and how late 1 ms timers on the loop ran
(what the GIL costs the other requests). old: the previous `Chains` behaviour (2 threads,
`encode`, waited for up to 50 ms); new: `Chains` (quick lane, bounded; a miss routes at once).

usage: python benchmarks/kv_tokenize.py [--prefixes 32] [--prefix-tokens 3000]
       [--suffix-tokens 128] [--rounds 6] [--per-round 64] [--rate 100] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import random
import statistics
import sysconfig
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from kv_routing import byte_level_bpe
from vfleet.router.kvchain import QUICK_THREADS, BlockMemo, Chains, HfTokenizer, Prompt, text_chain
from vfleet.router.state import Chain

BLOCK = 16
OLD_WAIT_S = 0.05  # the previous kvroute.CHAIN_WAIT_S


def train(folder: Path, vocab: int = 16384, budget: int = 6_000_000) -> Path:
    """A byte-level BPE tokenizer trained on up to `budget` bytes of the standard library."""
    from tokenizers import processors

    root = sysconfig.get_paths()["stdlib"]
    files: list[str] = []
    size = 0
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        if "site-packages" in path or f"{os.sep}test" in path:
            continue
        files.append(path)
        size += os.path.getsize(path)
        if size > budget:
            break
    tok, trainer = byte_level_bpe(vocab)
    tok.train(files, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    saved = folder / "tokenizer.json"
    tok.save(str(saved))
    return saved


class Prompts:
    """prefix_repetition-like prompts: random ids decoded, a fresh suffix per request."""

    def __init__(self, tok: HfTokenizer, args: argparse.Namespace, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.decode = tok.rust.decode
        self.vocab = tok.rust.get_vocab_size()
        self.args = args
        self.prefixes = [self._text(args.prefix_tokens) for _ in range(args.prefixes)]

    def _text(self, tokens: int) -> str:
        # ids 3.. : the special tokens are not drawn (a prompt carries none)
        return self.decode([self.rng.randrange(3, self.vocab) for _ in range(tokens)])

    def next(self) -> str:
        return self.rng.choice(self.prefixes) + self._text(self.args.suffix_tokens)

    def fresh(self) -> str:
        """A prompt of a prefix never seen."""
        return self._text(self.args.prefix_tokens) + self._text(self.args.suffix_tokens)


def old_chain(tok: HfTokenizer, memo: BlockMemo, text: str) -> Chain:
    """The previous path: encode (GIL held), BlockMemo hashes."""
    ids = tok.rust.encode(text, add_special_tokens=True).ids
    return Chain(memo.hashes(ids, BLOCK), len(ids), BLOCK)


def new_chain(tok: HfTokenizer, text: str) -> Chain:
    return text_chain(tok, text, True, BLOCK, None, tok.plan(text, True))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def part1(tok: HfTokenizer, prompts: Prompts, args: argparse.Namespace) -> None:
    memo = BlockMemo()
    for prefix in prompts.prefixes:  # steady state: every prefix seen once by both paths
        text = prefix + prompts._text(args.suffix_tokens)
        assert old_chain(tok, memo, text) == new_chain(tok, text)
    old: list[float] = []
    new: list[float] = []
    reused = []
    todo = []  # characters a hit encodes (its suffix, and the shared text after the cut)
    for r in range(args.rounds):
        texts = [prompts.next() for _ in range(args.per_round)]
        order = [("old", old), ("new", new)]
        for name, out in order if r % 2 == 0 else order[::-1]:
            for text in texts:
                t0 = time.perf_counter()
                if name == "old":
                    chain = old_chain(tok, memo, text)
                else:
                    plan = tok.plan(text, True)
                    chain = text_chain(tok, text, True, BLOCK, None, plan)
                    if plan is not None:
                        reused.append(1 - plan.todo / len(text))
                        todo.append(plan.todo)
                out.append(time.perf_counter() - t0)
                if name == "new":
                    assert chain == old_chain(tok, BlockMemo(), text), "incremental != full"
    miss_old: list[float] = []
    miss_new: list[float] = []
    for i in range(max(8, args.rounds)):
        text = prompts.fresh()
        for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
            t0 = time.perf_counter()
            if name == "old":
                old_chain(tok, memo, text)
            else:
                new_chain(tok, text)
            (miss_old if name == "old" else miss_new).append(time.perf_counter() - t0)
    chars = statistics.mean(len(prompts.next()) for _ in range(32))
    print(
        f"prompts: ~{chars:,.0f} chars, text reused per hit {statistics.mean(reused):.1%} "
        f"(encoded: {statistics.median(todo):,.0f} chars p50)"
    )
    print("per-request chain cost, one thread (ms)   p50      p99")
    for label, values in (("old: encode + BlockMemo", old), ("new: incremental", new)):
        print(f"  {label:36s} {pct(values, 0.5) * 1e3:7.3f}  {pct(values, 0.99) * 1e3:7.3f}")
    print(
        f"  ratio old/new                        {pct(old, 0.5) / pct(new, 0.5):7.1f}x "
        f"{pct(old, 0.99) / pct(new, 0.99):7.1f}x"
    )
    print(
        f"  a new prefix (miss): old p50 {pct(miss_old, 0.5) * 1e3:.2f} ms, new p50 "
        f"{pct(miss_new, 0.5) * 1e3:.2f} ms (new/old {pct(miss_new, 0.5) / pct(miss_old, 0.5):.2f})"
    )


async def stream(
    submit: Callable[[str, Callable[[Chain | None], None]], None], texts: list[str], rate: float
) -> tuple[list[float], int, list[float]]:
    """Requests at `rate`/s: (each one's wait until it may be routed, how many had a chain,
    lateness of a 1 ms timer on the loop meanwhile)."""
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    chains = 0
    lateness: list[float] = []
    done = asyncio.Event()
    left = len(texts)

    def one(text: str) -> None:
        t0 = loop.time()

        def routed(chain: Chain | None) -> None:
            nonlocal chains, left
            waits.append(loop.time() - t0)
            chains += chain is not None
            left -= 1
            if not left:
                done.set()

        submit(text, routed)

    async def ticker() -> None:
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.001)
            lateness.append(loop.time() - t0 - 0.001)

    tick = loop.create_task(ticker())
    start = loop.time()
    for i, text in enumerate(texts):
        loop.call_at(start + i / rate, one, text)
    await asyncio.wait_for(done.wait(), timeout=len(texts) / rate + 30)
    await tick
    return waits, chains, lateness


def bounded(
    loop: asyncio.AbstractEventLoop,
    future: Future[Chain | None],
    wait_s: float,
    routed: Callable[[Chain | None], None],
    queue_s: float | None = None,
) -> None:
    """Call `routed` once: with the future's chain, or with None after `wait_s`, or after
    `queue_s` when no thread took it by then (it is cancelled): kvroute's rules."""
    state = {"done": False}

    def finish(chain: Chain | None) -> None:
        if not state["done"]:
            state["done"] = True
            routed(chain)

    def queued_long() -> None:
        if future.cancel():
            finish(None)
        else:
            loop.call_later(wait_s - (queue_s or 0), finish, None)

    if queue_s is None:
        loop.call_later(wait_s, finish, None)
    else:
        loop.call_later(queue_s, queued_long)

    def got(fut: asyncio.Future[Chain | None]) -> None:
        ok = not fut.cancelled() and fut.exception() is None
        finish(fut.result() if ok else None)

    asyncio.wrap_future(future, loop=loop).add_done_callback(got)


def part2(path: Path, args: argparse.Namespace) -> None:
    """The old and new pools, each with its own caches warmed by one prompt of each prefix,
    on the same request streams."""
    from vfleet.router import kvroute

    def run(name: str) -> tuple[list[float], int, list[float]]:
        tok = HfTokenizer(path, {}, None, check=False, name="bench")
        prompts = Prompts(tok, args)
        count = int(args.rate * args.seconds)
        texts = [prompts.next() for _ in range(count)]
        warm = [p + prompts._text(args.suffix_tokens) for p in prompts.prefixes]
        loop = asyncio.new_event_loop()
        submit: Callable[[str, Callable[[Chain | None], None]], None]
        if name == "old":
            pool = ThreadPoolExecutor(2)
            memo = BlockMemo()
            cache: dict[str, Chain] = {}

            def compute(text: str) -> Chain:
                chain = cache[text] = old_chain(tok, memo, text)
                return chain

            for text in warm:
                compute(text)

            def submit(text: str, routed: Callable[[Chain | None], None]) -> None:
                hit = cache.get(text)
                if hit is not None:
                    routed(hit)
                    return
                bounded(loop, pool.submit(compute, text), OLD_WAIT_S, routed)

            def close() -> None:
                pool.shutdown(wait=True)

        else:
            chains = Chains(threads=args.threads)
            card = {"id": "bench", "root": str(path.parent)}  # loaded as the router loads it
            deadline = time.monotonic() + 60
            while not chains.tokenizer_ready("bench", card) and time.monotonic() < deadline:
                time.sleep(0.01)
            for text in warm:  # first sight of a prefix: the slow lane encodes it in full
                prompt = Prompt(text=text)
                future = chains.compute("bench", card, BLOCK, prompt)
                assert future is not None and future.result(timeout=10) is None
                while chains.lookup("bench", BLOCK, prompt) is None:
                    assert time.monotonic() < deadline, "the slow lane did not cache a chain"
                    time.sleep(0.001)

            def submit(text: str, routed: Callable[[Chain | None], None]) -> None:
                prompt = Prompt(text=text)
                hit = chains.lookup("bench", BLOCK, prompt)
                if hit is not None:
                    routed(hit)
                    return
                queued = chains.would_queue()
                future = chains.compute("bench", card, BLOCK, prompt)
                if future is None:
                    routed(None)
                    return
                queue_s = kvroute.CHAIN_QUEUE_S if queued else None
                bounded(loop, future, kvroute.CHAIN_WAIT_S, routed, queue_s)

            close = chains.close
        try:
            return loop.run_until_complete(stream(submit, texts, args.rate))
        finally:
            close()
            loop.close()

    results: dict[str, list[tuple[list[float], int, list[float]]]] = {"old": [], "new": []}
    for r in range(2):
        for name in ("old", "new") if r == 0 else ("new", "old"):
            results[name].append(run(name))
    print(
        f"\nthrough the pool at {args.rate:g} req/s, {args.seconds:g} s x 2 runs each "
        f"(new: {args.threads} quick-lane threads):"
    )
    print("  path  wait p50   wait p99   with chain   loop lateness p99 / max (ms)")
    for name, runs in results.items():
        waits = [w for run in runs for w in run[0]]
        late = [x for run in runs for x in run[2]]
        share = sum(run[1] for run in runs) / sum(len(run[0]) for run in runs)
        print(
            f"  {name:4s}  {pct(waits, 0.5) * 1e3:7.3f}   {pct(waits, 0.99) * 1e3:7.3f}    "
            f"{share:8.1%}      {pct(late, 0.99) * 1e3:6.2f} / {max(late) * 1e3:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefixes", type=int, default=32)
    parser.add_argument("--prefix-tokens", type=int, default=3000)
    parser.add_argument("--suffix-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=64)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=QUICK_THREADS, help="quick-lane threads")
    parser.add_argument("--no-pool", action="store_true", help="part 1 only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        path = train(Path(folder))
        trained = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok = HfTokenizer(path, {}, None, name="bench")
        loaded = time.perf_counter() - t0
        if tok.incremental is None:
            raise SystemExit(f"the self-check refused the tokenizer: {tok.refused}")
        print(f"tokenizer: trained in {trained:.1f} s, loaded + self-checked in {loaded:.2f} s")
        part1(tok, Prompts(tok, args), args)
        if not args.no_pool:
            part2(path, args)


if __name__ == "__main__":
    main()
