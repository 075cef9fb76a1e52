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
from pathlib import Path
from typing import Any

import click

from vfleet.bench import plots, report, runner, workloads
from vfleet.bench.options import NO_PLOTS, spec_params, workload_options, workload_spec
from vfleet.bench.plancmd import plan
from vfleet.bench.stats import Slo

API_KEY_ENV = "VFLEET_BENCH_API_KEY"
DURATION_POOL = 1000  # requests generated for a duration-only run (then cycled)


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


@bench.command()
@click.option("--url", required=True, help="Base URL of the endpoint (http://HOST:PORT).")
@click.option("--model", required=True, help="Model name sent in each request.")
@click.option("--rate", default=None, help="Open-loop Poisson requests/s; R1,R2,... sweeps.")
@click.option("--concurrency", type=click.IntRange(1, 100_000), default=None)
@click.option("--requests", "num_requests", type=click.IntRange(1, workloads.MAX_REQUESTS))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Result directory.")
@workload_options
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
        spec = workload_spec(
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
            "workload_params": spec_params(spec),
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
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw the runs (TTFT and ITL CDFs, throughput) into this PNG file.",
)
def compare(dirs: tuple[str, ...], plot_file: str | None) -> None:
    """Lay the summaries of several runs side by side, with ratios to the first.

    A sweep's directory stands for its rates (rate-*/ inside it)."""
    names: list[str] = []
    paths: list[Path] = []
    for d in dirs:
        path = Path(d)
        subs = sorted(path.glob("rate-*"), key=_rate_key)
        if not (path / "summary.json").exists() and subs:
            for sub in subs:
                names.append(f"{path.name}/{sub.name}")
                paths.append(sub)
        else:
            names.append(path.name or d)
            paths.append(path)
    summaries = [_load_summary(p) for p in paths]
    click.echo(report.compare_table(names, summaries), nl=False)
    if plot_file is None:
        return
    if not plots.available():
        raise click.ClickException(NO_PLOTS.removeprefix("vfleet bench: "))
    ttfts, itls = zip(*(_latencies(p) for p in paths), strict=True)
    try:
        plots.compare(names, summaries, ttfts, itls, Path(plot_file))
    except OSError as exc:
        raise click.ClickException(f"cannot write {plot_file}: {exc}") from None


def _latencies(path: Path) -> tuple[list[float], list[float]]:
    """TTFTs and inter-token gaps of a run's successful requests (none if it kept no records)."""
    ttft: list[float] = []
    itl: list[float] = []
    try:
        with open(path / "requests.jsonl", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("ok") and rec.get("ttft") is not None:
                    ttft.append(float(rec["ttft"]))
                    itl.extend(float(x) for x in rec.get("itl") or ())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}/requests.jsonl: {exc}") from None
    return ttft, itl


def _rate_key(p: Path) -> float:
    try:
        return float(p.name.removeprefix("rate-"))
    except ValueError:
        return float("inf")


bench.add_command(plan)
