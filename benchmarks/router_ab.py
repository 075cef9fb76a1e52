"""A/B of vfleet router builds: interleaved wrk runs, router CPU per request, paired ratios.

Each build is a `vfleet` executable (e.g. one venv per commit, `VFLEET_MYPYC=1 pip install
CHECKOUT`); `NAME=PATH[|extra router flags]` names it. Every repetition starts each build in
turn (order reversed every other repetition) on core 0 in front of the same two fake engines
(core 1, benchmarks/harness/fakeengine.py), warms it 2 s, runs `wrk -t1 -c64` on core 1 with the
harness's small chat POST (benchmarks/harness/chat.lua), and reads the router's CPU time (its
whole process tree) from /proc. On a shared machine req/s swings with the neighbours; router CPU
us per request, and ratios of builds run in the same minute, are the numbers to compare.

Runs under any python3; the fake engines run with --python (default: the interpreter next to
the first build's `vfleet`, which has uvloop and httptools). Needs wrk.

usage: python benchmarks/router_ab.py [--reps 3] [--duration 6] a=/venvA/bin/vfleet \\
           b=/venvB/bin/vfleet "b-traced=/venvB/bin/vfleet|--otlp-endpoint http://127.0.0.1:4318"
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import procs, procstat, wrk
from harness.systems import free_port


def run_one(spec: str, engines: list[str], duration: int) -> tuple[float, float]:
    """(req/s, router CPU us per request) of one build."""
    vbin, *more = spec.split("|")
    port = free_port()
    cmd = [*procstat.pin(0), vbin, "router", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--policy", "round_robin", *(f"--backend={u}=fake-model" for u in engines)]
    cmd += " ".join(more).split()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        if not procs.wait_ok(f"http://127.0.0.1:{port}/v1/models", timeout_s=30):
            raise RuntimeError(f"{vbin} did not start")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wrk.run(url, 2, procstat.pin(1))
        watch = procstat.TreeWatch(proc.pid)
        before = watch.cpu_s()
        res = wrk.run(url, duration, procstat.pin(1))
        used = watch.cpu_s() - before
    finally:
        procs.stop(proc, 10)
    if not res.clean or res.req_per_s is None:
        raise RuntimeError(f"wrk against {vbin}: {res}")
    return res.req_per_s, used / res.requests * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--python", default=None, help="interpreter for the fake engines")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("builds", nargs="+", help="NAME=PATH-TO-vfleet[|extra router flags]")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    if any(len(b) != 2 for b in builds) or not shutil.which("wrk"):
        print("needs wrk and builds given as NAME=PATH-TO-vfleet", file=sys.stderr)
        return 2
    python = args.python or str(Path(builds[0][1].split("|")[0]).parent / "python")
    logs = Path(tempfile.mkdtemp(prefix="vfleet-router-ab-"))
    engines: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in builds}
    try:
        urls = []
        for i in range(2):
            proc, url = procs.spawn_engine(python, procstat.pin(1), logs / f"engine-{i}.log")
            engines.append(proc)
            urls.append(url)
        for rep in range(args.reps):
            for name, spec in builds if rep % 2 == 0 else builds[::-1]:
                rate, us = run_one(spec, urls, args.duration)
                results[name].append((rate, us))
                load = Path("/proc/loadavg").read_text().split()[0]
                print(f"rep {rep} {name:12s} {rate:9.0f} req/s {us:6.1f} us/req  load {load}")
    except RuntimeError as exc:
        print(f"router_ab: {exc}", file=sys.stderr)
        return 1
    finally:
        for e in engines:
            procs.stop(e, 10)
    base = builds[0][0]
    for name, _ in builds:
        rates = [r for r, _ in results[name]]
        us = statistics.median(u for _, u in results[name])
        paired = [r / b for (r, _), (b, _) in zip(results[name], results[base], strict=True)]
        print(
            f"{name:12s} median {statistics.median(rates):9.0f} req/s, {us:5.1f} us/req router "
            f"CPU; req/s over {base}, paired by repetition: " + " ".join(f"{x:.2f}" for x in paired)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
