"""`vfleet bench plan`: the command line of capacity planning (a fleet spec and a workload in,
`plan.json`, `plan.md` and `plan.png` out); the simulation itself is `bench.plan` (pure)."""

from __future__ import annotations

import bisect
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from vfleet.bench import plots, report, workloads
from vfleet.bench.options import NO_PLOTS, spec_params, workload_options, workload_spec
from vfleet.bench.stats import Slo

MAX_PLAN_ENGINES = 256


def _counts(text: str) -> list[int]:
    """Engine counts from N, A-B or N1,N2,..."""
    try:
        if "-" in text:
            lo, _, hi = text.partition("-")
            counts = list(range(int(lo), int(hi) + 1))
        else:
            counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not N, A-B or N1,N2", param_hint="--replicas"
        ) from None
    if not counts or min(counts) < 1 or max(counts) > MAX_PLAN_ENGINES:
        raise click.BadParameter(f"counts must be 1..{MAX_PLAN_ENGINES}", param_hint="--replicas")
    return sorted(set(counts))


def _load_text(rate: float | None, concurrency: int | None, n: int | None, d: float | None) -> str:
    how = (
        f"{rate:g} req/s"
        if rate is not None
        else f"concurrency {concurrency}"
        if concurrency is not None
        else "trace replay"
    )
    ends = ([f"{n} requests"] if n is not None else []) + ([f"{d:g} s"] if d is not None else [])
    return f"{how}, {' or '.join(ends)}"


@click.command()
@click.option("-f", "--file", "files", multiple=True, required=True, help="Fleet spec file(s).")
@click.option("--model", "model_name", default=None, help="The fleet's model to plan (first).")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Open loop, req/s."
)
@click.option("--concurrency", type=click.IntRange(1, 100_000), default=None, help="Closed loop.")
@click.option(
    "--requests",
    "num_requests",
    type=click.IntRange(1, workloads.MAX_REQUESTS),
    help="End after N requests.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="End after S virtual seconds (no request starts later).",
)
@click.option(
    "--replicas",
    default=None,
    help="Engine counts to try: N, A-B or N1,N2 (default: the autoscaling bounds, else 1 to "
    "twice the spec's replicas).",
)
@click.option(
    "--engines-per-gpu",
    type=click.IntRange(1, 64),
    default=None,
    help="Engines sharing one GPU (default: from the model's gpu share, e.g. 0.25 -> 4).",
)
@click.option(
    "--policy", "policies", multiple=True, help="Routing policy to try (repeat; default: spec's)."
)
@click.option("--profile", default=None, help="Simulator latency profile (default: spec's sim).")
@click.option("--ttft-p99", type=float, default=None, help="Target: p99 TTFT below this (s).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Result directory.")
@workload_options
def plan(
    files: tuple[str, ...],
    model_name: str | None,
    rate: float | None,
    concurrency: int | None,
    num_requests: int | None,
    duration: float | None,
    replicas: str | None,
    engines_per_gpu: int | None,
    policies: tuple[str, ...],
    profile: str | None,
    ttft_p99: float | None,
    out: str,
    workload: str,
    seed: int,
    trace_file: str | None,
    slo_ttft: float | None,
    slo_itl: float | None,
    **kw: Any,
) -> None:
    """How many engines a model needs for a load: the workload through simulated engines
    behind the router's real policy, in virtual time (no sockets, no GPUs)."""
    from vfleet.bench import plan as planner
    from vfleet.fleetspec.load import load
    from vfleet.fleetspec.source import SpecError
    from vfleet.router.policies import POLICY_NAMES
    from vfleet.sim.profiles import PROFILES
    from vfleet.sim.scheduler import SchedulerConfig

    replay = workload == "trace" and rate is None and concurrency is None
    if (rate is not None) + (concurrency is not None) + replay != 1:
        raise click.UsageError("give exactly one of --rate or --concurrency")
    if num_requests is None and duration is None:
        raise click.UsageError("give --requests N or --duration SECONDS")
    try:
        fleet = load(files).fleet
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    names = [m.name for m in fleet.models]
    model = next((m for m in fleet.models if m.name == (model_name or names[0])), None)
    if model is None:
        raise click.ClickException(f"no model {model_name!r} in the fleet ({', '.join(names)})")
    chosen = list(policies) or [fleet.router.model_policies.get(model.name, fleet.router.policy)]
    bad = [p for p in chosen if p not in POLICY_NAMES]
    if bad:
        raise click.BadParameter(
            f"{bad[0]!r}; one of {', '.join(POLICY_NAMES)}", param_hint="--policy"
        )
    prof_name = profile or model.sim.profile
    if prof_name not in PROFILES:
        raise click.ClickException(f"unknown profile {prof_name!r}; one of {', '.join(PROFILES)}")
    if replicas is not None:
        counts = _counts(replicas)
    elif model.autoscaling is not None:
        top = model.autoscaling.max_replicas or max(model.replicas, 1)
        counts = _counts(f"{max(1, model.autoscaling.min_replicas)}-{top}")
    else:
        counts = _counts(f"1-{min(MAX_PLAN_ENGINES, 2 * max(1, model.replicas))}")
    share = model.gpu_share_pct
    per_gpu = engines_per_gpu or (100 // share if share else 1)
    v = model.vllm
    if num_requests is not None:
        n = num_requests
    elif rate is not None and duration is not None:
        n = int(rate * duration * 1.2) + 16  # Poisson counts rarely exceed the mean by 20%
    else:
        n = 1000  # a closed loop for a duration cycles this many
    try:
        config = SchedulerConfig(
            max_num_seqs=v.max_num_seqs or 256,
            max_num_batched_tokens=v.max_num_batched_tokens or 8192,
            max_model_len=v.max_model_len or 4096,
            enable_prefix_caching=v.enable_prefix_caching is not False,
        )
        spec = workload_spec(workload, min(n, workloads.MAX_REQUESTS), seed, trace_file, **kw)
        offsets: list[float] = []
        if rate is not None and workload != "trace":
            # Arrivals first, then only the requests sent before the end: a generated workload's
            # first k requests do not depend on how many follow, and the 20% margin above was
            # a sixth of an hour-long plan's time
            offsets = workloads.poisson_offsets(spec.num_requests, rate, seed)
            sent = len(offsets) if duration is None else bisect.bisect_left(offsets, duration)
            reqs = workloads.generate(replace(spec, num_requests=max(1, sent)))
            del offsets[len(reqs) :]
        else:
            reqs = workloads.generate(spec)
            if rate is not None:
                offsets = workloads.poisson_offsets(len(reqs), rate, seed)
        if concurrency is not None:
            plan_load = planner.PlanLoad(
                concurrency=concurrency, num_requests=num_requests, duration_s=duration
            )
        else:
            if rate is None:
                offsets = [r.at or 0.0 for r in reqs]
            keep = [i for i, t in enumerate(offsets) if duration is None or t < duration]
            reqs = [reqs[i] for i in keep]
            plan_load = planner.PlanLoad(offsets=[offsets[i] for i in keep])
        rows = planner.capacity(
            reqs,
            plan_load,
            counts,
            chosen,
            config,
            PROFILES[prof_name],
            Slo(slo_ttft, slo_itl),
            ttft_p99,
            engines_per_gpu=per_gpu,
        )
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    result = {
        "fleet": fleet.name,
        "model": model.name,
        "profile": prof_name,
        "workload": workload,
        "workload_params": spec_params(spec),
        "load": _load_text(rate, concurrency, num_requests, duration),
        "rate": rate,
        "concurrency": concurrency,
        "duration_s": duration,
        "engines_per_gpu": per_gpu,
        "requests": max(int(r.summary["requests"]) for r in rows),  # type: ignore[call-overload]
        "ttft_p99_target_s": ttft_p99,
        "fewest": {p: planner.fewest(rows, p) for p in chosen},
        "rows": [
            {"policy": r.policy, "replicas": r.engines, "meets": r.meets_slo, "summary": r.summary}
            for r in rows
        ],
    }
    md = report.plan_markdown(result)
    target = Path(out)
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / "plan.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (target / "plan.md").write_text(md, encoding="utf-8")
        if plots.available():
            plots.plan(result, target / "plan.png")
    except OSError as exc:
        raise click.ClickException(f"cannot write results to {target}: {exc}") from None
    click.echo(md, nl=False)
    if not plots.available():
        click.echo(NO_PLOTS, err=True)
