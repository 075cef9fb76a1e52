"""Which KV blocks of a planned workload another sequence could share (pure).

`vfleet bench plan` knows its whole workload before it simulates it, so it can tell the
scheduler which blocks of each sequence are worth hashing (`hash_limits`: the others can only
ever be found again by their own sequence, after a preemption), and hash the shareable ones
once per distinct prefix (`SharedHashes`). Hashing every block, about 20 a request, was a
quarter of an hour-long plan; the timings come out the same either way (tests compare them).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from vfleet.bench.workloads import BenchRequest
from vfleet.sim import tokenizer
from vfleet.sim.kvcache import block_hashes
from vfleet.sim.scheduler import FILLER_TEXT, HASH_ALL

_FILLER_HEAD = FILLER_TEXT[: tokenizer.PIECE_BYTES]  # the first output token of every sequence


def texts(req: BenchRequest) -> list[str]:
    """The prompt text of each engine sequence of a request."""
    if req.kind == "rerank":
        return [req.prompt + "\n" + d for d in req.documents]
    return [req.prompt]


class SharedHashes:
    """The block hashes of prompts' shareable prefixes, computed once per distinct prefix: the
    prompts of a shared-prefix workload all start with one of a few long system prompts, whose
    blocks every sequence would otherwise hash again (`Scheduler._extend_hashes` continues
    after them). The same function over the same tokens: the same hashes."""

    CAP = 1024  # distinct prefixes kept (oldest dropped first)

    def __init__(self, block_size: int) -> None:
        self.chars = block_size * tokenizer.PIECE_BYTES  # of ASCII text in one block
        self.block_size = block_size
        self.memo: dict[str, list[int]] = {}

    def of(self, text: str, blocks: int) -> list[int]:
        """Hashes of the first `blocks` blocks of `text` (ASCII, at least that long)."""
        key = text[: blocks * self.chars]
        got = self.memo.get(key)
        if got is None:
            got = block_hashes(None, tokenizer.encode(key), self.block_size)[:blocks]
            if len(self.memo) >= self.CAP:
                del self.memo[next(iter(self.memo))]
            self.memo[key] = got
        return got


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of `a` and `b` (C-speed slice compares: doubling
    steps, then bisection)."""
    if len(a) > len(b):
        a, b = b, a
    if b.startswith(a):  # (no copies: most pairs differ early, and slices would copy both)
        return len(a)
    n = len(a)
    lo, step = 0, 16  # a[:lo] == b[:lo] throughout
    while lo + step <= n and a[lo : lo + step] == b[lo : lo + step]:
        lo += step
        step *= 2
    hi = min(n, lo + step)  # a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def hash_limits(requests: Sequence[BenchRequest], block_size: int) -> list[tuple[int, ...]]:
    """For each request, for each of its sequences: how many leading KV blocks some other
    sequence of the workload could share (`Sequence.hash_blocks`), HASH_ALL when its whole
    prompt is a prefix of another's (then its output blocks could be shared too).

    A block is found in the prefix cache only by a sequence with the same tokens up to its
    end, so a block past the longest prefix a prompt shares with any other prompt is only
    ever found again by its own sequence, after a preemption (which the scheduler handles).
    The longest shared prefix of each prompt is the longer of those with its neighbours in
    sorted order. Output text is the simulator's filler for every planned sequence: should a
    prompt contain its first token, a prompt could continue into another's output, and every
    block is hashed."""
    per_request = [texts(r) for r in requests]
    flat = [t for ts in per_request for t in ts]
    if any(_FILLER_HEAD in t for t in flat):
        return [(HASH_ALL,) * len(ts) for ts in per_request]
    shared = [0] * len(flat)
    order = sorted(range(len(flat)), key=flat.__getitem__)
    for a, b in itertools.pairwise(order):
        n = _common_prefix(flat[a], flat[b])
        shared[a] = max(shared[a], n)
        shared[b] = max(shared[b], n)
    limits = []
    for t, n in zip(flat, shared, strict=True):
        if n >= len(t):
            limits.append(HASH_ALL)
            continue
        nbytes = n if t.isascii() else len(t[:n].encode("utf-8"))
        tokens = -(-nbytes // tokenizer.PIECE_BYTES)  # a partly shared token counts as shared
        limits.append(tokens // block_size)
    out = []
    i = 0
    for ts in per_request:
        out.append(tuple(limits[i : i + len(ts)]))
        i += len(ts)
    return out
