"""Capacity planning in virtual time: a workload through N simulated engines behind a real
routing policy, with no sockets and no clock (pure).

Each engine is the simulator's own scheduler core (`sim.scheduler`) with a latency profile; the
router is one of `router.policies`' policy objects, shown the same `EndpointState` snapshots the
live router builds (requests in flight from the router, the engine's running and waiting queues,
its KV-cache use). Engines advance step by step; an arrival is routed at its time and joins its
engine's queue at the first step that starts after it clears the API server's overhead, exactly
as `sim.virtual` does for one engine.

Engines packed onto one GPU time-slice it (as CUDA does for processes without MPS): a step is
stretched by one plus the number of the GPU's other engines busy when it starts, the model of
`sim.gpushare.stretch`, which the live sim engines of one GPU (`vfleet sim --shared-gpu`) call
too. Measured on an H200 (issue 12), one 0.35B engine decoded at a TPOT of 2.6 ms alone and
8-14 ms with four engines busy on the GPU: four times the alone step, with no fitted constant.

Load is open-loop (arrival times given; a multi-round request also waits for its previous
round) or closed-loop (C requests in flight: each finish sends the next request). Pooling
requests (embeddings, rerank) are prefill-only sequences, one per input or document, as the
simulator serves them; the request ends with its last sequence.

Steps are events in a heap keyed by start time, stretches of pure decoding are decided in one
go (`_DecodeRun`, the timings of stepping one at a time), and only the KV blocks another
sequence could share are hashed (`hash_limits`: the same timings as hashing every block): an
hour of traffic for 16 engines plans in well under a minute (docs/bench.md, "How fast").

Modelled: batching, chunked prefill, the KV cache and prefix caching, preemption, the policy's
choices, GPU sharing. Not modelled: the router's own latency and its metrics scrape interval
(snapshots here are exact, the live router's are up to one poll old), network time.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from vfleet.bench.sharing import SharedHashes, hash_limits, texts
from vfleet.bench.stats import Record, Slo, percentile, summarize
from vfleet.bench.workloads import MAX_REQUESTS, BenchRequest, nth
from vfleet.router.policies import Field, make_policy, prefix_hashes
from vfleet.router.state import EndpointState, RouteKey
from vfleet.sim import tokenizer
from vfleet.sim.profiles import LatencyProfile
from vfleet.sim.scheduler import HASH_ALL, Scheduler, SchedulerConfig
from vfleet.sim.scheduler import Sequence as Seq
from vfleet.sim.timeslice import BUSY, stretch

MAX_ENGINES = 1024
INF = float("inf")


@dataclass(slots=True)
class _Engine:
    index: int
    url: str
    sched: Scheduler
    peers: list[_Engine]  # the other engines on its GPU
    clock: float = 0.0  # when this engine's step in progress ends (the next may start)
    admit: list[tuple[float, int, Seq]] = field(default_factory=list)  # heap: schedulable at
    routed: int = 0  # requests routed here and not finished (the router's in-flight count)
    version: int = 0  # bumped whenever `ready()` may have changed (stale heap entries)
    run: _DecodeRun | None = None  # decode steps decided but not yet applied

    def snapshot(self) -> EndpointState:
        """What the router sees of this engine now."""
        sched = self.sched
        return EndpointState(
            self.url,
            True,
            inflight=self.routed,
            running=len(sched.running),
            waiting=len(sched.waiting) + len(self.admit),
            kv_usage=sched.pool.usage,
        )

    def ready(self) -> float:
        """When this engine next wants to step (inf: nothing to do)."""
        if self.sched.has_work:
            return self.clock
        if self.admit:
            return max(self.clock, self.admit[0][0])
        return INF

    def busy_until(self, t: float) -> float:
        """Until when this engine is busy on its GPU, seen at `t` (`sim.gpushare.stretch`): in
        a step until it ends, and for good while it has work (an admission due by `t` counts:
        the live engine has queued it by then)."""
        if self.sched.has_work or (self.admit and self.admit[0][0] <= t):
            return BUSY
        return self.clock


@dataclass(slots=True)
class _DecodeRun:
    """`steps` back-to-back decode steps from `start`, decided at once and applied lazily.

    When an engine has nothing waiting, every running sequence is past its prompt and none
    finishes within the next `steps` steps, those steps are fully determined: each schedules
    one token per sequence, their durations follow from the profile, and nothing the router
    sees changes (running and waiting counts stay; only the KV use creeps up by a few blocks,
    which policies read as a tie-breaker). Stepping such stretches one at a time was most of a
    long plan's cost; applying them in one go gives the same timings to the bit (the same
    float operations in the same order). An admission inside the stretch cuts it: the steps
    that start before the new sequence is schedulable are applied, the rest are not taken."""

    start: float
    ends: list[float]  # when each step ends (the next starts), summed as the engine would

    @property
    def steps(self) -> int:
        return len(self.ends)

    @property
    def end(self) -> float:
        return self.ends[-1]

    def steps_before(self, x: float) -> tuple[int, float]:
        """How many steps start before `x`, and when the first step not taken would start."""
        if self.start >= x:
            return 0, self.start
        j = bisect.bisect_left(self.ends, x) + 1  # step i > 0 starts when step i-1 ends
        j = min(j, len(self.ends))
        return j, self.ends[j - 1]

    def truncate(self, steps: int) -> None:
        del self.ends[steps:]


MIN_RUN = 2  # shorter stretches step normally (a run costs more bookkeeping than one step)


def _decode_run(sched: Scheduler, t: float) -> _DecodeRun | None:
    """The decode stretch `sched` would run from `t`, or None when the next step is not one."""
    if sched.waiting or not sched.running:
        return None
    cfg = sched.config
    running = sched.running
    n = len(running)
    if n > cfg.max_num_batched_tokens:
        return None
    steps = 1 << 62
    computed = 0
    need = 0
    bs = cfg.block_size
    for seq in running:
        # decoding: the prompt computed and a token out (a prompt chunked to its last token
        # still has that token to prefill, and its first token to time)
        if (
            seq.n_out == 0
            or seq.num_computed != seq.num_tokens - 1
            or seq.stop
            or seq.eos_after is not None
        ):
            return None
        steps = min(steps, seq.out_limit - seq.n_out - 1)  # the finishing step runs alone
        computed += seq.num_computed
    if steps < MIN_RUN:
        return None
    for seq in running:  # blocks for every token the stretch computes: none may be preempted
        need += max(0, -(-(seq.num_computed + steps) // bs) - len(seq.blocks))
    if need > sched.pool.num_free:
        return None
    return _DecodeRun(t, sched.profile.decode_ends(t, n, n + computed, steps))


def _apply_run(sched: Scheduler, steps: int, done_at: float) -> None:
    """Apply the first `steps` steps of a decode run that ends its last step at `done_at`:
    what `Scheduler.step` would have left after stepping them one by one. It uses the
    scheduler's own block bookkeeping (`_extend_hashes`, `_cache_full_blocks`) so that hashes
    and cached blocks come out as stepping makes them; a test holds the two paths equal."""
    if steps == 0:
        return
    bs = sched.config.block_size
    pool = sched.pool
    for seq in sched.running:
        seq.num_computed += steps
        seq.n_out += steps
        seq.num_tokens += steps
        need = -(-seq.num_computed // bs) - len(seq.blocks)
        if need > 0:
            got = pool.allocate(need)
            assert got is not None  # checked when the run was decided
            seq.blocks.extend(got)
        sched._extend_hashes(seq)
        sched._cache_full_blocks(seq)
        seq.last_token_at = done_at
    sched._prev_done_at = done_at


@dataclass(slots=True)
class _Request:
    """A request in flight: its sequences (one for a completion), and how many are done."""

    index: int
    arrival: float
    seqs: list[Seq]
    done: int = 0
    finished_at: float = 0.0


@dataclass(frozen=True, slots=True)
class PlanResult:
    records: list[Record]
    duration_s: float  # virtual seconds from the first arrival to the last finish
    per_engine: list[int]  # requests routed to each engine
    routed_to: list[int]  # the engine of each record


class _Fleet:
    """The event loop: arrivals, engine steps in start-time order, request completions."""

    def __init__(
        self,
        requests: Sequence[BenchRequest],
        engines: int,
        config: SchedulerConfig,
        profile: LatencyProfile,
        policy: str,
        model: str,
        engines_per_gpu: int,
    ) -> None:
        self.requests = requests
        self.chooser = make_policy(policy)
        self.model = model
        self.overhead = profile.request_overhead_s
        # decode stretches in one go; not on shared GPUs, whose steps interleave across engines
        self.fast = engines_per_gpu == 1
        self.fleet = [
            _Engine(i, f"sim://{i:04d}", Scheduler(config, profile, record_events=False), [])
            for i in range(engines)
        ]
        for e in self.fleet:
            first = e.index - e.index % engines_per_gpu
            gpu = self.fleet[first : first + engines_per_gpu]
            e.peers.extend(p for p in gpu if p is not e)
        self.steps: list[tuple[float, int, int]] = []  # (start, engine, version)
        self.arrivals: list[tuple[float, int]] = []  # heap of (time, request index)
        # ids others wait on, without the `#cycle` suffix a cycled workload adds
        self.waits_on = {r.after for r in requests if r.after}
        self.blocked: dict[str, list[tuple[float, int]]] = {}  # id -> waiting for its finish
        self.finished_ids: set[str] = set()  # of `waits_on`, those finished
        self.live: dict[int, _Request] = {}  # id(seq) -> its request
        # finished requests as (arrival, index, record, engine): a record is made at the finish
        # and the sequences dropped, so an hour of traffic does not hold every prompt's tokens
        # and block hashes to the end (holding them made a long plan slower by the hour)
        self.done: list[tuple[float, int, Record, int]] = []
        self.per_engine = [0] * engines
        # What the router sees, kept up to date incrementally: an engine's snapshot is rebuilt
        # only when it may have changed (it stepped, was routed to, or a request of it
        # finished), not for every engine at every arrival
        self.snaps = [e.snapshot() for e in self.fleet]
        self.dirty: set[int] = set()
        self.by_url = {e.url: e for e in self.fleet}
        self.finishing: list[tuple[float, int]] = []  # heap: (finish time, engine)
        self.tie = 0
        # closed loop: the next request index a finishing "worker" sends; -1 for open loop
        self.next_index = -1
        self.stop_at = INF
        self.limit = len(requests)
        self.hash_blocks: Sequence[tuple[int, ...]] = ()  # per request (`hash_limits`); () all
        self.shared = SharedHashes(config.block_size)

    # -- arrivals -------------------------------------------------------------------------

    def release(self, at: float, i: int) -> None:
        """Request i may be sent at `at`, once the request it comes after has finished."""
        after = self._request(i).after
        if after is not None and after not in self.finished_ids:
            self.blocked.setdefault(after, []).append((at, i))
        else:
            heapq.heappush(self.arrivals, (at, i))

    def _request(self, i: int) -> BenchRequest:
        return self.requests[i] if i < len(self.requests) else nth(self.requests, i)

    def route(self, at: float, i: int) -> None:
        req = self._request(i)
        snaps, dirty, fleet, finishing = self.snaps, self.dirty, self.fleet, self.finishing
        while finishing and finishing[0][0] <= at:  # the router saw those responses end
            j = heapq.heappop(finishing)[1]
            fleet[j].routed -= 1
            dirty.add(j)
        for j in dirty:
            snaps[j] = fleet[j].snapshot()
        dirty.clear()
        needs = self.chooser.needs
        # only what the policy reads, as the live router does (hashing prompts costs time)
        key = RouteKey(
            self.model,
            session=req.session if Field.SESSION in needs else None,
            prefix=prefix_hashes(req.prompt, model=self.model) if Field.PREFIX in needs else (),
        )
        chosen = self.chooser.choose(snaps, key)
        assert chosen is not None  # every simulated engine is healthy
        eng = self.by_url[chosen.url]
        self.per_engine[eng.index] += 1
        hb = self.hash_blocks
        hashes = hb[i] if i < len(hb) else None
        live = _Request(i, at, _sequences(req, at, hashes, self.shared))
        for seq in live.seqs:
            self.live[id(seq)] = live
            self.tie += 1
            heapq.heappush(eng.admit, (at + self.overhead, self.tie, seq))
        eng.routed += 1
        if eng.run is not None:
            self.cut(eng, at + self.overhead)
        self.reschedule(eng)

    def cut(self, eng: _Engine, x: float) -> None:
        """End `eng`'s decode run at the first step starting at or after `x`."""
        run = eng.run
        assert run is not None
        j, t = run.steps_before(x)
        _apply_run(eng.sched, j, t)
        eng.clock = t
        eng.run = None

    # -- engine steps ---------------------------------------------------------------------

    def reschedule(self, eng: _Engine) -> None:
        eng.version += 1
        self.dirty.add(eng.index)
        ready = eng.ready()
        if ready < INF:
            heapq.heappush(self.steps, (ready, eng.index, eng.version))

    def next_step(self) -> tuple[float, _Engine | None]:
        """The engine whose step starts first, and when (dropping stale heap entries)."""
        steps = self.steps
        while steps:
            start, i, version = steps[0]
            eng = self.fleet[i]
            if version != eng.version:
                heapq.heappop(steps)
                continue
            return start, eng
        return INF, None

    def step(self, eng: _Engine, t: float) -> None:
        heapq.heappop(self.steps)
        if eng.run is not None:  # a decode run ends now, uncut
            _apply_run(eng.sched, eng.run.steps, eng.run.end)
            eng.run = None
        while eng.admit and eng.admit[0][0] <= t:
            _, _, seq = heapq.heappop(eng.admit)
            eng.sched.add(seq, seq.arrival + self.overhead)
        if self.fast:
            run = _decode_run(eng.sched, t)
            if run is not None and eng.admit:  # stop where an admission already due joins
                run.truncate(run.steps_before(eng.admit[0][0])[0])
                if run.steps < MIN_RUN:
                    run = None
            if run is not None:
                eng.run = run
                eng.clock = run.end
                self.reschedule(eng)
                return
        # steps of engines sharing a GPU are processed in start order, so every peer's state
        # at `t` is known here
        slow = stretch(t, (p.busy_until(t) for p in eng.peers)) if eng.peers else 1
        out = eng.sched.step(t, slow)
        eng.clock = t + out.duration_s
        for seq in out.finished:
            assert seq.finished_at is not None
            req = self.live.pop(id(seq))
            req.done += 1
            if req.done == len(req.seqs):
                req.finished_at = seq.finished_at
                self.finish(req, eng)
        self.reschedule(eng)

    def finish(self, req: _Request, eng: _Engine) -> None:
        heapq.heappush(self.finishing, (req.finished_at, eng.index))
        self.done.append(
            (req.arrival, req.index, _record(self._request(req.index), req), eng.index)
        )
        rid = self._request(req.index).id
        if rid.split("#", 1)[0] in self.waits_on:
            self.finished_ids.add(rid)
            for at, j in self.blocked.pop(rid, ()):
                heapq.heappush(self.arrivals, (max(at, req.finished_at), j))
        if 0 <= self.next_index < self.limit and req.finished_at < self.stop_at:
            self.release(req.finished_at, self.next_index)
            self.next_index += 1

    def run(self) -> None:
        while True:
            t_step, eng = self.next_step()
            t_arr = self.arrivals[0][0] if self.arrivals else INF
            if eng is None and t_arr == INF:
                return
            if t_arr <= t_step:
                at, i = heapq.heappop(self.arrivals)
                self.route(at, i)
            else:
                assert eng is not None
                self.step(eng, t_step)


def _sequences(
    req: BenchRequest, at: float, hash_blocks: tuple[int, ...] | None, shared: SharedHashes
) -> list[Seq]:
    """The engine sequences of one request, as the simulator's server makes them, each
    hashing `hash_blocks` blocks (None: all)."""
    prompts = texts(req)
    hb = hash_blocks or (HASH_ALL,) * len(prompts)
    out = req.max_tokens if req.kind == "completion" else 0  # pooling: prefill only
    seqs = []
    for t, h in zip(prompts, hb, strict=True):
        seq = Seq(tokenizer.encode(t), out, at, hash_blocks=h)
        if 0 < h < HASH_ALL and t.isascii():
            seq.hashes = list(shared.of(t, h))  # a copy: the scheduler extends it
        seqs.append(seq)
    return seqs


def simulate_fleet(
    requests: Sequence[BenchRequest],
    offsets: Sequence[float],
    engines: int,
    config: SchedulerConfig,
    profile: LatencyProfile,
    policy: str,
    model: str = "model",
    *,
    engines_per_gpu: int = 1,
    concurrency: int | None = None,
    num_requests: int | None = None,
    duration_s: float | None = None,
    one_step_at_a_time: bool = False,
    hashes: Sequence[tuple[int, ...]] | None = None,
    hash_every_block: bool = False,
) -> PlanResult:
    """Run `requests` through `engines` engines behind `policy`, `engines_per_gpu` to a GPU.

    Open loop (`concurrency` None): request i arrives at `offsets[i]` (seconds), a request with
    `after` no earlier than that request's finish. Closed loop: `concurrency` requests start at
    0 and each finish sends the next (the workload cycles, ids getting `#1`, `#2`, ...), until
    `num_requests` were sent or, with `duration_s`, no new request starts after it.
    `hashes` is `hash_limits(requests, config.block_size)` when the caller has it (it is
    computed otherwise). `one_step_at_a_time` turns off decode runs (`_DecodeRun`) and
    `hash_every_block` the hashing of only what can be shared (`hash_limits`), to check them."""
    if not 1 <= engines <= MAX_ENGINES:
        raise ValueError(f"engines must be 1..{MAX_ENGINES}")
    if engines_per_gpu < 1:
        raise ValueError("engines per GPU must be >= 1")
    if not requests:
        raise ValueError("empty workload")
    sim = _Fleet(requests, engines, config, profile, policy, model, engines_per_gpu)
    sim.fast = sim.fast and not one_step_at_a_time
    if concurrency is None:
        if len(offsets) != len(requests):
            raise ValueError("one offset per request")
        for i, at in enumerate(offsets):
            sim.release(at, i)
    else:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if num_requests is None and duration_s is None:
            raise ValueError("a closed loop needs a number of requests or a duration")
        sim.limit = min(num_requests or MAX_REQUESTS, MAX_REQUESTS)
        sim.stop_at = duration_s if duration_s is not None else INF
        first = min(concurrency, sim.limit)
        for i in range(first):
            sim.release(0.0, i)
        sim.next_index = first
    if not hash_every_block and sim.limit <= len(requests):  # a cycled workload repeats prompts
        sim.hash_blocks = hashes if hashes is not None else hash_limits(requests, config.block_size)
    sim.run()
    done = sorted(sim.done, key=lambda d: (d[0], d[1]))
    records = [d[2] for d in done]
    first_at = min((r.sent for r in records), default=0.0)
    last = max((r.sent + (r.e2e or 0.0) for r in records), default=0.0)
    return PlanResult(records, last - first_at, sim.per_engine, [d[3] for d in done])


def _record(req: BenchRequest, r: _Request) -> Record:
    if req.kind != "completion":  # a pooling answer arrives whole
        e2e = r.finished_at - r.arrival
        tokens = sum(len(s.prompt) for s in r.seqs)
        return Record(req.id, req.kind, r.arrival, True, 200, "", e2e, e2e, [], tokens, 0, 0)
    s = r.seqs[0]
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


@dataclass(frozen=True, slots=True)
class PlanLoad:
    """How the planned traffic arrives: `offsets` (open loop, one per request) or
    `concurrency` (closed loop, ending after `num_requests` or at `duration_s`)."""

    offsets: Sequence[float] = ()
    concurrency: int | None = None
    num_requests: int | None = None
    duration_s: float | None = None


def capacity(
    requests: Sequence[BenchRequest],
    load: PlanLoad | Sequence[float],
    engine_counts: Sequence[int],
    policies: Sequence[str],
    config: SchedulerConfig,
    profile: LatencyProfile,
    slo: Slo,
    ttft_p99_s: float | None,
    engines_per_gpu: int = 1,
) -> list[CapacityRow]:
    """One simulated run per (policy, engine count); `meets_slo` when p99 TTFT is under
    `ttft_p99_s` (or no target given) and every request finished."""
    if not isinstance(load, PlanLoad):
        load = PlanLoad(offsets=load)
    hashes = hash_limits(requests, config.block_size)  # once for every run below
    rows = []
    for policy in policies:
        for n in engine_counts:
            res = simulate_fleet(
                requests,
                load.offsets,
                n,
                config,
                profile,
                policy,
                engines_per_gpu=engines_per_gpu,
                concurrency=load.concurrency,
                num_requests=load.num_requests,
                duration_s=load.duration_s,
                hashes=hashes,
            )
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
