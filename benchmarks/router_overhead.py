"""Router overhead: vfleet's router against direct-to-backend, nginx and the Rust vllm-router.

A thin driver around the workplace's router benchmark harness (`shared/bench/router`, see its
README: fake vLLM backends that are never the bottleneck, the router pinned to core 0, wrk and
the Python load generator on core 1, systems interleaved per repetition, noisy phases re-run).
It runs the harness with vfleet's `vfleet` command (the installed, mypyc-compiled build when run
from such a venv) and prints the harness's markdown report.

usage: python benchmarks/router_overhead.py [--harness ../shared/bench/router] [--reps 3]
       [--systems direct,nginx,vllm-router,vfleet] [--phases probe,wrk,rate,stream]
Setup once: `bash <harness>/setup.sh` (nginx, wrk, and the harness and vllm-router venvs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--harness", default=str(here.parent.parent / "shared" / "bench" / "router"))
    ap.add_argument("--bench-root", default=os.environ.get("BENCH_ROOT", "/tmp/bench_f"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--systems", default="direct,nginx,vllm-router,vfleet")
    ap.add_argument("--phases", default="probe,wrk,rate,stream")
    ap.add_argument("--wrk-duration", type=int, default=15)
    ap.add_argument("--out", default=None, help="results folder (default: a temp dir)")
    args = ap.parse_args()
    harness = Path(args.harness)
    py = Path(args.bench_root, "venv-harness", "bin", "python")
    if not (harness / "run_bench.py").exists() or not py.exists():
        print(f"harness or its venv missing: run bash {harness}/setup.sh", file=sys.stderr)
        return 2
    vfleet_bin = shutil.which("vfleet", path=str(Path(sys.executable).parent))
    if vfleet_bin is None:
        print(
            "no `vfleet` next to this interpreter: run me from a venv with vfleet installed",
            file=sys.stderr,
        )
        return 2
    out = args.out or tempfile.mkdtemp(prefix="vfleet-router-bench-")
    env = {**os.environ, "VFLEET_BIN": vfleet_bin, "BENCH_ROOT": args.bench_root}
    subprocess.run(
        [
            str(py),
            "run_bench.py",
            "--reps",
            str(args.reps),
            "--systems",
            args.systems,
            "--phases",
            args.phases,
            "--wrk-duration",
            str(args.wrk_duration),
            "--out",
            out,
        ],
        cwd=harness,
        env=env,
        check=True,
    )
    report = subprocess.run(
        [sys.executable, "report.py", out], cwd=harness, check=True, capture_output=True, text=True
    )
    print(report.stdout)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
