"""How fast one `vfleet sim --profile instant` process answers, against a trivial responder.

Both servers are pinned to one core each (when `taskset` exists) and loaded by `wrk` on another
core, in the same run:
  - reference: a raw uvloop protocol that answers every request with fixed bytes of the same
    size and shape (no parsing beyond finding the end of the request, no JSON, no scheduler);
  - vfleet sim: the full path (HTTP parse, JSON, tokenizer, scheduler steps, metrics, response).
Reports requests/s for small non-streaming completions and streamed chunks/s for streamed chat
completions, and the ratio sim / reference.

Usage: python benchmarks/sim_speed.py [--duration 10] [--connections 64] [--reps 3]
Run it with the interpreter of an installed vfleet (`pip install .` compiles the hot path with
mypyc when a C compiler exists; the report says which build it measured). Needs `wrk`
(Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPLETION = {
    "model": "demo",
    "prompt": "hello world, this is a small prompt",
    "max_tokens": 8,
    "ignore_eos": True,
}
STREAM_TOKENS = 64
CHAT_STREAM = {
    "model": "demo",
    "messages": [{"role": "user", "content": "stream please"}],
    "max_tokens": STREAM_TOKENS,
    "ignore_eos": True,
    "stream": True,
}

TRIVIAL = r"""
import asyncio, sys, uvloop
BODY = open(sys.argv[2], "rb").read()
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0: return
            m = self.buf.find(b"content-length:", 0, i)
            if m < 0: m = self.buf.find(b"Content-Length:", 0, i)
            n = int(self.buf[m + 15:self.buf.find(b"\r\n", m)]) if m >= 0 else 0
            if len(self.buf) < i + 4 + n: return
            self.buf = self.buf[i + 4 + n:]
            self.t.write(BODY)
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(P, "127.0.0.1", 0, backlog=4096)
    port = srv.sockets[0].getsockname()[1]
    print("ready on http://127.0.0.1:%d" % port, file=sys.stderr, flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def pin(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def start(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"ready on (http://[\d.]+:\d+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def fetch(url: str, path: str, body: dict[str, object]) -> bytes:
    """One real response from the sim, replayed byte for byte by the trivial responder."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
        )
        chunks = []
        while True:
            part = s.recv(65536)
            chunks.append(part)
            raw = b"".join(chunks)
            if raw.endswith(b"0\r\n\r\n") or (b"content-length" in raw and _complete(raw)):
                return raw
            if not part:
                return raw


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: (\d+)", head)
    return bool(m) and len(body) >= int(m.group(1))


def wrk(url: str, path: str, body: dict[str, object], seconds: int, conns: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
        )
        script = f.name
    out = subprocess.run(
        [*pin(1), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", script, url + path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(script).unlink()
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    return float(m.group(1))


def build_kind() -> str:
    import vfleet.sim.scheduler as sched

    return "mypyc-compiled" if sched.__file__.endswith(".so") else "plain Python"


def measure_sim(args: argparse.Namespace) -> tuple[float, float, bytes, bytes]:
    sim, sim_url = start(
        [
            *pin(0),
            sys.executable,
            "-m",
            "vfleet",
            "sim",
            "--model",
            "demo",
            "--port",
            "0",
            "--profile",
            "instant",
        ]
    )
    try:
        small = fetch(sim_url, "/v1/completions", COMPLETION)
        streamed = fetch(sim_url, "/v1/chat/completions", CHAT_STREAM)
        assert streamed.count(b"data: ") == STREAM_TOKENS + 2, "role + tokens + [DONE] expected"
        rps = wrk(sim_url, "/v1/completions", COMPLETION, args.duration, args.connections)
        srps = wrk(sim_url, "/v1/chat/completions", CHAT_STREAM, args.duration, args.connections)
    finally:
        stop(sim)
    return rps, srps, small, streamed


def measure_reference(args: argparse.Namespace, small: bytes, streamed: bytes) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw, path, body in (
            ("small", small, "/v1/completions", COMPLETION),
            ("stream", streamed, "/v1/chat/completions", CHAT_STREAM),
        ):
            body_file = Path(tmp, name)
            body_file.write_bytes(raw)
            ref, ref_url = start([*pin(0), sys.executable, "-c", TRIVIAL, "x", str(body_file)])
            try:
                out.append(wrk(ref_url, path, body, args.duration, args.connections))
            finally:
                stop(ref)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    sim_small, sim_stream, ref_small, ref_stream = [], [], [], []
    for _ in range(args.reps):
        rps, srps, small, streamed = measure_sim(args)
        ref = measure_reference(args, small, streamed)
        sim_small.append(rps)
        sim_stream.append(srps)
        ref_small.append(ref[0])
        ref_stream.append(ref[1])
    med = statistics.median
    print(
        f"vfleet sim ({build_kind()}), {args.reps} interleaved reps, medians; "
        f"wrk -t1 -c{args.connections} -d{args.duration}s; servers pinned to one core each"
    )
    print(
        f"non-streaming completions (max_tokens 8): sim {med(sim_small):,.0f} req/s "
        f"(reps {', '.join(f'{v:,.0f}' for v in sim_small)}), reference {med(ref_small):,.0f} "
        f"req/s, ratio {med(sim_small) / med(ref_small):.2f}"
    )
    print(
        f"streamed chat ({STREAM_TOKENS} tokens): sim {med(sim_stream) * STREAM_TOKENS:,.0f} "
        f"chunks/s ({med(sim_stream):,.0f} req/s), reference "
        f"{med(ref_stream) * STREAM_TOKENS:,.0f} chunks/s, "
        f"ratio {med(sim_stream) / med(ref_stream):.2f}"
    )


if __name__ == "__main__":
    main()
