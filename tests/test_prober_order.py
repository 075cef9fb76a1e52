"""Probe results are applied in the order their probes started, per endpoint.

The regular prober's first round and the fast prober each probe a new endpoint; when the
regular one's probe hangs (the engine accepts and says nothing yet), the fast one can find the
endpoint up first. The hung probe failing afterwards used to mark it down again, ejecting a
healthy engine for a whole backoff. The backend here is a real HTTP server on 127.0.0.1 that
holds its first /health request until the test lets it go (then drops it unanswered); every
timeout is far longer than the test, so each step waits on an event, never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from vfleet.router.endpoints import Endpoint, Registry
from vfleet.router.probe import FastProber, ProbeOrder
from vfleet.router.prober import Prober

pytestmark = pytest.mark.timeout(30)

STEP_S = 10.0  # bound on each awaited step
PROBE_TIMEOUT_S = 60.0  # no probe times out during a test: results come when the server says
MODELS = b'{"object": "list", "data": [{"id": "demo", "object": "model"}]}'


class Backend:
    """An engine whose first /health is held until `release` is set, then dropped unanswered;
    other requests are answered (/health with `health_status`)."""

    def __init__(self) -> None:
        self.first_held = asyncio.Event()
        self.release = asyncio.Event()
        self.health_status = 200
        self.healths = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.release.set()
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_S)
            path = head.split(b" ", 2)[1]
            if path == b"/health":
                self.healths += 1
                if self.healths == 1:
                    self.first_held.set()
                    await asyncio.wait_for(self.release.wait(), STEP_S * 2)
                    return  # dropped: the probe fails
                status, body = self.health_status, b""
            elif path == b"/v1/models":
                status, body = 200, MODELS
            else:
                status, body = 200, b"vllm:num_requests_running 0\n"
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, len(body), body)
            )
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _done(task: asyncio.Task[None]) -> None:
    await asyncio.wait_for(asyncio.shield(task), STEP_S)


@pytest.mark.parametrize("static", [True, False], ids=["listed-models", "discovered-models"])
def test_a_hung_first_probe_failing_late_leaves_an_endpoint_found_up_up(static: bool) -> None:
    async def scenario() -> None:
        async with Backend() as backend:
            registry = Registry()
            registry.set_endpoints([(backend.url, ("demo",) if static else (), False)])
            ep = registry.endpoints[backend.url]
            ups: list[Endpoint] = []
            regular = Prober(registry, 30.0, PROBE_TIMEOUT_S, b"", ups.append)
            fast = FastProber(
                registry, 30.0, PROBE_TIMEOUT_S, b"", lambda: (), ups.append, regular.order
            )
            try:
                regular.tick(time.monotonic(), new_too=True)  # the first round's probe
                hung = regular.busy[backend.url]
                await asyncio.wait_for(backend.first_held.wait(), STEP_S)

                fast.tick()  # the fast prober's probe of the still-unprobed endpoint: answered
                await _done(fast.busy[backend.url])
                assert ep.healthy and ups == [ep]

                backend.release.set()  # the hung probe now fails
                await _done(hung)
                assert hung.exception() is None
                assert ep.healthy, "a probe older than the answered one marked the endpoint down"
                assert ep.failures == 0
                assert registry.ready("demo") == [ep]
                assert ups == [ep]

                # a probe started after that answer still counts: a failing one marks it down
                backend.health_status = 503
                regular.tick(ep.next_probe_at)
                await _done(regular.busy[backend.url])
                assert not ep.healthy and ep.failures == 1
                assert backend.healths == 3
            finally:
                regular.cancel_all()
                fast.cancel_all()
                await asyncio.gather(
                    *regular.busy.values(), *fast.busy.values(), return_exceptions=True
                )

    asyncio.run(scenario())


def test_an_answer_is_dropped_only_when_a_later_probe_has_answered() -> None:
    order = ProbeOrder()
    listed = {"http://a": None, "http://b": None}
    first, second = order.begin("http://a", listed), order.begin("http://a", listed)
    assert order.begin("http://b", listed) == 1  # numbered per endpoint
    assert order.apply("http://a", first)  # in order: both count
    assert order.apply("http://a", second)
    third, fourth = order.begin("http://a", listed), order.begin("http://a", listed)
    assert order.apply("http://a", fourth)
    assert not order.apply("http://a", third)  # older than an applied answer
    assert order.apply("http://b", 1)


def test_the_order_forgets_unlisted_endpoints_as_it_grows() -> None:
    order = ProbeOrder()
    for i in range(1000):
        order.begin(f"http://gone-{i}", {f"http://gone-{i}": None})
    listed = {"http://kept": None}
    assert order.begin("http://kept", listed) == 1
    for i in range(1000):
        assert order.begin(f"http://new-{i}", listed) == 1
    assert order.begin("http://kept", listed) == 2  # pruning never resets a listed endpoint
    assert len(order) <= 2 * len(listed) + 64 + 1
