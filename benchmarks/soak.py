"""Soak: does the router stay flat under 10,000 concurrent streams plus a million requests?

Everything runs from this repository on 127.0.0.1: `vfleet sim` engines (model `fast`: the
instant profile, for the requests; model `slow`: one decode step per --stream-step-ms, for the
streams, so each stream stays open for --stream-tokens steps), `vfleet router` in front, and
--clients load processes (asyncio + uvloop, raw HTTP/1.1 keep-alive).

Phases: warm-up (every stream opened, --warmup requests answered, every stream slot recycled
once), then --requests chat completions over --connections keep-alive connections while the
streams stay open (a finished stream is reopened at once), then a cool-down with no load. The
RSS and open file descriptors of the router process(es) (with more than one worker: the parent
and its workers, summed, so pages shared since the fork count once per process) are sampled
every --interval seconds, plotted to --out (PNG) and summarized: baseline at the end of the
warm-up, peak, end of the load, growth.

The router raises its own open-file limit to the hard limit, and so does every client process;
with --router-workers 0 the router gets enough workers that each one's share of client and
engine sockets fits that limit (2 for 10,000 streams under a hard limit of 20,000). Ctrl-C (or
SIGTERM) ends the load early and still reports what was measured.

usage: python benchmarks/soak.py [--requests 1000000] [--streams 10000] [--out soak.png]
       [--clients 4] [--connections 256] [--router-workers 0 (auto)] [--json samples.json]
A short run: python benchmarks/soak.py --requests 20000 --streams 500 --warmup 2000
Run it from a venv with vfleet installed (`pip install '.[dev]'`: matplotlib draws the plot).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

READY = re.compile(r"ready on (http://[\d.]+:\d+)")
# Client counters, one row per client process, written only by that process.
C_OK, C_ERR, C_STREAMS_OPEN, C_STREAMS_DONE, C_STREAM_ERR, C_WARM, C_DONE, N_COUNTERS = range(8)
MAX_REPORTED = 5  # failures each client process describes on stderr


# -- processes under test -------------------------------------------------------------------


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the engines and router inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_ready(cmd: list[str], timeout_s: float = 60.0) -> tuple[subprocess.Popen[str], str]:
    """Start `cmd`, wait (bounded) for its `ready on URL` line; keep draining its stderr."""
    # A session of its own: a Ctrl-C at the terminal reaches the soak, which ends the load and
    # still reports, not the servers under test.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stderr is not None
    tail: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        tail = [*tail[-20:], line]
        m = READY.search(line)
        if m:
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise SystemExit(f"{' '.join(cmd[:5])} did not become ready:\n{''.join(tail)}")


def _drain(proc: subprocess.Popen[str]) -> None:
    """Read a child's stderr to the end so a chatty child never blocks on a full pipe; warnings
    and errors are echoed (a soak that hides the router's complaints proves little)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if " WARNING " in line or " ERROR " in line or "Traceback" in line:
            sys.stderr.write(f"[{proc.pid}] {line}")


def sim_cmd(model: str, args: argparse.Namespace, slow: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "vfleet",
        "sim",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model",
        model,
        "--profile",
        "instant",
        "--max-model-len",
        "512",
    ]
    if slow:  # every stream decodes in the same step: room for all of them at once
        per = math.ceil(args.streams / args.stream_engines) + 64
        cmd += [
            "--step-base-ms",
            str(args.stream_step_ms),
            "--max-num-seqs",
            str(per),
            "--max-num-batched-tokens",
            str(per * 16),
            "--num-gpu-blocks",
            str(per * 8),
        ]
    return cmd


def router_workers(args: argparse.Namespace, hard: int) -> int:
    """Enough workers that each one's share of sockets (client side + engine side) fits the
    open-file limit, with a margin for SO_REUSEPORT's uneven spread."""
    if args.router_workers > 0:
        return int(args.router_workers)
    sockets: int = 2 * (args.streams + args.connections) + 512
    return max(1, math.ceil(sockets * 1.3 / hard))


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (the router's forked workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_and_fds(pids: list[int]) -> tuple[float, int]:
    rss_kb, fds = 0, 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:  # exited between the listing and the read
            pass
    return rss_kb / 1024, fds


# -- load (client processes) ----------------------------------------------------------------


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: status, body (chunked or Content-Length), keep-alive or not."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)
    }
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"])), keep
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return status, await reader.read(), False
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, b"".join(parts), keep
        parts.append(chunk[:-2])


@dataclass
class Load:
    row: Any  # this client's counters (a slice of a shared array)
    host: str
    port: int
    stop: Any  # multiprocessing.Event: the load is over, close the streams
    reported: int = 0  # failures described on stderr so far (the first few only)

    def failed(self, counter: int, what: str) -> None:
        """Count a failure; describe the first few (a count alone does not say what broke)."""
        self.row[counter] += 1
        if self.reported < MAX_REPORTED:
            self.reported += 1
            print(f"client {os.getpid()}: {what}", file=sys.stderr, flush=True)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def requests(self, count: int, req: bytes) -> None:
        """`count` requests, one at a time, on a keep-alive connection (reopened if closed)."""
        conn = None
        for _ in range(count):
            if self.stop.is_set():  # stopped early (Ctrl-C)
                break
            try:
                if conn is None:
                    conn = await self.connect()
                conn[1].write(req)
                status, body, keep = await read_response(conn[0])
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as e:
                self.failed(C_ERR, f"request: {e!r}")
                await self._close(conn)
                conn = None
                continue
            if status == 200:
                self.row[C_OK] += 1
            else:
                self.failed(C_ERR, f"request: {status} {body[:200]!r}")
            if not keep:
                await self._close(conn)
                conn = None
        await self._close(conn)

    async def stream(self, req: bytes, delay_s: float) -> None:
        """One stream slot: open a stream, read it to the end, open the next, until stop."""
        await asyncio.sleep(delay_s)  # spread the opening so the warm-up is not one burst
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = await self.connect()
                conn[1].write(req)
                self.row[C_STREAMS_OPEN] += 1
                try:
                    status, body, keep = await read_response(conn[0])
                finally:
                    self.row[C_STREAMS_OPEN] -= 1
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as e:
                self.failed(C_STREAM_ERR, f"stream: {e!r}")
                await self._close(conn)
                conn = None
                await asyncio.sleep(0.5)
                continue
            if status == 200 and body.rstrip().endswith(b"data: [DONE]"):
                self.row[C_STREAMS_DONE] += 1
            else:
                self.failed(C_STREAM_ERR, f"stream: {status}, ends {body[-200:]!r}")
            if not keep:
                await self._close(conn)
                conn = None
        await self._close(conn)

    @staticmethod
    async def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(conn[1].wait_closed(), 5)


async def client_main(load: Load, args: dict[str, Any], share: dict[str, int]) -> None:
    fast = post(
        "/v1/chat/completions",
        {
            "model": "fast",
            "max_tokens": args["max_tokens"],
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "Say hello."}],
        },
    )
    slow = post(
        "/v1/chat/completions",
        {
            "model": "slow",
            "max_tokens": args["stream_tokens"],
            "ignore_eos": True,
            "stream": True,
            "messages": [{"role": "user", "content": "Tell a long story."}],
        },
    )
    ramp = args["ramp_s"]
    streams = [
        asyncio.create_task(load.stream(slow, ramp * i / max(1, share["streams"])))
        for i in range(share["streams"])
    ]
    conns = share["connections"]
    # Warm-up: every stream open, the warm-up requests answered, and every stream slot recycled
    # once (a stream finished and the next one opened on its connection), so the baseline is a
    # steady state with all the buffers the load needs already allocated.
    step_s = args["stream_step_ms"] / 1000
    deadline = time.monotonic() + ramp + 5 * step_s * args["stream_tokens"] + 300
    while (
        load.row[C_STREAMS_OPEN] < share["streams"]
        and time.monotonic() < deadline
        and not load.stop.is_set()
    ):
        await asyncio.sleep(0.2)
    await asyncio.gather(*(load.requests(n, fast) for n in split(share["warmup"], conns)))
    while (
        load.row[C_STREAMS_DONE] < share["streams"]
        and time.monotonic() < deadline
        and not load.stop.is_set()
    ):
        await asyncio.sleep(0.2)
    load.row[C_WARM] = 1
    while not load.stop.is_set() and not args["go"].is_set():  # the main phase starts together
        await asyncio.sleep(0.05)
    await asyncio.gather(*(load.requests(n, fast) for n in split(share["requests"], conns)))
    load.row[C_DONE] = 1
    while not load.stop.is_set():
        await asyncio.sleep(0.1)
    for t in streams:
        t.cancel()
    await asyncio.gather(*streams, return_exceptions=True)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def client_process(index: int, counters: Any, url: str, args: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when the load ends
    raise_nofile()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    n = args["clients"]
    share = {
        "streams": split(args["streams"], n)[index],
        "requests": split(args["requests"], n)[index],
        "warmup": split(args["warmup"], n)[index],
        "connections": max(1, split(args["connections"], n)[index]),
    }
    row = counters[index]
    load = Load(row, host, int(port), args["stop"])
    uvloop.run(client_main(load, args, share))


# -- sampling and report --------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    ok: int
    errors: int
    streams_open: int
    streams_done: int
    stream_errors: int
    phase: str


def totals(counters: list[Any]) -> list[int]:
    return [sum(int(row[i]) for row in counters) for i in range(N_COUNTERS)]


def report(samples: list[Sample], args: argparse.Namespace, workers: int, took_s: float) -> str:
    def phase(name: str) -> list[Sample]:
        return [s for s in samples if s.phase == name]

    warm, load, cool = phase("warm-up"), phase("load"), phase("cool-down")
    # The last warm-up sample: taken just before the main phase was let go.
    base = warm[-1] if warm else samples[0]
    end = load[-1] if load else samples[-1]
    peak = max(load or samples, key=lambda s: s.rss_mb)
    last = samples[-1]
    mid = (load or samples)[len(load or samples) // 2]
    over = (cool or [last])[0]  # the first sample after every client finished its requests
    done, secs = over.ok - base.ok, over.t - base.t
    rate = done / max(1e-9, secs)
    lines = [
        f"router: {'1 process' if workers == 1 else f'{workers} workers + parent (RSS summed)'}"
        f"; {args.engines} fast + {args.stream_engines} "
        f"slow sim engines; {args.clients} client processes",
        f"load: {done:,} requests in {secs:.0f} s ({rate:,.0f} req/s) "
        f"while {args.streams:,} streams stayed open; whole run {took_s:.0f} s",
        f"requests: {last.ok:,} ok, {last.errors:,} failed; streams: {last.streams_done:,} "
        f"completed, {last.stream_errors:,} failed; peak open streams "
        f"{max(s.streams_open for s in samples):,}",
        f"RSS (MB): baseline after warm-up {base.rss_mb:.1f}, peak {peak.rss_mb:.1f} "
        f"(+{peak.rss_mb - base.rss_mb:.1f}), end of load {end.rss_mb:.1f} "
        f"(growth {end.rss_mb - base.rss_mb:+.1f}), after cool-down "
        f"{(cool or [last])[-1].rss_mb:.1f}",
        f"RSS over the second half of the load: {mid.rss_mb:.1f} -> {end.rss_mb:.1f} MB "
        f"({end.rss_mb - mid.rss_mb:+.1f}, {end.ok - mid.ok:,} requests)",
        f"open fds: baseline {base.fds:,}, peak {max(s.fds for s in load or samples):,}, end of "
        f"load {end.fds:,}, after cool-down {(cool or [last])[-1].fds:,}",
    ]
    return "\n".join(lines)


def plot(samples: list[Sample], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax1.plot(t, [s.rss_mb for s in samples], color="tab:blue")
    ax1.set_ylabel("router RSS (MB)")
    ax1.set_ylim(bottom=0)
    ax2.plot(t, [s.fds for s in samples], color="tab:orange")
    ax2.set_ylabel("router open fds")
    ax3.plot(t, [s.streams_open for s in samples], color="tab:green", label="open streams")
    ax3.set_ylabel("open streams")
    rates = [0.0] + [(b.ok - a.ok) / max(1e-9, b.t - a.t) for a, b in itertools.pairwise(samples)]
    ax4 = ax3.twinx()
    ax4.plot(t, rates, color="tab:red", linewidth=0.8)
    ax4.set_ylabel("requests/s", color="tab:red")
    ax3.set_xlabel("seconds")
    for ax in (ax1, ax2, ax3):
        for s0, s1 in itertools.pairwise(samples):
            if s0.phase != s1.phase:
                ax.axvline(s1.t, color="grey", linestyle="--", linewidth=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# -- driver ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000, help="after warm-up")
    ap.add_argument("--streams", type=int, default=10_000, help="kept open the whole time")
    ap.add_argument("--warmup", type=int, default=20_000, help="requests before the baseline")
    ap.add_argument("--connections", type=int, default=256, help="keep-alive, for the requests")
    ap.add_argument("--clients", type=int, default=4, help="load processes")
    ap.add_argument("--engines", type=int, default=2, help="instant sims for the requests")
    ap.add_argument("--stream-engines", type=int, default=2, help="slow sims for the streams")
    ap.add_argument("--stream-step-ms", type=float, default=1000.0, help="one token per step")
    ap.add_argument("--stream-tokens", type=int, default=30, help="tokens per stream")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per request")
    ap.add_argument("--router-workers", type=int, default=0, help="0: enough for the fd limit")
    ap.add_argument("--ramp", type=float, default=20.0, help="seconds to open the streams over")
    ap.add_argument("--cool-down", type=float, default=10.0, help="seconds sampled after load")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--out", default="soak.png", help="the plot (PNG)")
    ap.add_argument("--json", default=None, help="also write every sample here")
    args = ap.parse_args()
    hard = raise_nofile()
    workers = router_workers(args, hard)
    procs: list[subprocess.Popen[str]] = []
    clients: list[Any] = []
    ctx = mp.get_context("spawn")  # the clients start clean: no inherited sockets or threads
    stop, go = ctx.Event(), ctx.Event()
    counters = [ctx.Array("q", N_COUNTERS, lock=False) for _ in range(args.clients)]
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        backends = []
        for model, n, slow in (("fast", args.engines, False), ("slow", args.stream_engines, True)):
            for _ in range(n):
                proc, url = start_ready(sim_cmd(model, args, slow))
                procs.append(proc)
                backends += ["--backend", f"{url}={model}"]
        conns = args.streams + args.connections
        router, url = start_ready(
            [
                sys.executable,
                "-m",
                "vfleet",
                "router",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--policy",
                "least_load",
                "--workers",
                str(workers),
                *backends,
                "--max-connections",
                str(math.ceil(conns * 1.5) + 256),
                "--idle-timeout",
                "600",
                "--keepalive-timeout",
                "600",
            ]
        )
        procs.append(router)
        time.sleep(0.5 if workers == 1 else 2.0)  # every worker listening
        shared = {k: v for k, v in vars(args).items() if k not in ("out", "json")}
        shared |= {"ramp_s": args.ramp, "stop": stop, "go": go}
        for i in range(args.clients):
            clients.append(ctx.Process(target=client_process, args=(i, counters, url, shared)))
            clients[-1].start()
        print(f"router {url}: {workers} worker(s), open-file limit {hard}; warming up", flush=True)
        phase, cool_until, next_print = "warm-up", math.inf, 0.0
        early: list[int] = []  # the signal that ended the load early, if any

        def end_early(signum: int, _frame: object) -> None:
            early.append(signum)
            stop.set()

        signal.signal(signal.SIGINT, end_early)
        signal.signal(signal.SIGTERM, end_early)
        while True:
            now = time.monotonic() - started
            rss, fds = rss_and_fds(tree(router.pid))
            c = totals(counters)
            samples.append(
                Sample(
                    now,
                    rss,
                    fds,
                    c[C_OK],
                    c[C_ERR],
                    c[C_STREAMS_OPEN],
                    c[C_STREAMS_DONE],
                    c[C_STREAM_ERR],
                    phase,
                )
            )
            if now >= next_print:
                print(
                    f"{now:6.0f} s {phase:9} rss {rss:7.1f} MB fds {fds:6,} ok {c[C_OK]:,} "
                    f"err {c[C_ERR]:,} streams open {c[C_STREAMS_OPEN]:,} done "
                    f"{c[C_STREAMS_DONE]:,} err {c[C_STREAM_ERR]:,}",
                    flush=True,
                )
                next_print = now + 10
            if router.poll() is not None:
                raise SystemExit(f"the router exited ({router.returncode}) during the soak")
            if any(p.exitcode not in (None, 0) for p in clients):
                raise SystemExit("a client process failed")
            if phase == "warm-up" and c[C_WARM] == args.clients:
                phase = "load"
                go.set()
            elif phase != "cool-down" and early:
                print("stopped early: reporting what was measured", flush=True)
                phase, cool_until = "cool-down", now + args.cool_down
            elif phase == "load" and c[C_DONE] == args.clients:
                phase, cool_until = "cool-down", now + args.cool_down
                stop.set()
            elif phase == "cool-down" and now >= cool_until:
                break
            time.sleep(max(0.0, args.interval - (time.monotonic() - started - now)))
    finally:
        stop.set()
        for p in clients:
            p.join(30)
            if p.is_alive():
                p.kill()
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    took = time.monotonic() - started
    summary = report(samples, args, workers, took)
    print("\n" + summary)
    title = f"vfleet router soak: {args.streams:,} streams + {args.requests:,} requests"
    plot(samples, Path(args.out), title)
    print(f"plot: {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(s) for s in samples]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
