"""`vfleet bench plan`: simulated engines behind the router's real policies, in virtual time."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from vfleet.bench import workloads
from vfleet.bench.plan import PlanResult, capacity, fewest, simulate_fleet
from vfleet.bench.stats import Slo
from vfleet.bench.workloads import WorkloadSpec, generate
from vfleet.sim import tokenizer
from vfleet.sim.profiles import PROFILES
from vfleet.sim.scheduler import SchedulerConfig
from vfleet.sim.virtual import Arrival, simulate

SMALL = PROFILES["small"]
CONFIG = SchedulerConfig(max_num_seqs=32, num_gpu_blocks=2048, max_model_len=2048)


def _load(
    name: str, n: int, rate: float, **kw: int
) -> tuple[list[workloads.BenchRequest], list[float]]:
    reqs = generate(WorkloadSpec(name, n, seed=11, **kw))
    return reqs, workloads.poisson_offsets(len(reqs), rate, 11)


def test_one_engine_matches_the_simulators_own_virtual_time_runner() -> None:
    reqs, offsets = _load("random", 200, 150.0, input_len=64, output_len=16, range_ratio=0.5)
    fleet = simulate_fleet(reqs, offsets, 1, CONFIG, SMALL, "round_robin")
    alone = simulate(
        CONFIG,
        SMALL,
        [
            Arrival(t, tokenizer.encode(r.prompt), r.max_tokens)
            for r, t in zip(reqs, offsets, strict=True)
        ],
    )
    assert len(fleet.records) == len(alone.requests) == 200
    for rec, ref in zip(fleet.records, alone.requests, strict=True):
        assert rec.sent == ref.arrival
        assert rec.ttft == pytest.approx(ref.ttft, abs=1e-12)
        assert rec.e2e == pytest.approx(ref.e2e, abs=1e-12)
        assert rec.output_tokens == ref.output_tokens
    assert fleet.duration_s == pytest.approx(alone.duration_s)


def test_round_robin_spreads_evenly_and_more_engines_cut_ttft() -> None:
    reqs, offsets = _load("random", 400, 900.0, input_len=256, output_len=32)
    one = simulate_fleet(reqs, offsets, 1, CONFIG, SMALL, "round_robin")
    four = simulate_fleet(reqs, offsets, 4, CONFIG, SMALL, "round_robin")
    assert four.per_engine == [100, 100, 100, 100]
    assert one.per_engine == [400]
    p99 = lambda res: sorted(r.ttft or 0.0 for r in res.records)[395]  # noqa: E731
    assert p99(four) < p99(one)
    assert all(r.ok and r.output_tokens == 32 for r in four.records)


def test_prefix_policy_keeps_each_group_on_few_engines() -> None:
    reqs, offsets = _load(
        "shared-prefix", 120, 50.0, groups=3, users=4, prefix_len=256, input_len=16, output_len=4
    )
    prefix = simulate_fleet(reqs, offsets, 4, CONFIG, SMALL, "prefix")
    spread = simulate_fleet(reqs, offsets, 4, CONFIG, SMALL, "round_robin")
    assert sum(prefix.per_engine) == 120

    def engines_per_group(res: PlanResult) -> dict[int, Counter[int]]:
        out: dict[int, Counter[int]] = {}
        for req, engine in zip(reqs, res.routed_to, strict=True):
            out.setdefault(req.group, Counter())[engine] += 1
        return out

    # at this light load the prefix policy rarely spills: each group mostly sticks to one engine
    for counts in engines_per_group(prefix).values():
        assert counts.most_common(1)[0][1] >= 0.75 * sum(counts.values())
    # while round robin puts every group on every engine
    assert all(len(c) == 4 for c in engines_per_group(spread).values())


def test_multi_round_requests_arrive_after_their_previous_round() -> None:
    reqs, offsets = _load("multi-round", 40, 100.0, users=4, rounds=5, input_len=32, output_len=8)
    res = simulate_fleet(reqs, offsets, 2, CONFIG, SMALL, "session")
    by_id = {r.id: r for r in res.records}
    for req in reqs:
        if req.after:
            prev = by_id[req.after]
            assert by_id[req.id].sent >= prev.sent + (prev.e2e or 0.0)


def test_capacity_finds_the_fewest_engines_meeting_a_p99_target() -> None:
    reqs, offsets = _load("random", 300, 600.0, input_len=512, output_len=32)
    rows = capacity(reqs, offsets, [1, 2, 4], ["least_load"], CONFIG, SMALL, Slo(), 0.1)
    p99s = [r.summary["ttft_s"]["p99"] for r in rows]  # type: ignore[index]
    assert p99s == sorted(p99s, reverse=True)  # more engines, lower tail
    n = fewest(rows, "least_load")
    assert n is not None and all(r.meets_slo == (r.engines >= n) for r in rows)
    assert fewest(rows, "prefix") is None


def test_plan_command_writes_a_table_and_an_answer(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "name: t\nengine: sim\nrouter:\n  policy: least_load\nmodels:\n"
        "  - name: chat\n    source: hf://Qwen/Qwen3-0.6B\n    replicas: 2\n"
        "    sim:\n      profile: small\n"
    )
    out = tmp_path / "plan"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vfleet",
            "bench",
            "plan",
            "-f",
            str(spec),
            "--rate",
            "200",
            "--duration",
            "2",
            "--input-len",
            "64",
            "--output-len",
            "8",
            "--ttft-p99",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "plan.json").read_text())
    assert [(r["policy"], r["replicas"]) for r in result["rows"]] == [
        ("least_load", 1),
        ("least_load", 2),
        ("least_load", 3),
        ("least_load", 4),
    ]  # default: 1 to twice the spec's replicas
    assert result["fewest"] == {"least_load": 1}
    assert "- least_load: 1 replicas" in res.stdout
    assert (out / "plan.md").read_text() == res.stdout
    assert (out / "plan.png").read_bytes().startswith(b"\x89PNG")

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "vfleet",
            "bench",
            "plan",
            "-f",
            str(spec),
            "--model",
            "nope",
            "--rate",
            "1",
            "--duration",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and bad.stderr == "Error: no model 'nope' in the fleet (chat)\n"
