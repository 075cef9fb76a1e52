"""Placing replicas on GPUs: requests, devices and the engine rules in, placements or a clear
error out.

Shares are whole percent of one device. A replica asking for whole GPUs gets devices nobody
else uses; shares go best-fit, largest first, so small replicas fill the gaps big ones leave.
A device is never promised more than 100% of its compute or its memory. A share's memory,
when the model sets none, follows the share-to-memory rule of the engine rules passed in (the
chart's engine-rules.yaml, which the chart applies to time-sliced GPUs). Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vfleet.engines.rules import EngineRules

FULL = 100


@dataclass(frozen=True, slots=True)
class Request:
    model: str
    replica: int
    devices: int = 0  # whole GPUs; 0 with share 0 means no GPU at all
    share_pct: int = 0  # a share of one GPU, 1..99
    memory: float | None = None  # --gpu-memory-utilization the model asks for, if any


@dataclass(frozen=True, slots=True)
class Placement:
    model: str
    replica: int
    devices: tuple[int, ...]  # device ids; empty for CPU-only
    share_pct: int  # of each device; 100 for whole GPUs
    memory: float | None  # the memory fraction the engine gets (derived for shares)


class PackError(ValueError):
    pass


def derived_memory(share_pct: int, engine_rules: EngineRules) -> float:
    """The memory fraction vLLM may take for a share when the model does not say: a little
    under the share (vLLM's profiling overshoots; neighbours on one device would collide).
    Every process sees the whole device here, as with time-slicing on Kubernetes."""
    return engine_rules.share_memory(share_pct)


def pack(
    requests: Sequence[Request], devices: Sequence[int], engine_rules: EngineRules
) -> list[Placement]:
    free = dict.fromkeys(devices, FULL)  # compute percent left on each device
    mem = dict.fromkeys(devices, 1.0)  # memory fraction left on each device
    placed: dict[tuple[str, int], Placement] = {}
    missing: list[Request] = []
    for req in sorted(requests, key=lambda r: (-r.devices, -r.share_pct, r.model, r.replica)):
        if req.devices == 0 and req.share_pct == 0:
            placed[(req.model, req.replica)] = Placement(req.model, req.replica, (), 0, None)
        elif req.devices:
            empty = [d for d in devices if free[d] == FULL]
            if len(empty) < req.devices:
                missing.append(req)
                continue
            chosen = tuple(empty[: req.devices])
            for d in chosen:
                free[d], mem[d] = 0, 0.0
            placed[(req.model, req.replica)] = Placement(
                req.model, req.replica, chosen, FULL, req.memory
            )
        else:
            memory = (
                req.memory
                if req.memory is not None
                else derived_memory(req.share_pct, engine_rules)
            )
            fits = [d for d in devices if free[d] >= req.share_pct and mem[d] >= memory - 1e-9]
            if not fits:
                missing.append(req)
                continue
            d = min(fits, key=lambda x: (free[x] - req.share_pct, x))  # best fit
            free[d] -= req.share_pct
            mem[d] -= memory
            placed[(req.model, req.replica)] = Placement(
                req.model, req.replica, (d,), req.share_pct, memory
            )
    if missing:
        raise PackError(_explain(requests, missing, devices))
    return [placed[(r.model, r.replica)] for r in requests]


def _explain(requests: Sequence[Request], missing: list[Request], devices: Sequence[int]) -> str:
    want: dict[str, list[Request]] = {}
    for r in requests:
        want.setdefault(r.model, []).append(r)
    short = sorted({r.model for r in missing})
    parts = []
    for name in sorted(want):
        reqs = want[name]
        each = f"{reqs[0].devices} GPU" if reqs[0].devices else f"{reqs[0].share_pct / 100:g} GPU"
        parts.append(f"{name} {len(reqs)} x {each}")
    total = sum(r.devices * FULL + r.share_pct for r in requests) / FULL
    ids = ",".join(map(str, devices)) or "none"
    return (
        f"replicas of {', '.join(short)} do not fit on {len(devices)} GPU(s) [{ids}]: "
        f"the fleet asks for {total:g} GPUs ({'; '.join(parts)})"
    )


def fewest_devices(
    requests: Sequence[Request], engine_rules: EngineRules, limit: int = 1024
) -> int:
    """The smallest number of (simulated) GPUs the requests pack onto."""
    whole = sum(r.devices for r in requests)
    shares = sum(r.share_pct for r in requests)
    n = max(1 if requests else 0, whole + -(-shares // FULL))
    while n <= limit:
        try:
            pack(requests, range(n), engine_rules)
            return n
        except PackError:
            n += 1
    raise PackError(f"the fleet needs more than {limit} GPUs")


def pack_optional(
    required: Sequence[Request],
    optional: Sequence[Request],
    devices: Sequence[int],
    engine_rules: EngineRules,
) -> list[Placement]:
    """`required` must fit (PackError otherwise); `optional` requests (autoscaling's standby
    replicas) join in the order given while they still fit. A model's optional replicas stay
    contiguous: once one does not fit, its later ones are not tried."""
    placed = pack(required, devices, engine_rules)
    chosen = list(required)
    full: set[str] = set()
    for req in optional:
        if req.model in full:
            continue
        try:
            placed = pack([*chosen, req], devices, engine_rules)
        except PackError:
            full.add(req.model)
            continue
        chosen.append(req)
    return placed
