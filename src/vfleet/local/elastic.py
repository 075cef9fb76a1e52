"""The local autoscaling loop: samples demand and load, asks each model's Autoscaler, scales.

Every policy period a model is observed: the router's `GET /vfleet/demand` (in-flight, held and
received requests per served name) and the /metrics of its ready engines make a Sample. While a
model is at zero replicas the loop long-polls the router instead of sleeping, so the first
request held for it wakes it within milliseconds rather than at the next period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

from vfleet.http import client
from vfleet.local import ttft
from vfleet.local.scaler import Load, ModelScaler, demand_of, make_sample, next_wait
from vfleet.router.endpoints import parse_load

LONG_POLL_S = 1.0  # one long-poll of the router's demand, while a model is at zero
IDLE_POLL_S = 0.05  # pause when the router answers at once for a model that is not at zero
RETRY_S = 0.5  # pause when the router does not answer


class Scaled(Protocol):
    """What the loop needs of the supervisor (`local.supervisor.Supervisor` is one)."""

    @property
    def stopping(self) -> bool: ...

    def replicas(self, model: str) -> tuple[int, int]:
        """(wanted, healthy) slots of `model`."""
        ...

    def ready_urls(self, model: str) -> list[str]:
        """The engines of `model` that are wanted and healthy."""
        ...

    async def demand(self, wait_s: float = 0.0) -> dict[str, Any] | None: ...

    def scale(self, model: str, desired: int) -> None: ...

    def publish(self) -> None: ...


class Elastic:
    def __init__(self, sup: Scaled, scalers: Sequence[ModelScaler]) -> None:
        self.sup = sup
        self.scalers = list(scalers)

    async def run(self) -> None:
        now = time.monotonic()
        for s in self.scalers:
            s.due_at = now + s.policy.period_s
        while not self.sup.stopping:
            await self.step()

    async def step(self) -> None:
        """Observe the models that are due, or that are at zero with requests held for them;
        otherwise wait for one of the two."""
        now = time.monotonic()
        wait = next_wait(self.scalers, now)
        zero = [s for s in self.scalers if self.sup.replicas(s.name)[0] == 0]
        if wait > 0 and not zero:
            await asyncio.sleep(wait)
            return
        asked = time.monotonic()
        doc = await self.sup.demand(min(wait, LONG_POLL_S) if wait > 0 else 0.0)
        if doc is None:
            await asyncio.sleep(min(RETRY_S, wait) if wait > 0 else RETRY_S)
            for s in self.scalers:  # no data: try again later rather than decide blind
                s.due_at = max(s.due_at, time.monotonic() + min(RETRY_S, s.policy.period_s))
            return
        now = time.monotonic()
        woken = [s for s in zero if demand_of(doc, s.names).concurrency > 0]
        due = [s for s in self.scalers if s.due_at <= now or s in woken]
        if not due:
            if now - asked < IDLE_POLL_S:
                await asyncio.sleep(IDLE_POLL_S)  # held requests of a model already starting
            return
        for s in due:
            await self.observe(s, doc)
        self.sup.publish()

    async def observe(self, s: ModelScaler, doc: dict[str, Any]) -> None:
        current, ready = self.sup.replicas(s.name)
        loads = await self.loads(s.name)
        p90 = s.ttft_p90(loads) if s.policy.ttft_p90_s is not None else None
        sample = make_sample(time.monotonic(), demand_of(doc, s.names), loads, ready, p90)
        decision = s.observe(sample, current, time.time())
        self.sup.scale(s.name, decision.desired)

    async def loads(self, model: str) -> list[Load]:
        urls = self.sup.ready_urls(model)
        found = await asyncio.gather(*(engine_load(u) for u in urls))
        return [x for x in found if x is not None]


async def engine_load(url: str, timeout_s: float = 1.0) -> Load | None:
    """An engine's running, waiting, KV usage and TTFT histogram from its /metrics; None when
    it does not answer."""
    try:
        response = await client.get(url, "/metrics", timeout_s)
    except (OSError, ValueError):
        return None
    if response.status != 200:
        return None
    text = response.body.decode(errors="replace")
    return Load(*parse_load(text), url=url, ttft=ttft.parse_buckets(text))
