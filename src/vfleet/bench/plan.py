"""Capacity planning in virtual time: a workload through N simulated engines behind a real
routing policy, with no sockets and no clock (pure).

Each engine is the simulator's own scheduler core (`sim.scheduler`) with a latency profile; the
router is one of `router.policies`' policy objects, shown the same `EndpointState` snapshots the
live router builds (requests in flight from the router, the engine's running and waiting queues,
its KV-cache use). Engines advance step by step; an arrival is routed at its time and joins its
engine's queue at the first step that starts after it clears the API server's overhead, exactly
as `sim.virtual` does for one engine.

Modelled: batching, chunked prefill, the KV cache and prefix caching, preemption, the policy's
choices. Not modelled (yet): engines sharing one GPU (each engine has its GPU to itself), the
router's own latency and its metrics scrape interval (snapshots here are exact, the live router's
are up to one poll old), network time.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from vfleet.bench.stats import Record, Slo, percentile, summarize
from vfleet.bench.workloads import BenchRequest
from vfleet.router.policies import Field, make_policy, prefix_hashes
from vfleet.router.state import EndpointState, RouteKey
from vfleet.sim import tokenizer
from vfleet.sim.profiles import LatencyProfile
from vfleet.sim.scheduler import Scheduler, SchedulerConfig
from vfleet.sim.scheduler import Sequence as Seq

MAX_ENGINES = 1024


@dataclass(slots=True)
class _Engine:
    url: str
    sched: Scheduler
    clock: float = 0.0  # when the step in progress ends (the next step may start)
    admit: list[tuple[float, int, Seq]] = field(default_factory=list)  # heap: schedulable at
    finishes: list[float] = field(default_factory=list)  # heap of finish times of routed seqs
    routed: int = 0

    def next_step(self) -> float:
        """When this engine next steps (inf: nothing to do)."""
        if self.sched.has_work:
            return self.clock
        if self.admit:
            return max(self.clock, self.admit[0][0])
        return float("inf")

    def inflight(self, now: float) -> int:
        while self.finishes and self.finishes[0] <= now:
            heapq.heappop(self.finishes)
            self.routed -= 1
        return self.routed


@dataclass(frozen=True, slots=True)
class PlanResult:
    records: list[Record]
    duration_s: float  # virtual seconds from the first arrival to the last finish
    per_engine: list[int]  # requests routed to each engine
    routed_to: list[int]  # the engine of each record


def simulate_fleet(
    requests: Sequence[BenchRequest],
    offsets: Sequence[float],
    engines: int,
    config: SchedulerConfig,
    profile: LatencyProfile,
    policy: str,
    model: str = "model",
) -> PlanResult:
    """Run completion `requests`, arriving at `offsets` (seconds; a request with `after` arrives
    no earlier than that request's finish), through `engines` engines behind `policy`."""
    if not 1 <= engines <= MAX_ENGINES:
        raise ValueError(f"engines must be 1..{MAX_ENGINES}")
    if len(offsets) != len(requests):
        raise ValueError("one offset per request")
    chooser = make_policy(policy)
    fleet = [
        _Engine(f"sim://{i:04d}", Scheduler(config, profile, record_events=False))
        for i in range(engines)
    ]
    overhead = profile.request_overhead_s
    waits_on = {r.after for r in requests if r.after}
    blocked: dict[str, list[tuple[float, int]]] = {}  # id -> requests waiting for its finish
    arrivals: list[tuple[float, int]] = []  # heap of (time, request index)
    for i, (r, at) in enumerate(zip(requests, offsets, strict=True)):
        if r.kind != "completion":
            raise ValueError("plan runs completion workloads only")
        if r.after is None:
            arrivals.append((at, i))
        else:
            blocked.setdefault(r.after, []).append((at, i))
    heapq.heapify(arrivals)
    seqs: list[Seq | None] = [None] * len(requests)
    engine_of = [0] * len(requests)
    seq_index: dict[int, int] = {}
    per_engine = [0] * engines
    tie = 0
    while True:
        nxt = min(fleet, key=_Engine.next_step)
        t_step = nxt.next_step()
        t_arr = arrivals[0][0] if arrivals else float("inf")
        if t_arr == float("inf") and t_step == float("inf"):
            break
        if t_arr <= t_step:
            at, i = heapq.heappop(arrivals)
            req = requests[i]
            snaps = [
                EndpointState(
                    e.url,
                    True,
                    inflight=e.inflight(at),
                    running=len(e.sched.running),
                    waiting=len(e.sched.waiting) + len(e.admit),
                    kv_usage=e.sched.pool.usage,
                )
                for e in fleet
            ]
            # only what the policy reads, as the live router does (hashing prompts costs time)
            key = RouteKey(
                model,
                session=req.session if Field.SESSION in chooser.needs else None,
                prefix=prefix_hashes(req.prompt) if Field.PREFIX in chooser.needs else (),
            )
            chosen = chooser.choose(snaps, key)
            assert chosen is not None  # every simulated engine is healthy
            e_i = int(chosen.url.rsplit("/", 1)[1])
            eng = fleet[e_i]
            per_engine[e_i] += 1
            engine_of[i] = e_i
            seq = Seq(tokenizer.encode(req.prompt), req.max_tokens, at, None)
            seqs[i] = seq
            seq_index[id(seq)] = i
            eng.routed += 1
            tie += 1
            heapq.heappush(eng.admit, (at + overhead, tie, seq))
            continue
        eng = nxt
        t = t_step
        while eng.admit and eng.admit[0][0] <= t:
            _, _, seq = heapq.heappop(eng.admit)
            eng.sched.add(seq, seq.arrival + overhead)
        out = eng.sched.step(t)
        eng.clock = t + out.duration_s
        for seq in out.finished:
            assert seq.finished_at is not None
            heapq.heappush(eng.finishes, seq.finished_at)
            i = seq_index.pop(id(seq))
            rid = requests[i].id
            if rid in waits_on:
                for at, j in blocked.pop(rid, ()):
                    heapq.heappush(arrivals, (max(at, seq.finished_at), j))
    records = [_record(requests[i], s) for i, s in enumerate(seqs) if s is not None]
    first = min((r.sent for r in records), default=0.0)
    last = max((r.sent + (r.e2e or 0.0) for r in records), default=0.0)
    routed = [engine_of[i] for i, s in enumerate(seqs) if s is not None]
    return PlanResult(records, last - first, per_engine, routed)


def _record(req: BenchRequest, s: Seq) -> Record:
    assert s.finished_at is not None
    first = s.first_token_at if s.first_token_at is not None else s.finished_at
    return Record(
        req.id,
        req.kind,
        s.arrival,
        ok=s.finish is not None and s.finish.value != "abort",
        status=200,
        ttft=first - s.arrival,
        e2e=s.finished_at - s.arrival,
        input_tokens=len(s.prompt),
        output_tokens=s.n_out,
        chunks=s.n_out,
    )


@dataclass(frozen=True, slots=True)
class CapacityRow:
    policy: str
    engines: int
    summary: dict[str, object]
    meets_slo: bool


def capacity(
    requests: Sequence[BenchRequest],
    offsets: Sequence[float],
    engine_counts: Sequence[int],
    policies: Sequence[str],
    config: SchedulerConfig,
    profile: LatencyProfile,
    slo: Slo,
    ttft_p99_s: float | None,
) -> list[CapacityRow]:
    """One simulated run per (policy, engine count); `meets_slo` when p99 TTFT is under
    `ttft_p99_s` (or no target given) and every request finished."""
    rows = []
    for policy in policies:
        for n in engine_counts:
            res = simulate_fleet(requests, offsets, n, config, profile, policy)
            s = summarize(res.records, res.duration_s, slo)
            p99 = percentile([r.ttft for r in res.records if r.ttft is not None], 99)
            meets = s["failed"] == 0 and (
                ttft_p99_s is None or (p99 is not None and p99 < ttft_p99_s)
            )
            rows.append(CapacityRow(policy, n, s, meets))
    return rows


def fewest(rows: Sequence[CapacityRow], policy: str) -> int | None:
    """The fewest engines meeting the SLO under `policy`, or None when no count tried does."""
    ok = [r.engines for r in rows if r.policy == policy and r.meets_slo]
    return min(ok) if ok else None
