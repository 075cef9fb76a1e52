"""`vfleet bench run | plan | compare`: the command line of the benchmark (files in, files out).

A run writes into its --out directory: `requests.jsonl` (one record per request),
`summary.json` (the summary, with the run's parameters under "run") and `report.md`. A sweep of
rates writes one such directory per rate (`rate-R`) and `sweep.md`, the rates side by side.
A plan writes `plan.json` (every simulated run's summary) and `plan.md` (the table, the answer).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vfleet.bench import plots, report, runner, workloads
from vfleet.bench.stats import Slo

API_KEY_ENV = "VFLEET_BENCH_API_KEY"
DURATION_POOL = 1000  # requests generated for a duration-only run (then cycled)
MAX_PLAN_ENGINES = 256
NO_PLOTS = "vfleet bench: no plots: matplotlib is not installed (pip install 'vfleet[bench]')"


@click.group()
def bench() -> None:
    """Benchmark an OpenAI-compatible endpoint; compare runs."""


def _rates(text: str | None) -> list[float]:
    if text is None:
        return []
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not RATE[,RATE...]", param_hint="--rate") from None
    if not rates or any(r <= 0 for r in rates):
        raise click.BadParameter("rates must be > 0", param_hint="--rate")
    return rates


def _workload_options(f: Callable[..., None]) -> Callable[..., None]:
    """The options that describe a workload, shared by `run` and `plan`."""
    options = [
        click.option(
            "--workload",
            type=click.Choice(workloads.WORKLOADS),
            default="random",
            show_default=True,
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--input-len", type=click.IntRange(1), default=256, show_default=True),
        click.option("--output-len", type=click.IntRange(1), default=64, show_default=True),
        click.option(
            "--range-ratio",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.0,
            show_default=True,
            help="Lengths uniform in [len*(1-r), len*(1+r)].",
        ),
        click.option("--groups", type=click.IntRange(1), default=4, show_default=True),
        click.option("--users", type=click.IntRange(1), default=8, show_default=True),
        click.option("--prefix-len", type=click.IntRange(0), default=1024, show_default=True),
        click.option("--rounds", type=click.IntRange(1), default=4, show_default=True),
        click.option("--documents", type=click.IntRange(1), default=8, show_default=True),
        click.option("--trace", "trace_file", type=click.Path(dir_okay=False), default=None),
        click.option("--slo-ttft", type=float, default=None, help="Seconds; for goodput."),
        click.option("--slo-itl", type=float, default=None, help="Seconds per output token."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _spec(
    workload: str, num_requests: int, seed: int, trace_file: str | None, **kw: Any
) -> workloads.WorkloadSpec:
    if (workload == "trace") != (trace_file is not None):
        raise click.UsageError("--trace FILE goes with --workload trace, and only with it")
    trace: tuple[dict[str, Any], ...] = ()
    if trace_file is not None:
        with open(trace_file, encoding="utf-8") as f:
            trace = workloads.parse_trace(f)
    return workloads.WorkloadSpec(workload, num_requests, seed, trace=trace, **kw)


@bench.command()
@click.option("--url", required=True, help="Base URL of the endpoint (http://HOST:PORT).")
@click.option("--model", required=True, help="Model name sent in each request.")
@click.option("--rate", default=None, help="Open-loop Poisson requests/s; R1,R2,... sweeps.")
@click.option("--concurrency", type=click.IntRange(1, 100_000), default=None)
@click.option("--requests", "num_requests", type=click.IntRange(1, workloads.MAX_REQUESTS))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Result directory.")
@_workload_options
@click.option(
    "--metrics-url",
    multiple=True,
    help="Engine to read /metrics from before and after (default: --url).",
)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Per request.")
def run(
    url: str,
    model: str,
    workload: str,
    rate: str | None,
    concurrency: int | None,
    num_requests: int | None,
    duration: float | None,
    out: str,
    seed: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    groups: int,
    users: int,
    prefix_len: int,
    rounds: int,
    documents: int,
    trace_file: str | None,
    slo_ttft: float | None,
    slo_itl: float | None,
    metrics_url: tuple[str, ...],
    timeout: float,
) -> None:
    """Send a workload to URL and write per-request records, a summary and a report to OUT.

    The API key, if the endpoint needs one, comes from the environment (VFLEET_BENCH_API_KEY)."""
    rates = _rates(rate)
    replay = workload == "trace" and not rates and concurrency is None
    if bool(rates) + (concurrency is not None) + replay != 1:
        raise click.UsageError("give exactly one of --rate or --concurrency")
    if num_requests is None and duration is None:
        raise click.UsageError("give --requests N or --duration SECONDS")
    try:
        spec = _spec(
            workload,
            num_requests or DURATION_POOL,
            seed,
            trace_file,
            input_len=input_len,
            output_len=output_len,
            range_ratio=range_ratio,
            groups=groups,
            users=users,
            prefix_len=prefix_len,
            rounds=rounds,
            documents=documents,
        )
        reqs = workloads.generate(spec)
        loads = [
            runner.Load(
                rate=r,
                concurrency=concurrency,
                replay=replay,
                requests=num_requests,
                duration_s=duration,
                seed=seed,
                timeout_s=timeout,
            )
            for r in ([*rates] if rates else [None])
        ]
        slo = Slo(slo_ttft, slo_itl)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    base = Path(out)
    summaries = []
    for load in loads:
        target = base / f"rate-{load.rate:g}" if len(loads) > 1 else base
        info = {
            "url": url,
            "model": model,
            "workload": workload,
            "workload_params": _spec_params(spec),
            "load": _load_text(load),
            "seed": seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        result = _execute(url, model, reqs, load, slo, metrics_url or (url,))
        result.summary["run"] = info
        _write(target, result)
        if plots.available():
            plots.run_cdfs(result.records, target / "latency_cdf.png")
        summaries.append(result.summary)
        s = result.summary
        click.echo(
            f"{target}: {s['completed']}/{s['requests']} ok, "
            f"{s['request_throughput']:.2f} req/s, TTFT p50 "
            f"{_ms(report.value(s, ('ttft_s', 'p50')))} ms p99 "
            f"{_ms(report.value(s, ('ttft_s', 'p99')))} ms"
        )
    if len(loads) > 1:
        names = [f"rate {load.rate:g}" for load in loads]
        (base / "sweep.md").write_text(report.compare_table(names, summaries), encoding="utf-8")
        if plots.available():
            plots.sweep([load.rate or 0.0 for load in loads], summaries, base / "sweep.png")
    failed = [s for s in summaries if s["completed"] == 0]
    if failed:
        first = failed[0].get("first_error", "see requests.jsonl")
        raise click.ClickException(f"no request succeeded ({first})")
    if not plots.available():
        click.echo(NO_PLOTS, err=True)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _spec_params(spec: workloads.WorkloadSpec) -> dict[str, Any]:
    return {
        k: getattr(spec, k)
        for k in (
            "num_requests",
            "input_len",
            "output_len",
            "range_ratio",
            "groups",
            "users",
            "prefix_len",
            "rounds",
            "documents",
        )
    }


def _load_text(load: runner.Load) -> str:
    how = (
        f"rate {load.rate:g}/s"
        if load.rate is not None
        else f"concurrency {load.concurrency}"
        if load.concurrency is not None
        else "trace replay"
    )
    ends = [f"{load.requests} requests"] if load.requests is not None else []
    if load.duration_s is not None:
        ends.append(f"{load.duration_s:g} s")
    return f"{how}, {' or '.join(ends)}"


def _execute(
    url: str,
    model: str,
    reqs: list[workloads.BenchRequest],
    load: runner.Load,
    slo: Slo,
    metrics_urls: tuple[str, ...],
) -> runner.RunOutput:
    import uvloop

    key = os.environ.get(API_KEY_ENV) or None
    total = load.requests
    show = sys.stderr.isatty()

    async def main() -> runner.RunOutput:
        if not show:
            return await runner.run(url, model, reqs, load, slo, metrics_urls, key)
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("requests", total=total)
            return await runner.run(
                url,
                model,
                reqs,
                load,
                slo,
                metrics_urls,
                key,
                lambda n: bar.update(task, completed=n),
            )

    try:
        out: runner.RunOutput = uvloop.run(main())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    firsts = [r.error for r in out.records if not r.ok]
    if firsts:
        out.summary["first_error"] = firsts[0]
    return out


def _write(target: Path, result: runner.RunOutput) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
        with open(target / "requests.jsonl", "w", encoding="utf-8") as f:
            for rec in result.records:
                f.write(json.dumps(rec.to_json()) + "\n")
        (target / "summary.json").write_text(
            json.dumps(result.summary, indent=2) + "\n", encoding="utf-8"
        )
        (target / "report.md").write_text(report.run_markdown(result.summary), encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write results to {target}: {exc}") from None


def _load_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: no readable summary.json ({exc})") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}/summary.json: not a JSON object")
    return data


@bench.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
def compare(dirs: tuple[str, ...]) -> None:
    """Lay the summaries of several runs side by side, with ratios to the first.

    A sweep's directory stands for its rates (rate-*/ inside it)."""
    names: list[str] = []
    summaries: list[dict[str, Any]] = []
    for d in dirs:
        path = Path(d)
        subs = sorted(path.glob("rate-*"), key=_rate_key)
        if not (path / "summary.json").exists() and subs:
            for sub in subs:
                names.append(f"{path.name}/{sub.name}")
                summaries.append(_load_summary(sub))
        else:
            names.append(path.name or d)
            summaries.append(_load_summary(path))
    click.echo(report.compare_table(names, summaries), nl=False)


def _rate_key(p: Path) -> float:
    try:
        return float(p.name.removeprefix("rate-"))
    except ValueError:
        return float("inf")


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


@bench.command()
@click.option("-f", "--file", "files", multiple=True, required=True, help="Fleet spec file(s).")
@click.option("--model", "model_name", default=None, help="The fleet's model to plan (first).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option(
    "--replicas",
    default=None,
    help="Engine counts to try: N, A-B or N1,N2 (default: the autoscaling bounds, else 1 to "
    "twice the spec's replicas).",
)
@click.option(
    "--policy", "policies", multiple=True, help="Routing policy to try (repeat; default: spec's)."
)
@click.option("--profile", default=None, help="Simulator latency profile (default: spec's sim).")
@click.option("--ttft-p99", type=float, default=None, help="Target: p99 TTFT below this (s).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Result directory.")
@_workload_options
def plan(
    files: tuple[str, ...],
    model_name: str | None,
    rate: float,
    duration: float,
    replicas: str | None,
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
    v = model.vllm
    n = int(rate * duration * 1.2) + 16  # Poisson counts rarely exceed the mean by 20%
    try:
        config = SchedulerConfig(
            max_num_seqs=v.max_num_seqs or 256,
            max_num_batched_tokens=v.max_num_batched_tokens or 8192,
            max_model_len=v.max_model_len or 4096,
            enable_prefix_caching=v.enable_prefix_caching is not False,
        )
        spec = _spec(workload, min(n, workloads.MAX_REQUESTS), seed, trace_file, **kw)
        reqs = workloads.generate(spec)
        if workload == "trace":
            offsets = [r.at or 0.0 for r in reqs]
        else:
            offsets = workloads.poisson_offsets(len(reqs), rate, seed)
        keep = [i for i, t in enumerate(offsets) if t < duration]
        reqs = [reqs[i] for i in keep]
        offsets = [offsets[i] for i in keep]
        rows = planner.capacity(
            reqs,
            offsets,
            counts,
            chosen,
            config,
            PROFILES[prof_name],
            Slo(slo_ttft, slo_itl),
            ttft_p99,
        )
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    result = {
        "fleet": fleet.name,
        "model": model.name,
        "profile": prof_name,
        "workload": workload,
        "workload_params": _spec_params(spec),
        "rate": rate,
        "duration_s": duration,
        "requests": len(reqs),
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
