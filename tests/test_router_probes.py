"""Who probes a newly listed endpoint: the fast prober alone once the router serves, the regular
prober in the first round (before the fast one runs). Two first probes of one endpoint doubled
the load of a burst of new endpoints, and the slower one, timing out, marked down for a whole
health interval endpoints the other had just found up."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from vfleet.router.endpoints import Endpoint, Registry
from vfleet.router.probe import FastProber
from vfleet.router.prober import Prober


def closed_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a probe of it fails at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def listed(*urls: str) -> Registry:
    registry = Registry()
    registry.set_endpoints((url, ("demo",), False) for url in urls)
    return registry


def ignore(_: Endpoint) -> None:
    pass


@pytest.mark.timeout(10)
def test_a_new_endpoint_gets_one_first_probe_from_the_fast_prober() -> None:
    url = closed_url()

    async def scenario() -> None:
        registry = listed(url)
        regular = Prober(registry, 30.0, 1.0, b"", ignore)
        fast = FastProber(registry, 30.0, 1.0, b"", lambda: (), ignore)
        regular.tick(time.monotonic())
        fast.tick()
        try:
            assert list(regular.busy) == []  # due (never probed), but not the regular one's
            assert list(fast.busy) == [url]
        finally:
            fast.cancel_all()
            await asyncio.gather(*fast.busy.values(), return_exceptions=True)

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_the_first_round_probes_every_listed_endpoint_and_later_ones_as_they_fall_due() -> None:
    first, later = closed_url(), closed_url()

    async def scenario() -> None:
        registry = listed(first)
        regular = Prober(registry, 30.0, 1.0, b"", ignore)
        await regular.first_round()  # the probe of a closed port fails: marked down, backoff
        ep = registry.endpoints[first]
        assert not ep.healthy and not ep.unprobed
        registry.set_endpoints([(first, ("demo",), False), (later, ("demo",), False)])
        regular.tick(ep.next_probe_at)  # the first one is due again; the new one is not its
        try:
            assert list(regular.busy) == [first]
        finally:
            regular.cancel_all()
            await asyncio.gather(*regular.busy.values(), return_exceptions=True)

    asyncio.run(scenario())
