"""What one `vfleet bench run` process costs per streamed request, against a minimal client.

Issue 12 asks that the client never be the bottleneck: one bench process should sustain 2,000
streamed requests/s. On a small machine the server runs out of CPU first, so this measures the
client's own CPU per request (and its implied single-core capacity, 1 / CPU per request) rather
than only the rate it reached. The same requests (a `random` workload: 32-token prompts, 16
streamed output tokens, `/v1/completions`, as the bench sends them) go to each server in turn:

  sim     one `vfleet sim --profile instant` engine (the done-when's server);
  replay  a responder that answers every request with the bytes of one real streamed answer of
          the sim (captured at start), so the server is nearly free and the client is the limit.

and are sent by two clients, interleaved in every repetition:

  bench    `vfleet bench run` as a subprocess (the real CLI: workload generation, per-request
           records, statistics, report files); its CPU is its resource usage as a child (the
           whole process) and the summary's own `client.cpu_s` (the run only);
  minimal  the floor: a raw uvloop protocol writing pre-encoded request bytes and waiting for
           the chunked end of each answer (no HTTP parser, no JSON, no records).

Each in a closed loop (`--concurrency`) and an open loop (Poisson at `--rate`, the bench's own
schedule for the same seed). The client is pinned to core 1 and the server to core 0 when
`taskset` exists. Prints one row per run and the ratio bench / minimal of CPU per request
(medians over repetitions); absolute numbers on a shared machine are indicative only.

usage: python benchmarks/bench_client.py [--reps 2] [--requests 5000] [--concurrency 64]
       [--rate 2000] [--open-requests 6000] [--servers sim,replay] [--cprofile]
`--cprofile` also runs the bench once under cProfile (closed loop, replay server) and prints
where its time goes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.procstat import cpu_s
from sim_speed import TRIVIAL, fetch, pin, start, stop
from vfleet.bench import workloads

MODEL = "demo"
INPUT_LEN = 32
OUTPUT_LEN = 16
SEED = 0

# The floor: no parsing beyond spotting the chunked terminator at the end of an answer.
MINIMAL = r"""
import asyncio, json, sys, time, uvloop
from vfleet.bench.stats import percentile  # the bench's own percentiles, for like with like
from vfleet.bench.workloads import poisson_offsets
host, port, body_file, mode, arg, n = sys.argv[1:7]
port, n = int(port), int(n)
HEAD = b"POST /v1/completions HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n" % (
    host.encode(), port)
# the bench's own bodies, one a line, encoded before the clock starts
REQS = [HEAD + b"content-length: %d\r\n\r\n%s" % (len(b), b)
        for b in open(body_file, "rb").read().splitlines()][:n]
class C(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.tail = b""; self.w = None; self.head = True
    def data_received(self, d):
        if self.head and self.w is not None and not self.w.done():
            self.head = False
            if not d.startswith(b"HTTP/1.1 200"):  # a failed answer is not counted as served
                self.w.set_exception(ConnectionError(d[:100])); self.t.close(); return
        self.tail = (self.tail + d)[-5:]
        if self.tail == b"0\r\n\r\n" and self.w is not None and not self.w.done():
            self.tail = b""; self.head = True; self.w.set_result(None)
    def connection_lost(self, exc):
        if self.w is not None and not self.w.done(): self.w.set_exception(ConnectionError("lost"))
idle = []
ok = 0
async def one(req):
    global ok
    loop = asyncio.get_running_loop()
    c = idle.pop() if idle else (await loop.create_connection(C, host, port))[1]
    c.w = loop.create_future(); c.t.write(req)
    try:
        async with asyncio.timeout(30):
            await c.w
    except (OSError, TimeoutError):
        c.t.close(); return
    ok += 1; idle.append(c)
async def main():
    lags = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    if mode == "closed":
        it = iter(REQS)
        async def worker():
            for req in it:
                await one(req)
        await asyncio.gather(*(worker() for _ in range(int(arg))))
    else:
        offs = poisson_offsets(n, float(arg), 0)
        tasks = set()
        t0 = time.perf_counter()
        for off, req in zip(offs, REQS):
            due = t0 + off
            if (d := due - time.perf_counter()) > 0: await asyncio.sleep(d)
            lags.append(max(0.0, time.perf_counter() - due))
            t = asyncio.create_task(one(req)); tasks.add(t); t.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    print(json.dumps({"ok": ok, "wall_s": wall, "cpu_s": cpu, "lag_p50": p50, "lag_p99": p99}))
uvloop.run(main())
"""


def child_cpu(argv: list[str], timeout_s: float) -> tuple[float, str]:
    """Run `argv` to its end; its user+system CPU seconds (as a waited-for child) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout_s)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:6])}... failed ({proc.returncode}): {proc.stderr[-800:]}"
        )
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used, proc.stdout


def bench_argv(url: str, mode: str, arg: str, n: int, out: Path) -> list[str]:
    load = ["--concurrency", arg] if mode == "closed" else ["--rate", arg]
    return [
        *pin(1),
        sys.executable,
        "-m",
        "vfleet",
        "bench",
        "run",
        "--url",
        url,
        "--model",
        MODEL,
        "--workload",
        "random",
        "--input-len",
        str(INPUT_LEN),
        "--output-len",
        str(OUTPUT_LEN),
        "--seed",
        str(SEED),
        "--requests",
        str(n),
        *load,
        "--timeout",
        "30",
        "--out",
        str(out),
    ]


def run_bench(url: str, mode: str, arg: str, n: int, out: Path) -> dict[str, Any]:
    total, _ = child_cpu(bench_argv(url, mode, arg, n, out), 300)
    s = json.loads((out / "summary.json").read_text())
    lag = s["client"]["send_lag_s"]
    return {
        "ok": s["completed"],
        "failed": s["failed"],
        "wall_s": s["duration_s"],
        "cpu_s": s["client"]["cpu_s"],
        "process_cpu_s": total,
        "lag_p50": lag.get("p50"),
        "lag_p99": lag.get("p99"),
    }


def run_minimal(url: str, mode: str, arg: str, n: int, body_file: Path) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    argv = [*pin(1), sys.executable, "-c", MINIMAL, host, port, str(body_file), mode, arg, str(n)]
    total, out = child_cpu(argv, 300)
    r: dict[str, Any] = json.loads(out)
    r["failed"] = n - r["ok"]
    r["process_cpu_s"] = total
    return r


def request_bodies(n: int) -> list[bytes]:
    """The bodies `vfleet bench run` sends for the same options and seed, compact JSON as its
    client encodes them, so that both clients send the same bytes."""
    spec = workloads.WorkloadSpec(
        name="random", num_requests=n, seed=SEED, input_len=INPUT_LEN, output_len=OUTPUT_LEN
    )
    return [
        json.dumps(r.body(MODEL), separators=(",", ":")).encode() for r in workloads.generate(spec)
    ]


def start_server(kind: str, body: bytes, tmp: Path) -> tuple[subprocess.Popen[str], str]:
    sim_argv = [*pin(0), sys.executable, "-m", "vfleet", "sim", "--model", MODEL, "--port", "0"]
    sim, url = start([*sim_argv, "--profile", "instant"])
    if kind == "sim":
        return sim, url
    try:
        answer = fetch(url, "/v1/completions", json.loads(body))
    finally:
        stop(sim)
    if not answer.startswith(b"HTTP/1.1 200") or b'"usage"' not in answer:
        raise SystemExit(f"unexpected sim answer to replay: {answer[:300]!r}")
    (tmp / "answer").write_bytes(answer)
    return start([*pin(0), sys.executable, "-c", TRIVIAL, "x", str(tmp / "answer")])


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.2f}"


def row(server: str, client: str, mode: str, r: dict[str, Any]) -> str:
    per = r["cpu_s"] / max(r["ok"], 1)
    return (
        f"| {server} | {client} | {mode} | {r['ok']:,}/{r['ok'] + r['failed']:,} "
        f"| {r['ok'] / r['wall_s']:,.0f} | {r['cpu_s']:.2f} | {r['process_cpu_s']:.2f} "
        f"| {per * 1000:.3f} | {1 / per:,.0f} | {ms(r['lag_p50'])} / {ms(r['lag_p99'])} "
        f"| {r['server_cpu_s'] / max(r['ok'], 1) * 1000:.3f} |"
    )


def cprofile_bench(url: str, args: argparse.Namespace, tmp: Path) -> str:
    prof = tmp / "bench.prof"
    argv = bench_argv(url, "closed", str(args.concurrency), args.requests, tmp / "prof-out")
    i = argv.index("-m")
    child_cpu([*argv[:i], "-m", "cProfile", "-o", str(prof), *argv[i:]], 300)
    text = io.StringIO()
    text.write(
        "\ncProfile of one bench process (closed loop, replay server), top 25 by own time:\n"
    )
    pstats.Stats(str(prof), stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    ap.add_argument("--requests", type=int, default=5000, help="closed-loop requests")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=2000.0, help="open-loop requests/s")
    ap.add_argument("--open-requests", type=int, default=6000)
    ap.add_argument("--servers", default="sim,replay")
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args()
    bodies = request_bodies(max(args.requests, args.open_requests))
    modes = [
        ("closed", str(args.concurrency), args.requests),
        ("open", f"{args.rate:g}", args.open_requests),
    ]
    # the Poisson schedule's own rate over its n requests: what "kept the rate" compares with
    offsets = workloads.poisson_offsets(args.open_requests, args.rate, SEED)
    open_label = f"open {args.rate:g}/s (schedule {args.open_requests / offsets[-1]:,.0f}/s)"
    rows: list[str] = []
    profile = ""
    per_req: dict[tuple[str, str, str], list[float]] = {}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="vfleet-bench-client-") as tmpname:
        tmp = Path(tmpname)
        (tmp / "body").write_bytes(b"\n".join(bodies))
        for rep in range(args.reps):
            for server in [s for s in args.servers.split(",") if s]:
                proc, url = start_server(server, bodies[0], tmp)
                try:
                    for mode, arg, n in modes:
                        # alternate which client goes first, so drift favours neither
                        clients = ["bench", "minimal"] if rep % 2 == 0 else ["minimal", "bench"]
                        for client in clients:
                            server_cpu0 = cpu_s(proc.pid)
                            if client == "bench":
                                r = run_bench(url, mode, arg, n, tmp / f"{rep}-{server}-{mode}")
                            else:
                                r = run_minimal(url, mode, arg, n, tmp / "body")
                            r["server_cpu_s"] = cpu_s(proc.pid) - server_cpu0
                            label = f"closed c={arg}" if mode == "closed" else open_label
                            rows.append(row(server, client, label, r))
                            key = (server, mode, client)
                            per_req.setdefault(key, []).append(r["cpu_s"] / max(r["ok"], 1))
                    if args.cprofile and server == "replay" and rep == args.reps - 1:
                        profile = cprofile_bench(url, args, tmp)
                finally:
                    stop(proc)
    print(
        f"\nclient CPU per streamed request ({INPUT_LEN}-token prompts, {OUTPUT_LEN} output "
        f"tokens), {args.reps} interleaved repetition(s), {os.cpu_count()} CPUs; "
        "CPU s = the run only (the bench's summary / the minimal client's own clock), "
        "process = the whole child (start-up, workload, report files); server CPU: the "
        "server process over the whole client run (for the bench, its two /metrics reads too)"
    )
    print(
        "| server | client | mode | ok/sent | req/s | CPU s | process CPU s | CPU ms/req "
        "| capacity req/s/core | send lag p50 / p99 ms | server CPU ms/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nratio bench / minimal, CPU per request (median over repetitions):")
    med = statistics.median
    for (server, mode, client), vals in per_req.items():
        if client == "bench" and (ref := per_req.get((server, mode, "minimal"))):
            print(
                f"- {server}, {mode}: bench {med(vals) * 1000:.3f} ms, minimal "
                f"{med(ref) * 1000:.3f} ms, ratio {med(vals) / med(ref):.2f}; bench capacity "
                f"{1 / med(vals):,.0f} req/s per core"
            )
    print(profile, end="")
    print(f"run {started} -> {time.strftime('%H:%M:%S')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
