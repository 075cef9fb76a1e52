"""Drives the KV-routing comparison on a fleet `vfleet up` started (see kv_routing.sh).

Reads the engines and their KV-event publishers from the fleet's endpoints.json, then:

1. for each rate, each policy (round_robin, prefix, kv, in a rotating order): empties every
   engine's prefix cache (POST /reset_prefix_cache, VLLM_SERVER_DEV_MODE=1), starts a fresh
   `vfleet router` with that policy in front of all engines (with --kv-events for kv), runs
   `vllm bench serve --dataset-name prefix_repetition` at the rate, and reads the engines'
   prefix-cache counters before and after;
2. TTFT and TPOT at 4 req/s on 3,000-token prompts, direct to one engine against a `kv`
   router in front of that engine alone (one router per dataset), interleaved (direct,
   router, direct, router ...): random prompts (each one new: the router routes it at once
   and encodes it in the background), then prompts sharing 4 prefixes (the router computes
   each one's chain before routing it), and these through a round_robin router (no chain:
   what forwarding alone costs);
3. writes report.md: the table, kv's ratios to the others, issue 11's targets, and each kv
   router's decisions by reason, its requests' chain outcomes, the KV-event purges its log
   reported and how long requests waited for their chains (what to look at when kv falls
   behind, or adds to TTFT).

Stdlib and vfleet only (it runs where vLLM runs): `vfleet` must be importable by this
python.
usage: kv_routing.py --run-dir RUN --model MODEL_DIR --served NAME --out DIR
       [--rates 64,96,128] [--prompts 1280,768,768] [--policies round_robin,prefix,kv]
       [--direct-prompts 40] [--direct-reps 1]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from vfleet.bench import promtext
from vfleet.local.gpus import free_ports

START_S = 60.0
COUNTERS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
KV_FAMILIES = (
    ("vfleet_router_kv_decisions_total", "reason", "reasons"),
    ("vfleet_router_kv_chains_total", "outcome", "chains"),
)


def http(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def counters(urls: list[str]) -> dict[str, float]:
    """Prefix-cache hits and queries summed over the engines' /metrics."""
    out = dict.fromkeys(COUNTERS, 0.0)
    for url in urls:
        status, body = http(url + "/metrics")
        if status != 200:
            raise SystemExit(f"{url}/metrics: HTTP {status}")
        for line in body.decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in out:
                out[name] += float(line.rsplit(" ", 1)[1])
    return out


def kv_counts(router: Router) -> dict[str, Any]:
    """A kv router's decisions by reason, chains by outcome (its /metrics, summed over models)
    and the KV-event purges its log reported so far."""
    status, body = http(router.url + "/metrics")
    text = body.decode("utf-8", "replace") if status == 200 else ""
    out: dict[str, Any] = {
        key: promtext.by_label(text, family, label) for family, label, key in KV_FAMILIES
    }
    out["wait"] = chain_wait(text)
    router.log.flush()
    text = router.log_path.read_text(errors="replace")
    out["purges"] = text.count("entries are purged")
    return out


def chain_wait(text: str) -> str:
    """What the requests that waited for their chain waited (the router's
    vfleet_router_kv_chain_wait_seconds, summed over models): their count, mean and the share
    within 2 ms (an incremental encode) and within 10 ms."""
    name = "vfleet_router_kv_chain_wait_seconds"
    count = sum(promtext.by_label(text, name + "_count", "model").values())
    if not count:
        return "none waited"
    total = sum(promtext.by_label(text, name + "_sum", "model").values())
    le = promtext.by_label(text, name + "_bucket", "le")
    within = ", ".join(
        f"{le.get(b, 0.0) / count:.0%} <= {ms} ms" for b, ms in (("0.002", 2), ("0.01", 10))
    )
    return f"{count:.0f} waited, mean {total / count * 1000:.2f} ms, {within}"


def reset_caches(urls: list[str]) -> None:
    """Empty every engine's prefix cache (vLLM refuses while blocks are in use: retry)."""
    for url in urls:
        deadline = time.monotonic() + 30
        while True:
            status, body = http(url + "/reset_prefix_cache", "POST")
            if status == 200 and json.loads(body or b"{}").get("success", True):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{url}/reset_prefix_cache: HTTP {status} {body[:200]!r}")
            time.sleep(0.5)


class Router:
    def __init__(self, out: Path, name: str, policy: str, engines: list[dict[str, Any]]) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "vfleet", "router", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--policy", policy]
        for e in engines:
            argv += ["--backend", f"{e['url']}={','.join(e['models'])}"]
            if policy == "kv" and e.get("kv_events"):
                argv += ["--kv-events", f"{e['url']}={e['kv_events']}"]
        self.log_path = out / f"router-{name}.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_S
        while http(self.url + "/ready", timeout=2)[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"router {name} did not become ready; see {self.log.name}")
            time.sleep(0.2)
        time.sleep(1.0)  # kv: the subscriptions join before the first request

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def bench(args: argparse.Namespace, url: str, name: str, extra: list[str]) -> dict[str, Any]:
    results = Path(args.out) / "results"
    argv = [
        *("vllm", "bench", "serve", "--backend", "vllm", "--base-url", url),
        *("--endpoint", "/v1/completions", "--model", args.served, "--tokenizer", args.model),
        *("--seed", "0", "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el"),
        *("--metric-percentiles", "50,90,99", "--save-result", "--result-dir", str(results)),
        *("--result-filename", f"{name}.json", *extra),
    ]
    with (Path(args.out) / f"bench-{name}.log").open("wb") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve for {name} failed; see bench-{name}.log")
    return json.loads((results / f"{name}.json").read_text())  # type: ignore[no-any-return]


def prefix_repetition(
    rate: float, prompts: int, prefixes: int = 32, output_len: int = 96
) -> list[str]:
    return [
        *("--dataset-name", "prefix_repetition", "--prefix-repetition-num-prefixes", str(prefixes)),
        *("--prefix-repetition-prefix-len", "3000", "--prefix-repetition-suffix-len", "128"),
        *("--prefix-repetition-output-len", str(output_len), "--num-prompts", str(prompts)),
        *("--request-rate", f"{rate:g}"),
    ]


def row(
    name: str, result: dict[str, Any], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    queries = after[COUNTERS[1]] - before[COUNTERS[1]]
    hits = after[COUNTERS[0]] - before[COUNTERS[0]]
    return {
        "name": name,
        "ttft_ms": [result.get(f"{k}_ttft_ms") for k in ("median", "p90", "p99")],
        "tpot_ms": [result.get(f"{k}_tpot_ms") for k in ("median", "p90", "p99")],
        "served_req_s": result.get("request_throughput"),
        "output_tok_s": result.get("output_throughput"),
        "completed": result.get("completed"),
        "failed": result.get("failed"),
        "hit_rate": hits / queries if queries > 0 else None,
    }


def fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(rows: dict[str, dict[str, Any]], rates: list[float], policies: list[str]) -> str:
    out = [
        "| rate | policy | TTFT p50 / p90 / p99 ms | TPOT p50 ms | served req/s | output tok/s "
        "| prefix-cache hit | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        for policy in policies:
            r = rows.get(f"{policy}-{rate:g}")
            if r is None:
                continue
            hit = "-" if r["hit_rate"] is None else f"{r['hit_rate'] * 100:.1f}%"
            ttft = " / ".join(fmt(v, 0) for v in r["ttft_ms"])
            tok_s = fmt(r["output_tok_s"], 0)
            out.append(
                f"| {rate:g} | {policy} | {ttft} | {fmt(r['tpot_ms'][0])} "
                f"| {fmt(r['served_req_s'])} | {tok_s} | {hit} | {r['failed']} |"
            )
    out += ["", "kv against the others (ratios, same prompts and arrivals):", ""]
    for rate in rates:
        kv = rows.get(f"kv-{rate:g}")
        for other in (p for p in policies if p != "kv"):
            o = rows.get(f"{other}-{rate:g}")
            if kv is None or o is None:
                continue
            ratios = [
                _ratio(kv["ttft_ms"][1], o["ttft_ms"][1]),
                _ratio(kv["tpot_ms"][0], o["tpot_ms"][0]),
                _ratio(kv["served_req_s"], o["served_req_s"]),
                _ratio(kv["hit_rate"], o["hit_rate"]),
            ]
            out.append(
                f"- {rate:g} req/s, kv/{other}: TTFT p90 {ratios[0]}, TPOT p50 {ratios[1]}, "
                f"served {ratios[2]}, hit rate {ratios[3]}"
            )
    for data, what in (
        ("random", "random prompts (each one new)"),
        ("shared", "prompts sharing 4 prefixes"),
    ):
        direct = [r for k, r in rows.items() if k.startswith(f"direct-{data}-")]
        for kind, router in (("routed", "kv router"), ("plain", "round_robin router")):
            routed = [r for k, r in rows.items() if k.startswith(f"{kind}-{data}-")]
            if not (direct and routed):
                continue
            out += ["", f"4 req/s, 3,000-token {what}, 64 output tokens, one engine, {router}:"]
            out.append("")
            added: list[float] = []
            tpots: list[float] = []
            for d, r in zip(direct, routed, strict=False):
                (d_ttft, r_ttft), (d_tpot, r_tpot) = (
                    (d[k][0], r[k][0]) for k in ("ttft_ms", "tpot_ms")
                )
                out.append(
                    f"- direct TTFT p50 {fmt(d_ttft, 2)} ms, TPOT p50 {fmt(d_tpot, 3)} ms | "
                    f"router TTFT p50 {fmt(r_ttft, 2)} ms, TPOT p50 {fmt(r_tpot, 3)} ms | "
                    f"added TTFT {_diff(r_ttft, d_ttft)} ms, TPOT ratio {_ratio(r_tpot, d_tpot)}"
                )
                if None not in (d_ttft, r_ttft, d_tpot, r_tpot) and d_tpot:
                    added.append(r_ttft - d_ttft)
                    tpots.append(r_tpot / d_tpot)
            if len(added) > 1:  # one pair is within the host's run-to-run spread: look at these
                out.append(
                    f"- median of {len(added)} pairs: added TTFT "
                    f"{statistics.median(added):+.2f} ms (range {min(added):+.2f} to "
                    f"{max(added):+.2f}), TPOT ratio {statistics.median(tpots):.2f} (range "
                    f"{min(tpots):.2f} to {max(tpots):.2f})"
                )
    kv_rows = [(k, r["kv"]) for k, r in rows.items() if "kv" in r]
    if kv_rows:
        out += [
            "",
            "kv routers: decisions by reason | requests' chains by outcome | purges | chain waits:",
            "",
        ]
        for k, kv in kv_rows:
            out.append(
                f"- {k}: {_counts(kv['reasons'])} | {_counts(kv['chains'])} | {kv['purges']} | "
                f"{kv['wait']}"
            )
    low = rows.get(f"kv-{rates[0]:g}")
    if low is not None:
        out += [
            "",
            f"issue 11 targets at {rates[0]:g} req/s: kv hit >= 93%: "
            f"{fmt((low['hit_rate'] or 0) * 100)}%; "
            f"TTFT p90 <= 84 ms: {fmt(low['ttft_ms'][1], 0)}; p99 <= 260 ms: "
            f"{fmt(low['ttft_ms'][2], 0)}; TPOT <= 8 ms: {fmt(low['tpot_ms'][0])}",
        ]
    return "\n".join(out)


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(counts.items())) or "-"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _diff(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--model", required=True, help="the model directory (its tokenizer)")
    ap.add_argument("--served", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rates", default="64,96,128")
    ap.add_argument("--prompts", default="1280,768,768", help="prompts per run, by rate")
    ap.add_argument("--policies", default="round_robin,prefix,kv")
    ap.add_argument("--direct-prompts", type=int, default=40)
    ap.add_argument("--direct-reps", type=int, default=1, help="direct/router pairs")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    engines = json.loads((Path(args.run_dir) / "endpoints.json").read_text())
    engines = [e for e in engines if e.get("state") != "starting"]
    urls = [e["url"] for e in engines]
    missing = [e["url"] for e in engines if not e.get("kv_events")]
    if missing:
        print(f"warning: no KV-event publisher in endpoints.json for {missing}", file=sys.stderr)
    rates = [float(r) for r in args.rates.split(",")]
    prompts = [int(n) for n in args.prompts.split(",")]
    policies = args.policies.split(",")
    rows: dict[str, dict[str, Any]] = {}
    for i, (rate, n) in enumerate(zip(rates, prompts, strict=True)):
        for policy in policies[i % len(policies) :] + policies[: i % len(policies)]:
            name = f"{policy}-{rate:g}"
            reset_caches(urls)
            router = Router(out, name, policy, engines)
            try:
                before = counters(urls)
                result = bench(args, router.url, name, prefix_repetition(rate, n))
                rows[name] = row(name, result, before, counters(urls))
                if policy == "kv":
                    rows[name]["kv"] = kv_counts(router)
            finally:
                router.stop()
            print(json.dumps(rows[name]), flush=True)
    one = engines[:1]
    datasets = {
        "random": [
            *("--dataset-name", "random", "--random-input-len", "3000"),
            *("--random-output-len", "64", "--num-prompts", str(args.direct_prompts)),
            *("--request-rate", "4"),
        ],
        "shared": prefix_repetition(4, args.direct_prompts, prefixes=4, output_len=64),
    }
    # one router per dataset, kept over the repetitions, so that its chain waits are that
    # dataset's alone
    routers = {data: Router(out, f"one-engine-{data}", "kv", one) for data in datasets}
    # and a round_robin router (no chain) on the shared prompts: what forwarding alone adds
    plain = Router(out, "one-engine-plain", "round_robin", one)
    try:
        for rep in range(1, args.direct_reps + 1):
            for data, extra in datasets.items():
                kinds = [("direct", one[0]["url"]), ("routed", routers[data].url)]
                if data == "shared":
                    kinds.append(("plain", plain.url))
                for kind, url in kinds:
                    name = f"{kind}-{data}-{rep}"
                    reset_caches([one[0]["url"]])
                    before = counters([one[0]["url"]])
                    result = bench(args, url, name, extra)
                    rows[name] = row(kind, result, before, counters([one[0]["url"]]))
                    print(json.dumps(rows[name]), flush=True)
        for data, router in routers.items():
            rows[f"one-engine-{data}"] = {"name": f"one-engine-{data}", "kv": kv_counts(router)}
    finally:
        for router in (*routers.values(), plain):
            router.stop()
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, rates, policies)
    (out / "report.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
