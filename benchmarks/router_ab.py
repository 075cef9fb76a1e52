"""A/B of vfleet router builds: interleaved wrk runs, router CPU per request, paired ratios.

Each build is a `vfleet` executable (e.g. one venv per commit, `VFLEET_MYPYC=1 pip install
CHECKOUT`); `NAME=PATH[|extra router flags]` names it. Every repetition starts each build in
turn (order reversed every other repetition) on core 0 in front of the same two fake backends
(core 1, the router harness's `fake_backend.py`), warms it 2 s, runs `wrk -t1 -c64` on core 1
with the harness's small chat POST, and reads the router's CPU time from /proc. On a shared
machine req/s swings with the neighbours; router CPU us per request, and ratios of builds run in
the same minute, are the numbers to compare.

usage: python benchmarks/router_ab.py [--reps 3] [--duration 6] a=/venvA/bin/vfleet \\
           b=/venvB/bin/vfleet "b-traced=/venvB/bin/vfleet|--otlp-endpoint http://127.0.0.1:4318"
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

BACKENDS = (8191, 8192)
ROUTER_PORT = 8399


def wait_ok(url: str, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(spec: str, harness: Path, duration: int) -> tuple[float, float]:
    """(req/s, router CPU us per request) of one build."""
    vbin, *more = spec.split("|")
    backends = [f"--backend=http://127.0.0.1:{p}=fake-model" for p in BACKENDS]
    cmd = ["taskset", "-c", "0", vbin, "router", "--host", "127.0.0.1"]
    cmd += ["--port", str(ROUTER_PORT), "--policy", "round_robin", *backends]
    cmd += " ".join(more).split()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        if not wait_ok(f"http://127.0.0.1:{ROUTER_PORT}/v1/models"):
            raise RuntimeError(f"{vbin} did not start")
        url = f"http://127.0.0.1:{ROUTER_PORT}/v1/chat/completions"
        wrk = ["taskset", "-c", "1", "wrk", "-t1", "-c64", "-s", str(harness / "post_chat.lua")]
        subprocess.run([*wrk, "-d2s", url], capture_output=True, check=True)
        before = cpu_s(proc.pid)
        out = subprocess.run(
            [*wrk, f"-d{duration}s", url], capture_output=True, text=True, check=True
        ).stdout
        used = cpu_s(proc.pid) - before
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if rate is None or count is None or re.search(r"Non-2xx", out):
        raise RuntimeError(f"wrk against {vbin}: {out}")
    return float(rate.group(1)), used / int(count.group(1)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--harness", default=str(here.parent.parent / "shared" / "bench" / "router"))
    ap.add_argument("--python", default="/tmp/bench_f/venv-harness/bin/python")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("builds", nargs="+", help="NAME=PATH-TO-vfleet[|extra router flags]")
    args = ap.parse_args()
    harness = Path(args.harness)
    builds = [b.split("=", 1) for b in args.builds]
    backends = [
        subprocess.Popen(
            ["taskset", "-c", "1", args.python, str(harness / "fake_backend.py"), "--port", str(p)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for p in BACKENDS
    ]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in builds}
    try:
        for p in BACKENDS:
            if not wait_ok(f"http://127.0.0.1:{p}/health"):
                raise RuntimeError("fake backend did not start")
        for rep in range(args.reps):
            for name, spec in builds if rep % 2 == 0 else builds[::-1]:
                rate, us = run_one(spec, harness, args.duration)
                results[name].append((rate, us))
                load = Path("/proc/loadavg").read_text().split()[0]
                print(f"rep {rep} {name:12s} {rate:9.0f} req/s {us:6.1f} us/req  load {load}")
    finally:
        for b in backends:
            os.killpg(b.pid, signal.SIGTERM)
            b.wait(10)
    base = builds[0][0]
    for name, _ in builds:
        rates = [r for r, _ in results[name]]
        us = statistics.median(u for _, u in results[name])
        paired = [r / b for (r, _), (b, _) in zip(results[name], results[base], strict=True)]
        print(
            f"{name:12s} median {statistics.median(rates):9.0f} req/s, {us:5.1f} us/req router "
            f"CPU; req/s over {base}, paired by repetition: " + " ".join(f"{x:.2f}" for x in paired)
        )


if __name__ == "__main__":
    main()
