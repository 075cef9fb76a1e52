"""Does the router's memory stay flat? RSS before and after a million requests.

Starts two fake vLLM engines (benchmarks/harness/fakeengine.py, core 1) and `vfleet router` in
front (core 0), warms up, reads the router's RSS (its whole process tree), sends at least
--requests small chat requests with wrk (core 1, benchmarks/harness/chat.lua), reads the RSS
again and prints the growth.

Run it with the interpreter of the vfleet build to measure: the `vfleet` next to it is the
router, and it runs the fake engines too. Needs wrk.

usage: python benchmarks/router_memory.py [--requests 1000000] [--window 20]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import procs, procstat, wrk
from harness.systems import free_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--window", type=int, default=20, help="seconds per wrk run")
    args = ap.parse_args()
    vfleet = shutil.which("vfleet", path=str(Path(sys.executable).parent))
    if vfleet is None or not shutil.which("wrk"):
        print(
            "needs wrk and a venv with vfleet installed (run me with its python)", file=sys.stderr
        )
        return 2
    logs = Path(tempfile.mkdtemp(prefix="vfleet-router-memory-"))
    running: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for i in range(2):
            proc, url = procs.spawn_engine(sys.executable, procstat.pin(1), logs / f"e{i}.log")
            running.append(proc)
            urls.append(url)
        port = free_port()
        cmd = [*procstat.pin(0), vfleet, "router", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--policy", "round_robin", *(f"--backend={u}=fake-model" for u in urls)]
        with (logs / "router.log").open("w") as log:
            router = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        running.append(router)
        if not procs.wait_ok(f"http://127.0.0.1:{port}/v1/models", timeout_s=30):
            raise RuntimeError(f"the router did not start (see {logs / 'router.log'})")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        watch = procstat.TreeWatch(router.pid)
        warm = wrk.run(url, 5, procstat.pin(1))
        before = watch.sample_rss() / 2**20
        sent, start = 0, time.monotonic()
        while sent < args.requests:
            res = wrk.run(url, args.window, procstat.pin(1))
            if not res.clean:
                raise RuntimeError(f"wrk: {res}")
            sent += res.requests
        after = watch.sample_rss() / 2**20
        print(
            f"warm-up {warm.requests:,} requests; then {sent:,} requests in "
            f"{time.monotonic() - start:.0f} s; router RSS {before:.1f} MB -> {after:.1f} MB "
            f"(growth {after - before:+.1f} MB)"
        )
    except RuntimeError as exc:
        print(f"router_memory: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in reversed(running):
            procs.stop(p, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
