"""KV events: how fast the router applies vLLM-shaped batches, and whether a router that starts
beside busy engines catches up on their replay buffers without purging them.

Two parts, each an A/B in the same run (ratios matter; absolute numbers on a shared machine do
not):

  apply    decode + `KvIndex.apply` of batches shaped like the H200 run's (a BlockStored of
           --blocks blocks of 16 tokens, and a BlockRemoved of as many), by
           vfleet.router.kvindex as of --old-rev and as it is now, interleaved in one process.
  catchup  --engines simulator publishers (vfleet.sim.kvevents.ZmqPublisher: vLLM's wire, and
           its one-burst replay through a ROUTER that drops what overflows) in a child process,
           each with --buffered batches already published and a live stream of --rate
           batches/s; a fresh subscriber (vfleet.kvsub as of --old-rev, then as it is now, each
           in its own process, alternating) joins and is timed until it has every engine's
           buffered batches. Reported: purges, replay rounds, batches/s replayed, and how long
           the event loop was held at a time meanwhile (CPU time between a 1 ms sleep and its
           wake-up).

    .venv/bin/python benchmarks/kv_events.py                       # both parts, defaults below
    .venv/bin/python benchmarks/kv_events.py --part catchup --buffered 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "761280f"  # the commit before the catch-up fix


# -- batches shaped like vLLM's ---------------------------------------------------------------


def batch(i: int, blocks: int, pool: Sequence[list[int]]) -> bytes:
    """Batch i: a new chain of `blocks` 16-token blocks stored, and batch i - 64's evicted."""
    stored = {
        "type": "BlockStored",
        "block_hashes": list(range(i * blocks + 1, (i + 1) * blocks + 1)),
        "parent_block_hash": None,
        "token_ids": pool[i % len(pool)][: 16 * blocks],
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
    }
    events: list[dict[str, Any]] = [stored]
    if i >= 64:
        first = (i - 64) * blocks + 1
        removed = {"type": "BlockRemoved", "block_hashes": list(range(first, first + blocks))}
        events.append(removed | {"medium": "GPU"})
    out = msgpack.packb([time.time(), events, 0])
    assert isinstance(out, bytes)
    return out


def token_pool(blocks: int) -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(150_000) for _ in range(16 * blocks)] for _ in range(16)]


# -- part 1: applying batches -----------------------------------------------------------------


def old_module(rev: str, path: str, name: str) -> Any:
    """The module at `path` as of git revision `rev` (the "old" side of an A/B)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def apply_part(args: argparse.Namespace) -> dict[str, Any]:
    from vfleet.router.kvindex import KvIndex

    old_index = old_module(args.old_rev, "src/vfleet/router/kvindex.py", "kvindex_old").KvIndex
    pool = token_pool(args.blocks)
    payloads = [batch(i, args.blocks, pool) for i in range(args.batches)]
    rates: dict[str, list[float]] = {"old": [], "new": []}
    decode_s: list[float] = []
    for _ in range(args.repeats):
        for name, kind in (("old", old_index), ("new", KvIndex)):
            index = kind()
            t0 = time.perf_counter()
            for seq, payload in enumerate(payloads):
                events = msgpack.unpackb(payload, raw=False, strict_map_key=False)[1]
                index.apply("http://e", seq, events)
            rates[name].append(len(payloads) / (time.perf_counter() - t0))
            assert index.blocks_of("http://e") == 64 * args.blocks
        t0 = time.perf_counter()
        for payload in payloads:
            msgpack.unpackb(payload, raw=False, strict_map_key=False)
        decode_s.append((time.perf_counter() - t0) / len(payloads))
    old, new = statistics.median(rates["old"]), statistics.median(rates["new"])
    return {
        "blocks_per_batch": args.blocks,
        "batch_bytes": len(payloads[-1]),
        "old_batches_per_s": round(old),
        "new_batches_per_s": round(new),
        "new_over_old": round(new / old, 2),
        "decode_us_per_batch": round(statistics.median(decode_s) * 1e6, 1),
    }


# -- part 2: a late subscriber's catch-up -----------------------------------------------------


def publish(args: argparse.Namespace) -> None:
    """Child process: the engines' publishers; prints `ready`, streams until stdin closes."""
    from vfleet.router.kvwire import replay_endpoint
    from vfleet.sim.kvevents import KVEventsConfig, ZmqPublisher

    pool = token_pool(args.blocks)
    pubs = []
    for e in range(args.engines):
        endpoint = f"ipc://{args.dir}/e{e}.sock"
        cfg = KVEventsConfig(
            enable_kv_cache_events=True,
            endpoint=endpoint,
            replay_endpoint=replay_endpoint(endpoint),
            buffer_steps=max(10_000, args.buffered),
        )
        pubs.append(ZmqPublisher(cfg))
    payloads = [batch(i, args.blocks, pool) for i in range(args.buffered + 64)]
    for pub in pubs:  # published before the router starts
        for i in range(args.buffered):
            pub._buffer.append((i, payloads[i]))
        pub._seq = args.buffered
    stop = threading.Event()

    def live() -> None:
        i = args.buffered
        while not stop.is_set():
            for pub in pubs:
                seq = pub._seq
                pub._seq += 1
                payload = payloads[args.buffered + i % 64]
                with pub._lock:
                    pub._buffer.append((seq, payload))
                pub._pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])
            i += 1
            stop.wait(1 / args.rate)

    thread = threading.Thread(target=live, daemon=True)
    thread.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    thread.join(2)
    for pub in pubs:
        pub.close()


def load_kvsub(impl: str, rev: str) -> Any:
    if impl == "new":
        import vfleet.kvsub

        return vfleet.kvsub
    return old_module(rev, "src/vfleet/kvsub.py", "kvsub_old")


def subscribe(args: argparse.Namespace) -> None:
    """Child process: a fresh subscriber; prints one JSON line."""
    from vfleet.router.kvindex import KvIndex

    kvsub = load_kvsub(args.impl, args.old_rev)
    urls = {f"http://e{e}": f"ipc://{args.dir}/e{e}.sock" for e in range(args.engines)}

    gc_pauses: list[float] = []
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = time.thread_time()
        else:
            gc_pauses.append(time.thread_time() - gc_start[0])

    gc.callbacks.append(on_gc)

    async def main() -> dict[str, Any]:
        index = KvIndex()
        feed = kvsub.KvFeed(index)
        lags: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            # The CPU time this thread spent between a 1 ms sleep and its wake-up: how long
            # other tasks held the loop, whatever else the machine was running meanwhile
            # (wall-clock lag on a shared machine is mostly the scheduler's).
            while not done.is_set():
                t0 = time.thread_time()
                await asyncio.sleep(0.001)
                lags.append(time.thread_time() - t0)

        prober = asyncio.create_task(probe())
        t0 = time.perf_counter()
        feed.set_publishers(urls)
        deadline = t0 + args.cap_s
        while time.perf_counter() < deadline:
            if all(index.seq(u) >= args.buffered for u in urls):
                break
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        done.set()
        await prober
        await feed.close()
        lags.sort()
        replayed = feed.counts["replayed"]
        return {
            "impl": args.impl,
            "caught_up": all(index.seq(u) >= args.buffered for u in urls),
            "seconds": round(took, 2),
            "purged": feed.counts["purged"],
            "replayed": replayed,
            "replay_retries": feed.counts["replay_retries"],
            "replayed_per_s": round(replayed / took),
            "blocks_known": sum(index.blocks_of(u) for u in urls),
            "loop_held_p99_ms": round(lags[int(len(lags) * 0.99)] * 1e3, 1) if lags else None,
            "loop_held_max_ms": round(lags[-1] * 1e3, 1) if lags else None,
            "gc_pause_max_ms": round(max(gc_pauses, default=0) * 1e3, 1),
        }

    print(json.dumps(asyncio.run(main())), flush=True)


def catchup_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    me = [sys.executable, str(Path(__file__).resolve())]
    common = [
        f"--engines={args.engines}",
        f"--buffered={args.buffered}",
        f"--blocks={args.blocks}",
        f"--rate={args.rate}",
    ]
    more = [f"--old-rev={args.old_rev}", f"--cap-s={args.cap_s}"]
    results = []
    for _ in range(args.repeats):
        for impl in ("old", "new"):
            with tempfile.TemporaryDirectory() as d:
                pub = subprocess.Popen(
                    [*me, "--role=pub", f"--dir={d}", *common],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                try:
                    assert pub.stdout is not None and pub.stdout.readline().strip() == "ready"
                    sub = subprocess.run(
                        [*me, "--role=sub", f"--dir={d}", f"--impl={impl}", *common, *more],
                        check=False,
                        capture_output=True,
                        text=True,
                        timeout=args.cap_s + 60,
                        env=os.environ | {"PYTHONWARNINGS": "ignore"},
                    )
                    lines = [ln for ln in sub.stdout.splitlines() if ln.startswith("{")]
                    if not lines:
                        raise SystemExit(f"subscriber failed: {sub.stderr[-2000:]}")
                    results.append(json.loads(lines[-1]))
                    print(lines[-1], flush=True)
                finally:
                    if pub.stdin is not None:
                        pub.stdin.close()
                    pub.wait(10)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["apply", "catchup", "both"], default="both")
    p.add_argument("--role", choices=["pub", "sub"], help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=["old", "new"], default="new", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--blocks", type=int, default=200, help="blocks per BlockStored (16 tokens)")
    p.add_argument("--batches", type=int, default=1000, help="batches applied per apply trial")
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--buffered", type=int, default=4000, help="batches each engine buffered")
    p.add_argument("--rate", type=float, default=50.0, help="live batches/s per engine")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cap-s", type=float, default=60.0, help="longest wait for a catch-up")
    p.add_argument("--old-rev", default=OLD_REV, help="git revision of the 'old' kvsub")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.role == "pub":
        publish(args)
        return
    if args.role == "sub":
        subscribe(args)
        return
    if args.part in ("apply", "both"):
        print(json.dumps({"apply": apply_part(args)}), flush=True)
    if args.part in ("catchup", "both"):
        catchup_part(args)


if __name__ == "__main__":
    main()
