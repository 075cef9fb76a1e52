"""Download speed: `vfleet download` against plain `huggingface_hub.snapshot_download`.

A local Hub-compatible server (tests/hfserver.py, in its own process) serves a generated repo of
sparse safetensors files under a bandwidth cap. Both clients download the same repo, each into
a fresh directory, in the same run; the script prints throughput as a fraction of the cap and
vfleet's speed relative to huggingface_hub's.

Scenarios:
  link    one cap on the server's total bandwidth (a saturated uplink or NIC)
  stream  the same total cap plus a per-connection cap (a CDN or proxy that limits each stream)

    .venv/bin/python benchmarks/download.py                  # defaults below
    .venv/bin/python benchmarks/download.py --cap-mbps 200 --stream-mbps 50 --gib 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


def serve(repo: Path, cap_bps: float, stream_bps: float | None) -> None:
    """Child process: run the hub server until stdin closes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hfserver import HubServer, Repo, Throttle

    with HubServer() as srv:
        srv.add(Repo.from_dir("bench/model", repo))
        srv.state.throttle = Throttle(cap_bps)
        srv.state.per_conn_bps = stream_bps
        srv.state.redirect_lfs = True
        print(srv.url, flush=True)
        sys.stdin.read()


def make_repo(root: Path, gib: float) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from hfserver import make_files

    big = int(gib * 2**30)
    # Uneven shards, as real checkpoints have: two large, one medium, one small, plus metadata.
    spec: dict[str, int | bytes] = {
        "model-00001-of-00004.safetensors": big * 35 // 100,
        "model-00002-of-00004.safetensors": big * 35 // 100,
        "model-00003-of-00004.safetensors": big * 20 // 100,
        "model-00004-of-00004.safetensors": big * 10 // 100,
        "config.json": b'{"model_type": "qwen3"}',
        "tokenizer.json": b"t" * 200_000,
    }
    make_files(root, spec)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


HF_SCRIPT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download("bench/model", local_dir=sys.argv[1], max_workers=8)
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def scenario(
    name: str, repo: Path, total: int, cap_bps: float, stream_bps: float | None, work: Path
) -> dict[str, float]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(repo), "--cap-bps", str(cap_bps)]
        + (["--stream-bps", str(stream_bps)] if stream_bps else []),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        env = {
            **os.environ,
            "HF_ENDPOINT": url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(work / "hf-home"),
            "NO_PROXY": "127.0.0.1",
        }
        env.pop("HF_TOKEN", None)
        out: dict[str, float] = {}
        for label, cmd in (
            (
                "vfleet",
                [
                    sys.executable,
                    "-m",
                    "vfleet.download",
                    "hf://bench/model",
                    "--json",
                    "--to",
                    str(work / "vfleet"),
                ],
            ),
            ("huggingface_hub", [sys.executable, "-c", HF_SCRIPT, str(work / "hf")]),
        ):
            secs = timed(cmd, env)
            out[label] = total / secs
            print(
                f"  {name:6s} {label:16s} {secs:6.2f} s  {total / secs / MB:7.1f} MB/s  "
                f"{total / secs / cap_bps:6.1%} of cap",
                flush=True,
            )
            shutil.rmtree(work / ("vfleet" if label == "vfleet" else "hf"), ignore_errors=True)
        return out
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cap-mbps", type=float, default=200.0, help="server total cap, MB/s")
    ap.add_argument("--stream-mbps", type=float, default=50.0, help="per-connection cap, MB/s")
    ap.add_argument("--gib", type=float, default=4.0, help="repo size, GiB")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--cap-bps", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--stream-bps", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve), args.cap_bps, args.stream_bps)
        return
    cap = args.cap_mbps * MB
    with tempfile.TemporaryDirectory(prefix="vfleet-bench-dl-") as tmp:
        work = Path(tmp)
        total = make_repo(work / "repo", args.gib)
        print(
            f"repo: {total / 2**30:.2f} GiB in 6 files; cap {args.cap_mbps:g} MB/s; "
            f"stream cap {args.stream_mbps:g} MB/s"
        )
        results = {
            "link": scenario("link", work / "repo", total, cap, None, work),
            "stream": scenario("stream", work / "repo", total, cap, args.stream_mbps * MB, work),
        }
    summary = {
        name: {
            "vfleet_of_cap": round(r["vfleet"] / cap, 3),
            "hf_of_cap": round(r["huggingface_hub"] / cap, 3),
            "vfleet_over_hf": round(r["vfleet"] / r["huggingface_hub"], 2),
        }
        for name, r in results.items()
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
