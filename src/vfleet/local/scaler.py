"""Local autoscaling without I/O: what the router's demand and the engines' load say, which
engine slots to start or drain for a desired count, and the record `vfleet status` shows.

The decision itself is `vfleet.autoscale.Autoscaler` (shared with Kubernetes); this module feeds
it samples built from plain data and turns its answer into slot changes. The asyncio shell that
fetches the data and starts or drains engines is `local.elastic` and the supervisor.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vfleet.autoscale import Autoscaler, Decision, Sample, ScalePolicy
from vfleet.local import ttft

HISTORY = 20  # desired-count changes kept for `vfleet status`


@dataclass(frozen=True, slots=True)
class Demand:
    """The router's view of one model, summed over its served names and router workers."""

    inflight: int = 0
    held: int = 0
    requests: int = 0

    @property
    def concurrency(self) -> int:
        return self.inflight + self.held


def demand_of(doc: Mapping[str, Any], names: Iterable[str]) -> Demand:
    """A model's demand from the router's `GET /vfleet/demand` answer (names it lacks count 0)."""
    models = doc.get("models")
    rows = models if isinstance(models, dict) else {}
    inflight = held = requests = 0
    for name in names:
        row = rows.get(name)
        if isinstance(row, dict):
            inflight += _int(row.get("inflight"))
            held += _int(row.get("held"))
            requests += _int(row.get("requests"))
    return Demand(inflight, held, requests)


def routed(doc: Mapping[str, Any]) -> dict[str, int]:
    """Engine URLs the router still routes to or has requests in flight to, with how many."""
    eps = doc.get("endpoints")
    if not isinstance(eps, dict):
        return {}
    return {str(url).rstrip("/"): _int(n) for url, n in eps.items()}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else 0


@dataclass(frozen=True, slots=True)
class Load:
    """One ready engine's load from its /metrics."""

    running: int
    waiting: int
    kv_usage: float
    url: str = ""
    ttft: Mapping[float, float] = field(default_factory=dict)  # cumulative TTFT buckets


def make_sample(
    t: float, demand: Demand, loads: Sequence[Load], ready: int, ttft_p90_s: float | None = None
) -> Sample:
    kv = sum(x.kv_usage for x in loads) / len(loads) if loads else 0.0
    return Sample(
        t=t,
        concurrency=float(demand.concurrency),
        requests=demand.requests,
        ready=ready,
        running=sum(x.running for x in loads),
        waiting=sum(x.waiting for x in loads),
        kv_usage=kv,
        ttft_p90_s=ttft_p90_s,
    )


# -- slots --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotView:
    """What slot choice needs to know about one engine slot of a model."""

    key: str
    replica: int
    wanted: bool  # the fleet wants it running (starting, healthy or restarting)
    healthy: bool
    busy: bool  # not wanted, but still draining or stopping: not free to start yet


def pick(slots: Sequence[SlotView], desired: int) -> tuple[list[str], list[str]]:
    """(slots to start, slots to drain) so that `desired` slots are wanted. Starts take the
    lowest free replicas; drains take slots that serve nothing yet before ready ones, and the
    highest replica first, so replica 0 is the last to go."""
    wanted = [s for s in slots if s.wanted]
    if desired > len(wanted):
        free = sorted((s for s in slots if not s.wanted and not s.busy), key=lambda s: s.replica)
        return [s.key for s in free[: desired - len(wanted)]], []
    if desired < len(wanted):
        order = sorted(wanted, key=lambda s: (s.healthy, -s.replica))
        return [], [s.key for s in order[: len(wanted) - desired]]
    return [], []


# -- per-model record ---------------------------------------------------------------------------


@dataclass
class ModelScaler:
    """One autoscaled model: its Autoscaler, when it is next due, and its decision record."""

    name: str
    names: tuple[str, ...]  # served names and adapters: the router's demand keys
    policy: ScalePolicy
    desired: int
    autoscaler: Autoscaler = field(init=False)
    reason: str = "start: minReplicas"
    panic: bool = False
    decided_at: float | None = None  # wall clock of the last observation
    changed_at: float | None = None  # wall clock of the last change of `desired`
    changes: int = 0
    due_at: float = 0.0  # monotonic: when the next observation is due
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    ttft_seen: dict[str, Mapping[float, float]] = field(default_factory=dict)  # url -> buckets

    def ttft_p90(self, loads: Sequence[Load]) -> float | None:
        """p90 TTFT of the requests the engines finished since the last look (None: none)."""
        fresh = [ttft.increase(self.ttft_seen.get(x.url), x.ttft) for x in loads if x.ttft]
        # Engines that are gone are forgotten (the table stays as large as the live slots).
        self.ttft_seen = {x.url: x.ttft for x in loads if x.ttft}
        return ttft.quantile(0.9, ttft.combined(fresh))

    def __post_init__(self) -> None:
        self.autoscaler = Autoscaler(self.policy)

    def observe(self, sample: Sample, current: int, wall: float) -> Decision:
        """Feed one sample; record the decision (a change of `desired` is a scale event)."""
        decision = self.autoscaler.observe(sample, current)
        self.decided_at = wall
        self.due_at = sample.t + self.policy.period_s
        self.reason, self.panic = decision.reason, decision.panic
        if decision.desired != self.desired:
            self.changes += 1
            self.changed_at = wall
            self.history.append(
                {"t": wall, "from": self.desired, "to": decision.desired, "reason": decision.reason}
            )
            self.desired = decision.desired
        return decision

    def row(self) -> dict[str, Any]:
        p = self.policy
        return {
            "autoscaling": {
                "min": p.min_replicas,
                "max": p.max_replicas,
                "metric": p.metric,
                "target": p.target,
            },
            "desired": self.desired,
            "decision": self.reason,
            "panic": self.panic,
            "decided": self.decided_at,
            "changed": self.changed_at,
            "changes": self.changes,
            "history": list(self.history),
        }


def next_wait(scalers: Iterable[ModelScaler], now: float) -> float:
    """Seconds until the first model is due for an observation (0 when one is due now)."""
    return max(0.0, min((s.due_at for s in scalers), default=math.inf) - now)
