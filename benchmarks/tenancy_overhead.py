"""What tenancy costs on the router's request path: an A/B of router configurations, interleaved.

Configurations, each a fresh one-worker router in front of one `vfleet sim --profile instant`:
`none` (no keys: the path every router without a tenants file takes), `keys` (a plain key list),
`tenants` (a tenants file: key by digest, allowlist, usage metering) and `budgets` (the same with
request and token budgets that never run out: windows read and written on every request), and,
with `--baseline-src DIR` (e.g. `git archive HEAD src | tar -x -C DIR`), `base`: that tree's
router without keys. Each repetition runs every configuration once, in a rotating order, under
`wrk` (non-streamed chat requests, then streams of 32 tokens, whose usage event the router asks
for and strips), and reads the router's CPU time from /proc: the report gives each
configuration's median router CPU microseconds per request, and its median ratio to `none` of the
same repetition (CPU per request is far less disturbed by other load than requests/s).

`--micro` times instead, in this process, each operation tenancy adds to a request (best of 7
runs of 20,000 calls; a limit table of two workers, budgets on every window): a measure that a
busy host disturbs far less than requests/s through two processes.

usage: python benchmarks/tenancy_overhead.py [--reps 5] [--duration 5] [--connections 8]
       python benchmarks/tenancy_overhead.py --micro
Needs `wrk` on PATH (not for --micro). Run it with nothing else busy; on a shared machine trust
only the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}]}
KEY = "sk-bench"


def start(cmd: list[str], what: str, src: str = "") -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": src} if src else None
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"ready on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, body: dict[str, object], key: str, args: argparse.Namespace, tmp: Path) -> int:
    """Requests answered by `wrk` in `args.duration` seconds."""
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        + (f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else "")
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=args.duration + 30,
    )
    if "Non-2xx" in out.stdout:
        raise RuntimeError(f"errors under load:\n{out.stdout}")
    m = re.search(r"(\d+) requests in", out.stdout)
    if m is None:
        raise RuntimeError(out.stdout)
    return int(m.group(1))


def micro() -> None:
    """Microseconds per call of what a metered request does beyond an unkeyed one."""
    import timeit

    from vfleet.router.sharedlimits import LimitTable
    from vfleet.router.tenants import Tenancy
    from vfleet.router.usage import Meter, ask_usage

    path = Path(tempfile.mkdtemp(prefix="vfleet-tenancy-micro-")) / "tenants.yaml"
    path.write_text(
        f"keys: [{{name: a, key: {KEY}, models: [demo], requests_per_minute: 1000000000,"
        " tokens_per_minute: 1000000000000, tokens_per_day: 10000000000000}]\n"
    )
    tenancy = Tenancy(LimitTable.create(2).row(0), (), str(path))
    headers = {b"authorization": f"Bearer {KEY}".encode(), b"content-type": b"application/json"}
    tenant = tenancy.identify(headers)
    assert tenant is not None
    chunk = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"demo",'
        b'"choices":[{"index":0,"delta":{"content":" tok"},"logprobs":null,'
        b'"finish_reason":null}]}\n\n'
    )
    answer = (
        b'{"id":"x","choices":[{"message":{"content":"' + b"x" * 600 + b'"}}],"usage":'
        b'{"prompt_tokens":13,"total_tokens":18,"completion_tokens":5},"prompt_logprobs":null}'
    )
    streaming = Meter(tenancy, tenant, "demo", 0, 5, strip=True)

    def whole_answer() -> None:
        meter = Meter(tenancy, tenant, "demo", 20, 5)
        meter.feed(answer)
        meter.settle(200, True)

    fields = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    cases = {
        "identify (sha256, dict)": lambda: tenancy.identify(headers),
        "request limit (read all rows, write one)": lambda: tenancy.admit(tenant, time.monotonic()),
        "token reservation (2 windows)": lambda: tenancy.reserve(tenant, 20, time.monotonic()),
        "meter a JSON answer and settle it": whole_answer,
        "ask for a stream's usage (body fields)": lambda: ask_usage("/v1/chat/completions", fields),
        "per streamed chunk, stripping": lambda: streaming.feed(chunk),
    }
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=20_000, repeat=7)) / 20_000 * 1e6
        print(f"| {name} | {best:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--micro", action="store_true", help="time each operation in-process")
    ap.add_argument("--baseline-src", default=None, help="another tree's src/ to compare with")
    args = ap.parse_args()
    if args.micro:
        print("| operation | µs per call |\n|---|---|")
        micro()
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not on PATH", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="vfleet-tenancy-bench-"))
    (tmp / "keys.txt").write_text(KEY + "\n")
    (tmp / "tenants.yaml").write_text(f"keys: [{{name: bench, key: {KEY}, models: [demo]}}]\n")
    (tmp / "budgets.yaml").write_text(
        f"keys: [{{name: bench, key: {KEY}, models: [demo], requests_per_minute: 1000000000,"
        " tokens_per_minute: 1000000000000, tokens_per_day: 10000000000000}]\n"
    )
    here = str(Path(__file__).resolve().parent.parent / "src")
    configs: dict[str, tuple[list[str], str, str]] = {
        "none": ([], "", here),
        "keys": (["--api-key-file", str(tmp / "keys.txt")], KEY, here),
        "tenants": (["--tenants-file", str(tmp / "tenants.yaml")], KEY, here),
        "budgets": (["--tenants-file", str(tmp / "budgets.yaml")], KEY, here),
    }
    if args.baseline_src:
        configs["base"] = ([], "", str(Path(args.baseline_src).resolve()))
    vfleet = [sys.executable, "-m", "vfleet"]
    sim, sim_port = start(
        [*vfleet, "sim", "--model", "demo", "--profile", "instant", "--port", "0"], "sim"
    )
    loads = {
        "chat": {**BODY, "max_tokens": 4},
        "stream": {**BODY, "max_tokens": 32, "ignore_eos": True, "stream": True},
    }
    cpu: dict[str, dict[str, list[float]]] = {w: {c: [] for c in configs} for w in loads}
    ratios: dict[str, dict[str, list[float]]] = {w: {c: [] for c in configs} for w in loads}
    warm = argparse.Namespace(**{**vars(args), "duration": 1})
    try:
        names = list(configs)
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            got: dict[str, dict[str, float]] = {w: {} for w in loads}
            for name in order:
                flags, key, src = configs[name]
                backend = f"http://127.0.0.1:{sim_port}"
                router, port = start(
                    [*vfleet, "router", "--backend", backend, "--port", "0", *flags],
                    f"router ({name})",
                    src,
                )
                try:
                    wrk(port, loads["chat"], key, warm, tmp)
                    for load, body in loads.items():
                        before = cpu_s(router.pid)
                        n = wrk(port, body, key, args, tmp)
                        got[load][name] = (cpu_s(router.pid) - before) * 1e6 / max(1, n)
                finally:
                    stop(router)
            for load in loads:
                for name in configs:
                    cpu[load][name].append(got[load][name])
                    ratios[load][name].append(got[load][name] / got[load]["none"])
            print(f"rep {rep + 1} (router CPU us/request): {json.dumps(got)}", file=sys.stderr)
    finally:
        stop(sim)
    print("| load | " + " | ".join(configs) + " |")
    print("|---|" + "---|" * len(configs))
    for load in loads:
        cells = [
            f"{statistics.median(cpu[load][c]):.0f} µs ({statistics.median(ratios[load][c]):.2f}x)"
            for c in configs
        ]
        print(f"| {load} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
