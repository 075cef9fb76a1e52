"""Fault injection for reliability tests: what the simulator does wrong, and when.

`FaultConfig` is the user's setting (from flags, or changed at run time through `POST
/sim/faults`); `FaultState.next_action` decides, from a seeded random stream and a request count,
what happens to the next inference request. The HTTP shell carries the decision out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any


class Action(Enum):
    SERVE = "serve"
    ERROR = "error"  # answer 500 in vLLM's error shape
    HANG = "hang"  # accept and never answer
    CRASH = "crash"  # exit the process at once, dropping every connection


@dataclass(frozen=True, slots=True)
class FaultConfig:
    error_rate: float = 0.0  # fraction of inference requests answered with a 500
    hang_rate: float = 0.0  # fraction of inference requests never answered
    crash_after_requests: int = 0  # exit when this many inference requests have arrived; 0 = never
    crash_after_s: float = 0.0  # exit this many seconds after start-up; 0 = never
    drop_stream_after_chunks: int = 0  # close streams abruptly after this many chunks; 0 = never
    health_failing: bool = False  # /health and /ping answer 503
    startup_delay_s: float = 0.0  # seconds before the port is opened (model loading)

    def __post_init__(self) -> None:
        for name in ("error_rate", "hang_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
        for name in (
            "crash_after_requests",
            "crash_after_s",
            "drop_stream_after_chunks",
            "startup_delay_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with `changes` applied; unknown keys or wrong types raise ValueError."""
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown fault setting {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool):
                ok = isinstance(value, bool)
            elif isinstance(current, int):
                ok = type(value) is int
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok:
                raise ValueError(f"fault setting {key!r} must be {type(current).__name__}")
            clean[key] = value
        return replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class FaultState:
    config: FaultConfig
    seed: int = 0
    requests: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def next_action(self) -> Action:
        self.requests += 1
        cfg = self.config
        if cfg.crash_after_requests and self.requests >= cfg.crash_after_requests:
            return Action.CRASH
        if cfg.error_rate and self._rng.random() < cfg.error_rate:
            return Action.ERROR
        if cfg.hang_rate and self._rng.random() < cfg.hang_rate:
            return Action.HANG
        return Action.SERVE
