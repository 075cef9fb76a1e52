"""Control for scale_from_zero.sh: vLLM's own first request, without vfleet. Starts `vllm serve`,
polls /health every 2 ms, sends one chat request the moment it answers 200, then the same request
again; prints both latencies. What a freshly started engine takes for its first request is the
engine's cost, not the router's.

usage: python3 first_request.py MODEL_DIR [REPS]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

PORT = 8311


def chat() -> float:
    body = json.dumps(
        {
            "model": "m",
            "max_tokens": 1,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()
    return time.time() - t0


def healthy() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=0.5) as resp:
            return resp.status == 200
    except OSError:
        return False


def main() -> None:
    model, reps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2
    for rep in range(reps):
        t0 = time.time()
        proc = subprocess.Popen(
            [
                "vllm",
                "serve",
                model,
                "--served-model-name",
                "m",
                "--port",
                str(PORT),
                "--gpu-memory-utilization",
                "0.27",
                "--max-model-len",
                "2048",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not healthy():
            time.sleep(0.002)
        up = time.time() - t0
        first, warm = chat(), chat()
        print(
            f"rep {rep + 1}: start-up {up:.1f} s, first request {first * 1e3:.1f} ms, "
            f"warm {warm * 1e3:.1f} ms",
            flush=True,
        )
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
