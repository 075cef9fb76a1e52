"""Scale from zero: how long the first request for an idle model waits beyond the engine's own
start-up, through `vfleet up` (local autoscaler + the router's activator).

One model with `minReplicas: 0` runs under `vfleet up`. Each repetition waits until the model is
back at zero replicas, then sends one chat request and measures:

- first: the request's latency, from send to the last byte (the client's view);
- engine: the engine's own cold start, from its spawn (the supervisor's `spawned_at`) to the
  first 200 from its /health, seen by a poller that hits the engine's port directly every 2 ms;
- warm: the same request again, the engine up (the reference measured in the same run);
- overhead = first - engine - warm: what vfleet adds (noticing the held request, starting the
  engine, noticing it is ready, releasing the request). The goal is a p99 of 100 ms or less.

usage: python benchmarks/scale_from_zero.py [--reps 20] [--engine sim|vllm] [--source DIR]
       [--startup-delay 1.0] [--gpu 0.3] [--out results.json]
Run it from a venv with vfleet installed (`pip install .`, compiled), as users get it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "cold"


def fleet_yaml(args: argparse.Namespace) -> str:
    auto = (
        f"{{minReplicas: 0, maxReplicas: 1, target: 8, scaleToZeroGraceS: {args.grace:g}, "
        "stableWindowS: 2, panicWindowS: 1}"
    )
    if args.engine == "sim":
        return (
            f"name: bench-zero\nengine: sim\nrouter: {{port: 0}}\nmodels:\n"
            f"  - name: {MODEL}\n    source: {args.source or 'sim/cold'}\n    gpu: 0\n"
            f"    task: generate\n    autoscaling: {auto}\n"
            f"    sim: {{profile: instant, extraArgs: [--startup-delay, '{args.startup_delay}']}}\n"
        )
    return (
        f"name: bench-zero\nengine: vllm\nrouter: {{port: 0}}\nmodels:\n"
        f"  - name: {MODEL}\n    source: {args.source}\n    gpu: {args.gpu}\n"
        f"    task: generate\n    autoscaling: {auto}\n"
        f"    vllm: {{maxModelLen: 2048}}\n"
    )


def read_state(run: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def engines(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in state.get("engines", []) if e.get("model") == MODEL]


def wait_until(what: str, cond: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout_s:g}s waiting for {what}")


def chat(url: str, timeout_s: float) -> float:
    body = json.dumps(
        {
            "model": MODEL,
            "max_tokens": 1,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"request failed with {resp.status}")
    return t0


class ReadyPoller(threading.Thread):
    """Hits every slot's /health every 2 ms; records when the first one answers 200."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.ready_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.ready_at is None:
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=0.5) as resp:
                        if resp.status == 200:
                            self.ready_at = time.time()
                            return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.002)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--engine", choices=["sim", "vllm"], default="sim")
    ap.add_argument("--source", default=None, help="model dir (vllm) or name (sim)")
    ap.add_argument("--startup-delay", type=float, default=1.0, help="sim engines' start-up (s)")
    ap.add_argument("--gpu", default="0.3", help="GPU share of the vLLM engine")
    ap.add_argument("--grace", type=float, default=1.0, help="scale-to-zero grace period (s)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per wake-up (s)")
    ap.add_argument("--out", default=None, help="write the per-repetition numbers as JSON")
    args = ap.parse_args()
    if args.engine == "vllm" and not args.source:
        ap.error("--engine vllm needs --source MODEL_DIR")
    work = Path(tempfile.mkdtemp(prefix="vfleet-zero-"))
    (work / "fleet.yaml").write_text(fleet_yaml(args))
    run = work / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (work / "up.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "vfleet",
        "up",
        "-f",
        str(work / "fleet.yaml"),
        "--run-dir",
        str(run),
    ]
    up = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    rows: list[dict[str, float]] = []
    try:
        wait_until("the fleet", lambda: read_state(run).get("phase") == "ready", 120)
        url = read_state(run)["router"]["url"]
        for rep in range(args.reps):
            wait_until(
                "zero replicas",
                lambda: (
                    not any(
                        e["state"] in ("starting", "healthy", "unhealthy", "draining")
                        for e in engines(read_state(run))
                    )
                ),
                args.timeout,
            )
            poller = ReadyPoller([e["url"] for e in engines(read_state(run))])
            poller.start()
            t0 = chat(url, args.timeout)
            t_done = time.time()
            poller.stop.set()
            poller.join(5)
            row = next(e for e in engines(read_state(run)) if e.get("spawned_at"))
            t_warm = time.time()
            chat(url, 60)
            warm = time.time() - t_warm
            spawned = float(row["spawned_at"])
            ready = poller.ready_at if poller.ready_at is not None else t_done
            rows.append(
                {
                    "first": t_done - t0,
                    "engine": ready - spawned,
                    "warm": warm,
                    "detect": spawned - t0,
                    "release": t_done - ready,
                    "overhead": (t_done - t0) - (ready - spawned) - warm,
                }
            )
            r = rows[-1]
            print(
                f"rep {rep + 1}: first {r['first'] * 1e3:.0f} ms, engine start-up "
                f"{r['engine'] * 1e3:.0f} ms, warm {r['warm'] * 1e3:.1f} ms, overhead "
                f"{r['overhead'] * 1e3:.1f} ms (detect {r['detect'] * 1e3:.1f}, release "
                f"{r['release'] * 1e3:.1f})",
                flush=True,
            )
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        log.close()
    report(rows, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "reps": rows}, indent=1))
    return 0


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    def ms(key: str, q: float) -> str:
        return f"{pct([r[key] for r in rows], q) * 1e3:.1f}"

    print(f"\n{args.engine} engine, {len(rows)} wake-ups from zero through vfleet up\n")
    print("| ms | p50 | p99 | max |\n|---|---|---|---|")
    for key, what in (
        ("first", "first request (client)"),
        ("engine", "engine start-up (own)"),
        ("warm", "same request, warm"),
        ("overhead", "overhead beyond start-up"),
        ("detect", "  request -> engine spawned"),
        ("release", "  engine ready -> answer"),
    ):
        print(f"| {what} | {ms(key, 0.5)} | {ms(key, 0.99)} | {ms(key, 1.0)} |")
    ratio = statistics.median(r["first"] / r["engine"] for r in rows)
    print(f"\nfirst request / engine start-up (median ratio): {ratio:.3f}")


if __name__ == "__main__":
    sys.exit(main())
