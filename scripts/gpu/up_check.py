"""Checks a running `vfleet up` fleet of real vLLM engines (see up_check.sh): chat and
embeddings through the router, then kill -9 of one chat engine while requests keep flowing."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path


def call(url: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path, data=data, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    args = ap.parse_args()
    state = json.loads((Path(args.run_dir) / "state.json").read_text())
    url = state["router"]["url"]
    ok = True
    models = sorted(m["id"] for m in call(url, "/v1/models")["data"])
    print("models:", models)
    ok &= models == ["bert-rand", "qwen3-rand"]
    chat = call(
        url,
        "/v1/chat/completions",
        {
            "model": "qwen3-rand",
            "max_tokens": 16,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "hello"}],
        },
    )
    print("chat usage:", chat["usage"])
    ok &= chat["usage"]["completion_tokens"] == 16
    emb = call(url, "/v1/embeddings", {"model": "bert-rand", "input": ["a", "b", "c"]})
    print("embeddings:", len(emb["data"]), "x", len(emb["data"][0]["embedding"]))
    ok &= len(emb["data"]) == 3
    for e in state["engines"]:
        print(e["key"], "gpu", e["gpu"], "port", e["port"], e["state"])
    # kill -9 one chat engine's process group (the API server and its engine core)
    victim = next(e for e in state["engines"] if e["key"] == "chat-0")
    results = {"ok": 0, "fail": 0}
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                call(
                    url,
                    "/v1/chat/completions",
                    {
                        "model": "qwen3-rand",
                        "max_tokens": 4,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                    timeout=30,
                )
                results["ok"] += 1
            except Exception as exc:  # any failure: counted and printed
                results["fail"] += 1
                print("request failed:", exc)

    t = threading.Thread(target=traffic)
    t.start()
    time.sleep(2)
    t0 = time.time()
    os.killpg(victim["pid"], signal.SIGKILL)
    print(f"killed chat-0 (pid {victim['pid']})")
    back = False
    while time.time() - t0 < 300:
        now = json.loads((Path(args.run_dir) / "state.json").read_text())
        row = next(e for e in now["engines"] if e["key"] == "chat-0")
        if row["restarts"] >= 1 and row["state"] == "healthy":
            print(f"chat-0 restarted and healthy after {time.time() - t0:.0f} s")
            back = True
            break
        time.sleep(1)
    stop.set()
    t.join()
    print(f"requests during the restart: {results['ok']} ok, {results['fail']} failed")
    ok &= back and results["fail"] == 0 and results["ok"] > 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
