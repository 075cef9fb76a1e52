"""Router overhead: vfleet's router against direct-to-engine, nginx and the Rust vllm-router.

Runs the project's harness (benchmarks/harness/, see run.py there): two fake vLLM engines that
answer at once, each system pinned to core 0 in turn while wrk, the load generator and the
engines share core 1; systems interleaved within each repetition, their order rotated. Prints a
markdown summary (ratios against direct and nginx measured in the same run) and one row per
repetition saying how busy the machine was.

Run it with the interpreter of the vfleet build to measure (`pip install .` compiles the hot path
with mypyc; an editable install measures plain Python): the `vfleet` next to that interpreter is
the router under test, and the same interpreter runs the fake engines and the load generator.

usage: python benchmarks/router_overhead.py [--reps 3] [--systems direct,nginx,vllm-router,vfleet]
       [--phases probe,wrk,rate,stream] [--duration 15] [--out DIR]
Setup once: `bash benchmarks/harness/setup.sh` (wrk, nginx-light, the pinned vllm-router venv).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import report, systems
from harness.run import Bench, RunConfig


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--systems", default=",".join(systems.NAMES))
    ap.add_argument("--phases", default="probe,wrk,rate,stream")
    ap.add_argument(
        "--duration",
        "--wrk-duration",
        type=float,
        default=15.0,
        help="seconds of the wrk phase (the other phases: --phase-duration)",
    )
    ap.add_argument(
        "--phase-duration",
        type=float,
        default=10.0,
        help="seconds measured in each rate and stream phase",
    )
    ap.add_argument("--rates", type=floats, default=[50.0, 300.0], help="req/s, comma-separated")
    ap.add_argument("--vllm-router", type=Path, default=systems.VLLM_ROUTER)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: a temp dir)")
    args = ap.parse_args()
    names = [s for s in args.systems.split(",") if s]
    if unknown := set(names) - set(systems.NAMES):
        print(f"unknown system(s) {sorted(unknown)}; known: {systems.NAMES}", file=sys.stderr)
        return 2
    vfleet_bin = shutil.which("vfleet", path=str(Path(sys.executable).parent))
    missing = []
    if "vfleet" in names and vfleet_bin is None:
        missing.append("a `vfleet` next to this interpreter (run me from a vfleet venv)")
    if "wrk" in args.phases and not shutil.which("wrk"):
        missing.append("wrk")
    if "nginx" in names and not shutil.which("nginx"):
        missing.append("nginx")
    if "vllm-router" in names and not args.vllm_router.exists():
        missing.append(f"{args.vllm_router}")
    if missing:
        print(
            f"missing {', '.join(missing)}: see bash benchmarks/harness/setup.sh", file=sys.stderr
        )
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="vfleet-router-bench-"))
    cfg = RunConfig(
        out=out,
        vfleet_bin=vfleet_bin or "vfleet",
        python=sys.executable,
        vllm_router=args.vllm_router,
        systems=names,
        reps=args.reps,
        phases=args.phases.split(","),
        wrk_s=args.duration,
        rates=args.rates,
        rate_s=args.phase_duration,
        stream_s=args.phase_duration,
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    records = Bench(cfg).run()
    print(report.render(records))
    print(
        f"run {started} -> {time.strftime('%H:%M:%S')}, {args.reps} repetition(s); "
        f"records: {out / 'results.jsonl'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
