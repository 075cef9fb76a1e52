"""Benchmark workloads: deterministic request lists generated from a seed (pure, no I/O).

A workload is a list of `BenchRequest`s. The same name, parameters and seed always give the same
requests (same ids, texts, lengths and order), so two runs, two systems or a live run and a plan
see identical traffic. Nothing is downloaded: texts are made of ASCII words from a fixed list.

Lengths are in tokens of the simulator's tokenizer (4 bytes a token, `sim.tokenizer`): a prompt of
N tokens is exactly 4*N ASCII characters, and a shared prefix is a whole number of tokens, so
equal prefixes stay equal token prefixes (prefix caching sees them). A real tokenizer counts
these texts differently (roughly the same order of magnitude); the per-request records keep the
server's own `usage` counts, which are what the statistics use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Kind = Literal["completion", "embedding", "rerank"]

CHARS_PER_TOKEN = 4
WORKLOADS = ("random", "shared-prefix", "multi-round", "embeddings", "rerank", "trace")
MAX_REQUESTS = 1_000_000  # a workload larger than this is a typo, not a benchmark
MAX_TRACE_LINE = 64 * 1024

_VOCABULARY = (
    "the of and to in is was for on as with by at from that this are be or an have not it "
    "which they one all were their has been more when there can who will would so if about "
    "into some other time than only its over also new after first two may these such used "
    "model fleet token engine router cache prefix batch queue decode prefill latency river "
    "stone cloud paper glass north light green table chair music water field house plant"
)
_WORDS = tuple(_VOCABULARY.split())
_SHORTEST = min(len(w) for w in _WORDS)


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request of a workload. `at` is its offset in seconds when the workload fixes it
    (trace replay); otherwise the load pattern (rate, concurrency) decides when it is sent."""

    id: str
    kind: Kind
    prompt: str  # completion prompt, embedding input or rerank query
    input_tokens: int  # intended prompt length (simulator tokens)
    max_tokens: int = 0  # completions: output length asked for (ignore_eos: exactly this)
    documents: tuple[str, ...] = ()  # rerank only
    group: int = 0  # shared-prefix group, trace prefix group
    user: int = 0
    round: int = 0
    after: str | None = None  # multi-round: send only once this request has finished
    at: float | None = None

    def body(self, model: str) -> dict[str, Any]:
        """The JSON body of this request for `model`."""
        if self.kind == "embedding":
            return {"model": model, "input": self.prompt}
        if self.kind == "rerank":
            return {"model": model, "query": self.prompt, "documents": list(self.documents)}
        return {
            "model": model,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            # what the session policy routes on; `plan` gives the policy the same key
            "user": self.session,
            "ignore_eos": True,  # exact output lengths, as vllm bench serve does
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    @property
    def session(self) -> str:
        return f"user-{self.group}-{self.user}"

    @property
    def path(self) -> str:
        return {"completion": "/v1/completions", "embedding": "/v1/embeddings"}.get(
            self.kind, "/v1/rerank"
        )


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Parameters of a generated workload; fields a workload does not use are ignored."""

    name: str
    num_requests: int
    seed: int = 0
    input_len: int = 256
    output_len: int = 64
    range_ratio: float = 0.0  # lengths uniform in [len*(1-r), len*(1+r)]
    groups: int = 4  # shared-prefix
    users: int = 8  # shared-prefix: users per group; multi-round: concurrent conversations
    prefix_len: int = 1024  # shared-prefix: system prompt tokens
    rounds: int = 4  # multi-round
    documents: int = 8  # rerank
    trace: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"unknown workload {self.name!r}; one of {', '.join(WORKLOADS)}")
        if self.name != "trace" and not 1 <= self.num_requests <= MAX_REQUESTS:
            raise ValueError(f"requests must be 1..{MAX_REQUESTS}")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError("range ratio must be in [0, 1)")
        for what in ("input_len", "output_len", "groups", "users", "rounds", "documents"):
            if getattr(self, what) < 1:
                raise ValueError(f"{what.replace('_', ' ')} must be at least 1")
        if self.prefix_len < 0:
            raise ValueError("prefix len must be >= 0")


def text(rng: random.Random, tokens: int) -> str:
    """ASCII text of exactly `tokens` simulator tokens (4*tokens characters)."""
    size = tokens * CHARS_PER_TOKEN
    # The text is `budget` words drawn at once (each is at least _SHORTEST characters and a
    # space, so they always suffice), joined and cut to size. Words past the cut are never
    # seen, and at 5 characters a word on average they are about 40% of the draws: draw only
    # what the cut keeps, then move the generator past the rest in one C call (a random()
    # draw consumes two 32-bit Mersenne Twister words, as getrandbits(64) does), so the text
    # and every later draw are exactly those of drawing all `budget` words
    # (tests/test_bench.py checks it against that). Generating prompts was a sixth of an
    # hour-long `vfleet bench plan`.
    budget = size // (_SHORTEST + 1) + 1
    words = rng.choices(_WORDS, k=min(budget, size // 5 + 1))
    out = " ".join(words)
    while len(out) < size:  # each round draws at most what the rest can take (<= budget)
        words += rng.choices(_WORDS, k=min(budget - len(words), (size - len(out)) // 5 + 1))
        out = " ".join(words)
    if len(words) < budget:
        rng.getrandbits(64 * (budget - len(words)))
    return out[:size]


def _length(rng: random.Random, mean: int, ratio: float) -> int:
    lo, hi = max(1, round(mean * (1 - ratio))), max(1, round(mean * (1 + ratio)))
    return rng.randint(lo, hi)


def generate(spec: WorkloadSpec) -> list[BenchRequest]:
    """The requests of `spec`, in send order."""
    rng = random.Random(spec.seed)
    make = {
        "random": _random,
        "shared-prefix": _shared_prefix,
        "multi-round": _multi_round,
        "embeddings": _embeddings,
        "rerank": _rerank,
        "trace": _trace,
    }[spec.name]
    return make(spec, rng)


def _random(spec: WorkloadSpec, rng: random.Random) -> list[BenchRequest]:
    out = []
    for i in range(spec.num_requests):
        n_in = _length(rng, spec.input_len, spec.range_ratio)
        n_out = _length(rng, spec.output_len, spec.range_ratio)
        out.append(BenchRequest(f"r{i}", "completion", text(rng, n_in), n_in, n_out, user=i))
    return out


def _shared_prefix(spec: WorkloadSpec, rng: random.Random) -> list[BenchRequest]:
    """G groups, each with a long system prompt of its own, and U users per group asking unique
    questions; requests visit users in a shuffled order so groups interleave, as real traffic
    does (and a prefix-aware router has something to gain)."""
    prefixes = [text(rng, spec.prefix_len) for _ in range(spec.groups)]
    pairs = [(g, u) for g in range(spec.groups) for u in range(spec.users)]
    out = []
    for i in range(spec.num_requests):
        if i % len(pairs) == 0:
            rng.shuffle(pairs)
        g, u = pairs[i % len(pairs)]
        n_q = _length(rng, spec.input_len, spec.range_ratio)
        n_out = _length(rng, spec.output_len, spec.range_ratio)
        prompt = prefixes[g] + text(rng, n_q)
        out.append(
            BenchRequest(
                f"g{g}u{u}r{i}", "completion", prompt, spec.prefix_len + n_q, n_out, group=g, user=u
            )
        )
    return out


def _multi_round(spec: WorkloadSpec, rng: random.Random) -> list[BenchRequest]:
    """U users hold conversations of R rounds; each round's prompt is the whole history (the
    earlier questions and answers) plus a new question, so prompts grow and the history is a
    cacheable prefix. Answers are placeholder texts of the asked output length, fixed by the seed:
    the server's real answers are not fed back, which keeps the workload deterministic. Round r+1
    of a user is sent only after round r finished (`after`). Requests are ordered round by round,
    users interleaved; `num_requests` caps the total (U*R at most)."""
    history = [text(rng, spec.input_len) for _ in range(spec.users)]  # each user's first context
    history_tokens = [spec.input_len] * spec.users
    out: list[BenchRequest] = []
    prev: list[str | None] = [None] * spec.users
    for r in range(spec.rounds):
        for u in range(spec.users):
            if len(out) >= spec.num_requests:
                return out
            n_q = _length(rng, max(1, spec.input_len // 4), spec.range_ratio)
            n_out = _length(rng, spec.output_len, spec.range_ratio)
            prompt = history[u] + text(rng, n_q)
            n_in = history_tokens[u] + n_q
            rid = f"u{u}r{r}"
            out.append(
                BenchRequest(rid, "completion", prompt, n_in, n_out, user=u, round=r, after=prev[u])
            )
            prev[u] = rid
            history[u] = prompt + text(rng, n_out)
            history_tokens[u] = n_in + n_out
    return out


def _embeddings(spec: WorkloadSpec, rng: random.Random) -> list[BenchRequest]:
    out = []
    for i in range(spec.num_requests):
        n_in = _length(rng, spec.input_len, spec.range_ratio)
        out.append(BenchRequest(f"e{i}", "embedding", text(rng, n_in), n_in))
    return out


def _rerank(spec: WorkloadSpec, rng: random.Random) -> list[BenchRequest]:
    out = []
    for i in range(spec.num_requests):
        n_q = max(1, spec.input_len // 8)
        docs = tuple(
            text(rng, _length(rng, spec.input_len, spec.range_ratio)) for _ in range(spec.documents)
        )
        n_in = n_q + sum(len(d) // CHARS_PER_TOKEN for d in docs)
        out.append(BenchRequest(f"k{i}", "rerank", text(rng, n_q), n_in, documents=docs))
    return out


def _trace(spec: WorkloadSpec, rng: random.Random) -> list[BenchRequest]:
    """Replay: each record's `timestamp` (seconds; offsets are taken from the first), its
    `input_tokens` and `output_tokens`, and an optional `group`: records of one group share a
    prefix of `prefix_tokens` (default: the spec's prefix length, capped by the input)."""
    prefixes: dict[int, str] = {}
    out = []
    first = None
    for i, rec in enumerate(spec.trace):
        ts = float(rec["timestamp"])
        first = ts if first is None else first
        n_in, n_out = int(rec["input_tokens"]), int(rec["output_tokens"])
        group = rec.get("group")
        prompt = ""
        n_prefix = 0
        if group is not None:
            n_prefix = min(int(rec.get("prefix_tokens", spec.prefix_len)), n_in)
            key = int(group)
            if key not in prefixes:
                prefixes[key] = text(random.Random(f"{spec.seed}/{key}"), spec.prefix_len)
            prompt = prefixes[key][: n_prefix * CHARS_PER_TOKEN]
        prompt += text(rng, n_in - n_prefix)
        out.append(
            BenchRequest(
                f"t{i}",
                "completion",
                prompt,
                n_in,
                n_out,
                group=int(group or 0),
                at=max(0.0, ts - first),
            )
        )
    return out


def parse_trace(
    lines: Iterable[str], max_records: int = MAX_REQUESTS
) -> tuple[dict[str, Any], ...]:
    """Records of a JSONL trace, validated; ValueError names the first bad line."""
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > MAX_TRACE_LINE:
            raise ValueError(f"trace line {n}: longer than {MAX_TRACE_LINE} characters")
        if len(out) >= max_records:
            raise ValueError(f"trace: more than {max_records} records")
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise TypeError("not an object")
            float(rec["timestamp"])
            if int(rec["input_tokens"]) < 1 or int(rec["output_tokens"]) < 1:
                raise ValueError("token counts must be >= 1")
            if rec.get("group") is not None:
                int(rec["group"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(
                f"trace line {n}: {exc!s} (need timestamp, input_tokens, output_tokens)"
            ) from None
        out.append(rec)
    if not out:
        raise ValueError("trace: no records")
    return tuple(out)


def nth(workload: Sequence[BenchRequest], i: int) -> BenchRequest:
    """Request i of an endless cycle of `workload`: ids (and `after`) get `#1`, `#2`, ... on
    later cycles, so they stay unique."""
    req = workload[i % len(workload)]
    cycle = i // len(workload)
    if cycle == 0:
        return req
    after = f"{req.after}#{cycle}" if req.after else None
    return replace(req, id=f"{req.id}#{cycle}", after=after)


def poisson_offsets(n: int, rate: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of `n` requests in a Poisson process of `rate`/s."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    rng = random.Random(f"arrivals/{seed}")
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out
