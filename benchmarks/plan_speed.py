"""How long `vfleet bench plan` takes to plan an hour of traffic for a 16-engine fleet.

The workload (`random`, 256 prompt and 64 output tokens, Poisson at --rate) is generated once,
then simulated through 16 engines of the `llama-8b-h100` profile behind `least_load`:
  - A/B on a slice (--slice seconds of the same traffic), interleaved --reps times: decode runs
    on (the default) against one scheduler step at a time; the ratio of the two is what this
    host's noise cannot fake;
  - with --baseline REV (a git revision of this repository), the same slice through REV's
    `bench/plan.py` too, interleaved with the other two, for the ratio to an older planner;
  - the whole hour once, with decode runs: the planning time, split into generating the
    workload and simulating it, and virtual seconds planned per wall second.

Usage: python benchmarks/plan_speed.py [--rate 40] [--hours 1] [--slice 120] [--reps 3]
           [--baseline 118d782]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from vfleet.bench import workloads
from vfleet.bench.plan import simulate_fleet
from vfleet.bench.stats import Slo, summarize
from vfleet.sim.profiles import PROFILES
from vfleet.sim.scheduler import SchedulerConfig

ENGINES = 16
PROFILE = PROFILES["llama-8b-h100"]
CONFIG = SchedulerConfig()


def traffic(rate: float, seconds: float) -> tuple[list[workloads.BenchRequest], list[float]]:
    n = int(rate * seconds * 1.2) + 16
    reqs = workloads.generate(workloads.WorkloadSpec("random", n, 0, input_len=256, output_len=64))
    offsets = workloads.poisson_offsets(n, rate, 0)
    keep = [i for i, t in enumerate(offsets) if t < seconds]
    return [reqs[i] for i in keep], [offsets[i] for i in keep]


def timed(reqs: list[workloads.BenchRequest], offsets: list[float], slow: bool) -> float:
    t0 = time.perf_counter()
    simulate_fleet(reqs, offsets, ENGINES, CONFIG, PROFILE, "least_load", one_step_at_a_time=slow)
    return time.perf_counter() - t0


def baseline(rev: str) -> Any:
    """`simulate_fleet` of `bench/plan.py` as it was at git revision `rev`."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:src/vfleet/bench/plan.py"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    name = f"plan_at_{rev}"
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:plan.py", "exec"), mod.__dict__)
    return mod.simulate_fleet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--slice", type=float, default=120.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baseline", default=None, help="git revision to compare with")
    args = ap.parse_args()

    reqs, offsets = traffic(args.rate, args.slice)
    old = baseline(args.baseline) if args.baseline else None
    fast: list[float] = []
    slow: list[float] = []
    base: list[float] = []
    for _ in range(args.reps):  # interleaved: all see the same background load
        fast.append(timed(reqs, offsets, False))
        slow.append(timed(reqs, offsets, True))
        if old is not None:
            t0 = time.perf_counter()
            old(reqs, offsets, ENGINES, CONFIG, PROFILE, "least_load")
            base.append(time.perf_counter() - t0)

    seconds = args.hours * 3600
    t0 = time.perf_counter()
    hour_reqs, hour_offsets = traffic(args.rate, seconds)
    t1 = time.perf_counter()
    res = simulate_fleet(hour_reqs, hour_offsets, ENGINES, CONFIG, PROFILE, "least_load")
    t2 = time.perf_counter()
    s = summarize(res.records, res.duration_s, Slo())
    print(
        json.dumps(
            {
                "engines": ENGINES,
                "profile": PROFILE.name,
                "rate": args.rate,
                "slice": {
                    "seconds": args.slice,
                    "requests": len(reqs),
                    "decode_runs_s": statistics.median(fast),
                    "one_step_at_a_time_s": statistics.median(slow),
                    "speedup": statistics.median(s_ / f for s_, f in zip(slow, fast, strict=True)),
                    "baseline": args.baseline,
                    "baseline_s": statistics.median(base) if base else None,
                    "speedup_over_baseline": statistics.median(
                        b / f for b, f in zip(base, fast, strict=True)
                    )
                    if base
                    else None,
                },
                "full": {
                    "virtual_s": res.duration_s,
                    "requests": len(hour_reqs),
                    "generate_s": t1 - t0,
                    "simulate_s": t2 - t1,
                    "virtual_per_wall": res.duration_s / (t2 - t0),
                    "ttft_p50_ms": s["ttft_s"]["p50"] * 1000,
                    "ttft_p99_ms": s["ttft_s"]["p99"] * 1000,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
