"""What the autoscaler reads and returns: the policy, one load sample, one decision.

Plain frozen data: the supervisor (or any loop) builds a `ScalePolicy` once from the fleet spec
with `policy_for`, takes a `Sample` every `period_s` and acts on the `Decision`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from vfleet.fleetspec.models import Autoscaling

Metric = Literal["concurrency", "rps", "waiting", "kv_cache"]


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """Knative KPA's knobs; every duration is in seconds on the caller's clock."""

    min_replicas: int = 1
    max_replicas: int | None = None  # None: unbounded (the caller caps it)
    metric: Metric = "concurrency"
    target: float = 32.0  # per replica, in the metric's unit (kv_cache: a fraction, 0..1)
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0  # panic when the panic-window desire >= 2x ready replicas
    scale_down_delay_s: float = 0.0  # scale down only after wanting less for this long
    scale_to_zero_grace_s: float = 30.0  # no demand at all for this long before 0
    max_scale_up_rate: float = 1000.0  # at most ceil(current x rate) in one step
    max_scale_down_rate: float = 2.0  # at least floor(current / rate) in one step
    ttft_p90_s: float | None = None  # also add replicas while p90 TTFT is above this
    kv_usage: float | None = None  # also keep mean KV usage per replica under this (0..1]
    period_s: float = 2.0  # how often the caller should call observe()

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("bad scale policy: " + "; ".join(problems))


def _problems(p: ScalePolicy) -> list[str]:
    checks = [
        (p.min_replicas >= 0, f"min_replicas {p.min_replicas} < 0"),
        (
            p.max_replicas is None or p.max_replicas >= max(p.min_replicas, 1),
            f"max_replicas {p.max_replicas} below max(min_replicas, 1)",
        ),
        (p.target > 0, f"target {p.target} <= 0"),
        (p.metric != "kv_cache" or p.target <= 1, "kv_cache target must be a fraction (0, 1]"),
        (0 < p.panic_window_s <= p.stable_window_s, "need 0 < panic_window_s <= stable_window_s"),
        (p.panic_threshold > 0, "panic_threshold <= 0"),
        (p.scale_down_delay_s >= 0 and p.scale_to_zero_grace_s >= 0, "negative delay"),
        (p.max_scale_up_rate > 1 and p.max_scale_down_rate > 1, "scale rates must be > 1"),
        (p.ttft_p90_s is None or p.ttft_p90_s > 0, "ttft_p90_s <= 0"),
        (p.kv_usage is None or 0 < p.kv_usage <= 1, "kv_usage must be in (0, 1]"),
        (p.period_s > 0, "period_s <= 0"),
    ]
    return [message for ok, message in checks if not ok]


@dataclass(frozen=True, slots=True)
class Sample:
    """The load of one model at one moment, summed over routers and engines."""

    t: float  # seconds on the caller's clock (monotonic)
    concurrency: float  # router in-flight + held requests for the model (all workers)
    requests: int  # cumulative requests the router received for the model (for rps)
    ready: int  # replicas ready now
    running: int = 0  # engines' vllm:num_requests_running (sum)
    waiting: int = 0  # engines' vllm:num_requests_waiting (sum)
    kv_usage: float = 0.0  # mean vllm:kv_cache_usage_perc over ready replicas, 0..1
    ttft_p90_s: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: str  # one short human line, e.g. "panic: 96 in flight >= 2x 1 ready -> 3"
    panic: bool = False


def policy_for(auto: Autoscaling, cap: int) -> ScalePolicy:
    """The policy of a model's spec; `cap` bounds an unbounded (or larger) maxReplicas.

    minReplicas above the cap is lowered to it: the caller cannot run more than `cap`.
    kv_cache targets above 1 are read as percent (80 -> 0.8).
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1 (got {cap})")
    hi = min(auto.max_replicas or cap, cap)
    target = auto.target
    if auto.metric == "kv_cache" and target > 1:
        target = target / 100
    return ScalePolicy(
        min_replicas=min(auto.min_replicas, hi),
        max_replicas=hi,
        metric=auto.metric,
        target=target,
        stable_window_s=auto.stable_window_s,
        panic_window_s=auto.panic_window_s,
        panic_threshold=auto.panic_threshold,
        scale_down_delay_s=auto.scale_down_delay_s,
        scale_to_zero_grace_s=auto.scale_to_zero_grace_s,
        max_scale_up_rate=auto.max_scale_up_rate,
        max_scale_down_rate=auto.max_scale_down_rate,
        ttft_p90_s=auto.ttft_p90_s,
        kv_usage=auto.kv_usage_target,
    )


def replicas_for(value: float, target: float) -> int:
    """ceil(value / target), forgiving float noise (96 / 32 is 3, not 4)."""
    return max(0, math.ceil(value / target - 1e-9))
