"""Does the router's memory stay flat? RSS before and after a million requests.

Starts two fake vLLM backends from the workplace harness (`shared/bench/router/fake_backend.py`)
and `vfleet router` in front (core 0), warms up, reads the router's RSS, sends at least
--requests small chat requests with wrk (core 1), reads RSS again and prints the growth.

usage: python benchmarks/router_memory.py [--requests 1000000] [--harness DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"fake-model","messages":[{"role":"user","content":"Say hello."}],'
    .. '"max_tokens":8}'
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wrk(url: str, seconds: int, script: str) -> int:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "-s", script, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m or "Non-2xx" in out:
        raise SystemExit(f"wrk: {out}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--harness", default=str(here.parent.parent / "shared" / "bench" / "router"))
    ap.add_argument("--python", default="/tmp/bench_f/venv-harness/bin/python")
    ap.add_argument("--requests", type=int, default=1_000_000)
    args = ap.parse_args()
    vfleet = shutil.which("vfleet", path=str(Path(sys.executable).parent))
    if vfleet is None or not shutil.which("wrk"):
        raise SystemExit("needs wrk and a venv with vfleet installed")
    procs = [
        subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                args.python,
                f"{args.harness}/fake_backend.py",
                "--port",
                str(p),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in (8181, 8182)
    ]
    time.sleep(1.0)
    router = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            vfleet,
            "router",
            "--port",
            "8180",
            "--policy",
            "round_robin",
            "--backend",
            "http://127.0.0.1:8181=fake-model",
            "--backend",
            "http://127.0.0.1:8182=fake-model",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(router)
    try:
        time.sleep(2.0)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(LUA)
        url = "http://127.0.0.1:8180/v1/chat/completions"
        warm = wrk(url, 5, f.name)
        before = rss_mb(router.pid)
        sent, start = 0, time.monotonic()
        while sent < args.requests:
            sent += wrk(url, 20, f.name)
        after = rss_mb(router.pid)
        print(
            f"warm-up {warm:,} requests; then {sent:,} requests in "
            f"{time.monotonic() - start:.0f} s; router RSS {before:.1f} MB -> {after:.1f} MB "
            f"(growth {after - before:+.1f} MB)"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
