"""The regular health probes: every endpoint on its own schedule, never waiting for another.

A probe round that gathers every due endpoint and waits for all of them before the next round
lets one hung engine (its socket accepts, nothing answers) hold every other engine's health and
load for the length of a probe timeout. Here each endpoint has at most one probe in flight, a
tick starts the probes that are due, and each result is applied the moment it arrives.

`first_round()` is what start-up waits for before the port opens: the first probe of every
listed endpoint, but only until each model has a ready engine (or the probe timeout passes), so
a hung engine delays neither the start nor its healthy peers. Endpoints whose first probe is
still running are not served yet; a request for a model none of whose engines has answered is
held by the activator (and the fast prober probes such endpoints at once), not refused.
"""

from __future__ import annotations

import asyncio
import logging
import time

from vfleet.router.endpoints import Endpoint
from vfleet.router.probe import ProbeTasks, probe

log = logging.getLogger("vfleet.router.probe")

TICK_S = 0.1  # seconds between looks for due endpoints (a probe is at most this late)


class Prober(ProbeTasks):
    """Probes each endpoint when its `next_probe_at` comes, one probe per endpoint at a time;
    endpoints listed as starting and still down are left to the fast prober, and so, once
    `run` has started, are newly listed ones (their first probe is the fast prober's)."""

    def tick(self, now: float, new_too: bool = False) -> None:
        """Start a probe for every due endpoint without one in flight; `new_too`: never probed
        ones as well (the first round, before the fast prober runs).

        Probing a new endpoint here too would double its first probes, and one of them that
        times out (a loaded host, hundreds of endpoints listed at once) would mark down, for a
        whole health interval, an endpoint the other had just found up."""
        loop = asyncio.get_running_loop()
        for ep in self.registry.endpoints.values():
            if ep.next_probe_at > now or (ep.starting and not ep.healthy):
                continue
            if ep.unprobed and not new_too:
                continue
            self.start(ep, loop)

    async def _probe(self, ep: Endpoint, n: int) -> None:
        try:
            ok = await probe(ep, self.timeout_s, self.auth)
        except Exception:
            log.exception("probe of %s failed", ep.url)
            ok = False
        finally:
            self.busy.pop(ep.url, None)
        if self.registry.endpoints.get(ep.url) is not ep:
            return  # unlisted while it was probed
        if not self.order.apply(ep.url, n):
            return  # a probe started after this one has answered (the fast prober's)
        was = ep.healthy
        if ok:
            ep.mark_up(time.monotonic(), self.interval_s)
        else:
            ep.mark_down(time.monotonic(), self.interval_s)
        if was != ep.healthy:
            log.warning("endpoint %s is %s", ep.url, "up" if ep.healthy else "down")
            if ep.healthy:
                self.on_up(ep)

    async def first_round(self) -> None:
        """Probe every listed endpoint; return once each model has a ready endpoint, or every
        probe has answered, or the probe timeout has passed (bounded by it)."""
        self.tick(time.monotonic(), new_too=True)
        deadline = time.monotonic() + self.timeout_s
        while self.busy:
            if self._settled():
                return  # a hung straggler is not worth a client's wait
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.wait(
                list(self.busy.values()), timeout=left, return_when=asyncio.FIRST_COMPLETED
            )

    def _settled(self) -> bool:
        """Every endpoint's models are known, and each model has a ready endpoint."""
        registry = self.registry
        if any(not ep.models for url, ep in registry.endpoints.items() if url in self.busy):
            return False  # what it serves is learnt from its first probe
        return all(registry.ready(m) for m in registry.model_names())

    async def run(self) -> None:
        try:
            while True:
                self.tick(time.monotonic())
                await asyncio.sleep(min(TICK_S, self.interval_s))
        finally:
            self.cancel_all()
