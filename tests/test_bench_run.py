"""`vfleet bench run` and `compare` end to end: real sim engines behind a real router on
127.0.0.1, the bench as a subprocess, results checked against the workload and the engines'
own counters."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchkit import bench, flags, ok
from conftest import SimProcess, start_router, start_sim
from httpclient import request
from vfleet.bench import promtext
from vfleet.bench.workloads import WorkloadSpec, generate

SIM_ARGS = ("--model", "demo", "--profile", "small", "--max-model-len", "4096")
Fleet = tuple[SimProcess, SimProcess, SimProcess]  # two engines and the router before them
Runner = Callable[..., Path]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    a = start_sim(*SIM_ARGS)
    b = start_sim(*SIM_ARGS)
    r = start_router("--backend", a.url, "--backend", b.url, "--policy", "prefix")
    yield a, b, r
    for p in (r, a, b):
        p.stop()


@pytest.fixture
def bench_run(fleet: Fleet, tmp_path: Path) -> Runner:
    """`bench_run(NAME, **options)`: `vfleet bench run` of model demo through the shared
    fleet's router (options as `benchkit.flags`), results in tmp_path/NAME, which it returns."""

    def go(name: str, **options: object) -> Path:
        out = tmp_path / name
        run(fleet[2].url, out, **options)
        return out

    return go


def run(url: str, out: Path, model: str = "demo", **options: object) -> str:
    """`vfleet bench run` against `url`, results in `out`; `options` as `benchkit.flags`."""
    return ok("run", *flags(url=url, model=model, **options, out=out))


def successes(*engines: SimProcess) -> float:
    total = 0.0
    for e in engines:
        status, body = request(e.url, "GET", "/metrics")
        assert status == 200
        text = body.decode()
        total += promtext.parse(text).get("vllm:request_success_total", 0.0)
    return total


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def test_random_open_loop_agrees_with_workload_usage_and_engine_counters(
    fleet: Fleet, bench_run: Runner, tmp_path: Path
) -> None:
    a, b, _ = fleet
    wl: dict[str, object] = {
        "workload": "random",
        "input_len": 32,
        "output_len": 8,
        "range_ratio": 0.5,
    }
    before = successes(a, b)
    bench_run("a", **wl, rate=200, requests=40, seed=3, slo_ttft=10, metrics_url=[a.url, b.url])
    assert successes(a, b) - before == 40

    spec = WorkloadSpec("random", 40, seed=3, input_len=32, output_len=8, range_ratio=0.5)
    asked = {q.id: q for q in generate(spec)}
    recs = records(tmp_path / "a")
    assert sorted(x["id"] for x in recs) == sorted(asked)
    for x in recs:
        q = asked[x["id"]]
        assert x["ok"] and x["status"] == 200, x
        assert 0 < x["ttft"] <= x["e2e"]
        assert x["output_tokens"] == q.max_tokens  # usage, ignore_eos: exactly as asked
        assert x["input_tokens"] == q.input_tokens
        assert 1 <= x["chunks"] <= x["output_tokens"]
        assert len(x["itl"]) == x["chunks"] - 1
    s = summary(tmp_path / "a")
    assert (s["requests"], s["completed"], s["failed"]) == (40, 40, 0)
    assert s["output_tokens"] == sum(q.max_tokens for q in asked.values())
    assert s["engine_metrics"]["vllm:request_success_total"] == 40
    assert s["good_requests"] == 40  # a 10 s TTFT SLO is met by every request
    assert s["run"]["load"] == "rate 200/s, 40 requests"
    assert s["ttft_s"]["p50"] <= s["ttft_s"]["p99"] <= s["e2e_s"]["max"]
    report = (tmp_path / "a" / "report.md").read_text()
    assert (tmp_path / "a" / "latency_cdf.png").read_bytes().startswith(b"\x89PNG")
    assert "| completed | 40 |  |" in report

    # same seed, same requests; compare lays the two runs side by side
    bench_run("b", **wl, concurrency=4, requests=40, seed=3)
    again = records(tmp_path / "b")
    assert {x["id"]: x["input_tokens"] for x in again} == {x["id"]: x["input_tokens"] for x in recs}
    table = ok("compare", str(tmp_path / "a"), str(tmp_path / "b")).splitlines()
    assert table[0] == "| metric | a | b |"
    assert "| completed | 40 | 40 (x1.00) |" in table
    assert any(line.startswith("| TTFT p99 (ms) |") and "(x" in line for line in table)


def test_shared_prefix_sweep_hits_the_prefix_cache(
    fleet: Fleet, bench_run: Runner, tmp_path: Path
) -> None:
    a, b, _ = fleet
    out = bench_run("sweep", workload="shared-prefix", groups=2, users=3, prefix_len=128,
                    input_len=8, output_len=4, rate="100,300", requests=24,
                    metrics_url=[a.url, b.url])  # fmt: skip
    for rate in ("100", "300"):
        s = summary(out / f"rate-{rate}")
        assert s["completed"] == 24
        assert s["engine_metrics"]["prefix_cache_hit_rate"] > 0.5  # 128 of ~136 tokens shared
    assert "rate 100" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    table = ok("compare", str(out)).splitlines()
    assert table[0] == "| metric | sweep/rate-100 | sweep/rate-300 |"
    png = tmp_path / "cmp.png"
    assert ok("compare", str(out), "--plot", str(png)).splitlines() == table
    check_compare_png(png, ["sweep/rate-100", "sweep/rate-300"])


def check_compare_png(path: Path, names: list[str]) -> None:
    """The compare plot is a PNG that decodes, lists each run in each panel, and has pixels of
    each run's line colour (matplotlib's cycle: C0, C1, ...)."""
    from matplotlib import colors
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG"
        series = json.loads(img.text["vfleet:series"])
        pixels = set(img.convert("RGB").get_flattened_data())
    assert series == {"ttft": names, "itl": names, "throughput": names}
    for i in range(len(names)):
        rgb = tuple(round(c * 255) for c in colors.to_rgb(f"C{i}"))
        assert rgb in pixels, f"no pixel of run {i}'s colour"


def test_multi_round_sends_a_round_only_after_the_previous_one(bench_run: Runner) -> None:
    out = bench_run("mr", workload="multi-round", users=3, rounds=3, input_len=16, output_len=4,
                    concurrency=3, requests=9)  # fmt: skip
    by_id = {x["id"]: x for x in records(out)}
    assert len(by_id) == 9 and all(x["ok"] for x in by_id.values())
    for u in range(3):
        for rnd in (1, 2):
            prev, cur = by_id[f"u{u}r{rnd - 1}"], by_id[f"u{u}r{rnd}"]
            assert cur["sent"] >= prev["sent"] + prev["e2e"]
            assert cur["input_tokens"] > prev["input_tokens"] + prev["output_tokens"]


def test_embeddings_and_rerank_behind_the_router(tmp_path: Path) -> None:
    emb = start_sim("--model", "emb", "--task", "embed", "--profile", "instant")
    router = start_router("--backend", emb.url)
    try:
        for name in ("embeddings", "rerank"):
            out = tmp_path / name
            run(router.url, out, "emb", metrics_url=emb.url, workload=name, input_len=16,
                documents=3, concurrency=2, requests=6)  # fmt: skip
            recs = records(out)
            assert len(recs) == 6 and all(x["ok"] for x in recs), recs
            assert all(x["input_tokens"] > 0 and x["ttft"] == x["e2e"] for x in recs)
            # vLLM runs a rerank as one pooling request per document, and counts them so
            per_request = 3 if name == "rerank" else 1
            got = summary(out)["engine_metrics"]["vllm:request_success_total"]
            assert got == 6 * per_request
    finally:
        router.stop()
        emb.stop()


def test_trace_replay(bench_run: Runner, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    rows = [
        {"timestamp": 10 + i * 0.02, "input_tokens": 20 + i, "output_tokens": 3, "group": i % 2}
        for i in range(6)
    ]
    trace.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    out = bench_run("replay", workload="trace", trace=trace, requests=6)
    recs = sorted(records(out), key=lambda x: x["id"])
    assert [x["input_tokens"] for x in recs] == [20, 21, 22, 23, 24, 25]
    assert [x["output_tokens"] for x in recs] == [3] * 6
    sent = [x["sent"] for x in recs]
    assert sent == sorted(sent)
    assert summary(out)["run"]["load"] == "trace replay, 6 requests"


def test_errors_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        res = bench("run", *flags(url=dead, model="m", rate=50, requests=3, out=tmp_path / "dead"))
    assert res.returncode == 1
    assert res.stderr.startswith("Error: no request succeeded (connection:"), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert summary(tmp_path / "dead")["failed"] == 3  # what happened is still written

    both = bench(
        "run",
        *flags(url=dead, model="m", rate=1, concurrency=2, requests=1, out=tmp_path / "x"),
    )
    assert both.returncode == 2 and "exactly one of --rate or --concurrency" in both.stderr
    missing = bench("compare", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no readable summary.json" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_duration_run_cycles_the_workload_with_unique_ids(bench_run: Runner) -> None:
    out = bench_run("dur", workload="multi-round", users=2, rounds=2, input_len=8, output_len=2,
                    concurrency=2, duration=0.5)  # fmt: skip
    recs = records(out)
    ids = [x["id"] for x in recs]
    assert len(ids) == len(set(ids)) > 4  # 4 requests a cycle: it went round
    assert all(x["ok"] for x in recs)
    assert summary(out)["run"]["load"] == "concurrency 2, 0.5 s"


def test_help_lists_the_bench_commands() -> None:
    top = subprocess.run(
        [sys.executable, "-m", "vfleet", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "bench" in top.stdout
    assert all(c in ok("--help") for c in ("run", "plan", "compare"))
