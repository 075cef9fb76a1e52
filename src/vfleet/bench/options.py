"""Command-line pieces `vfleet bench run` and `plan` share: the workload options and the
workload spec built from them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from vfleet.bench import workloads

NO_PLOTS = "vfleet bench: no plots: matplotlib is not installed (pip install 'vfleet[bench]')"


def workload_options(f: Callable[..., None]) -> Callable[..., None]:
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


def workload_spec(
    workload: str, num_requests: int, seed: int, trace_file: str | None, **kw: Any
) -> workloads.WorkloadSpec:
    if (workload == "trace") != (trace_file is not None):
        raise click.UsageError("--trace FILE goes with --workload trace, and only with it")
    trace: tuple[dict[str, Any], ...] = ()
    if trace_file is not None:
        with open(trace_file, encoding="utf-8") as f:
            trace = workloads.parse_trace(f)
    return workloads.WorkloadSpec(workload, num_requests, seed, trace=trace, **kw)


def spec_params(spec: workloads.WorkloadSpec) -> dict[str, Any]:
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
