"""A peer router that stops answering is logged once when it fails and once when it answers
again (router.keda.peers `Outages`, `Peers.ask`), for both kinds of peer request: the KEDA
scaler's demand reads and the key-usage poller (router.peerpoll). A real HTTP peer on 127.0.0.1
whose answer the test switches between a refusal and a good answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from vfleet.router.keda.peers import Outages, Peers
from vfleet.router.peerlimits import TOKENS_DAY, WindowUsage, encode
from vfleet.router.peerpoll import PeerPoller
from vfleet.router.ratelimit import tokens_per_day
from vfleet.router.sharedlimits import LimitTable
from vfleet.router.tenants import Tenancy

pytestmark = pytest.mark.timeout(30)


class ScriptedPeer:
    """An HTTP server answering every GET with `status` and `body`, both switchable."""

    def __init__(self) -> None:
        self.status = 503
        self.body = b"{}"
        self.paths: list[str] = []  # bounded by the test's few requests

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        self.paths.append(head.split(b" ")[1].decode())
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (self.status, len(self.body), self.body)
        )
        await writer.drain()
        writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()
            await server.wait_closed()


def _records(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 20))


def test_ask_logs_an_outage_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.outages")
    outages = Outages(logging.getLogger("test.outages"), "down %s (%s)", "up %s")
    peer = ScriptedPeer()
    urls: list[str] = []

    async def main() -> None:
        async with peer.running() as url:
            urls.append(url)
            peers = Peers(static=(url,))

            async def ask() -> str | None:
                return await peers.ask(url, "/x", 2.0, bytes.decode, outages)

            assert [await ask() for _ in range(3)] == [None, None, None]
            peer.status, peer.body = 200, b"fine"
            assert [await ask() for _ in range(2)] == ["fine", "fine"]
            peer.body = b"\xff"  # it answers, but `parse` refuses the answer: an outage too
            assert await ask() is None
            assert await ask() is None
            peer.body = b"fine"
            assert await ask() == "fine"

    run(main)
    url = urls[0]
    assert peer.paths == ["/x"] * 8
    logged = _records(caplog, "test.outages")
    assert logged[:2] == [(logging.WARNING, f"down {url} (HTTP 503)"), (logging.INFO, f"up {url}")]
    assert logged[2][0] == logging.WARNING and logged[2][1].startswith(f"down {url} ('utf-8'")
    assert logged[3:] == [(logging.INFO, f"up {url}")]


def test_a_refused_connection_is_an_outage_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.outages")
    outages = Outages(logging.getLogger("test.outages"), "down %s (%s)", "up %s")
    urls: list[str] = []

    async def main() -> None:
        async with ScriptedPeer().running() as url:
            urls.append(url)
        # the server is closed: its port now refuses connections
        peers = Peers(static=(url,))
        for _ in range(2):
            assert await peers.ask(url, "/x", 2.0, bytes.decode, outages) is None

    run(main)
    logged = _records(caplog, "test.outages")
    assert len(logged) == 1 and logged[0][0] == logging.WARNING
    assert logged[0][1].startswith(f"down {urls[0]} (") and logged[0][1] != f"down {urls[0]} ()"


def test_demand_reads_log_a_failing_peer_once_and_its_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vfleet.router.keda")
    peer = ScriptedPeer()
    urls: list[str] = []

    async def main() -> None:
        async with peer.running() as url:
            urls.append(url)
            peers = Peers(static=(url,))
            assert await peers.read_all() == {}
            assert await peers.read_all() == {}
            peer.status = 200
            peer.body = orjson.dumps({"models": {"m": {"inflight": 2, "held": 1}}})
            got = await peers.read_all()
            assert list(got) == [url] and got[url]["m"].inflight == 2
            assert list(await peers.read_all()) == [url]

    run(main)
    url = urls[0]
    assert peer.paths == ["/vfleet/demand"] * 4
    assert _records(caplog, "vfleet.router.keda") == [
        (logging.WARNING, f"peer {url}: no demand reading (HTTP 503); skipped until it answers"),
        (logging.INFO, f"peer {url} answers again"),
    ]


def test_the_usage_poller_logs_a_failing_peer_once_and_its_return(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vfleet.router.peerlimits")
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("replicas: 2\nkeys: [{name: a, key: sk-a, tokens_per_day: 1000}]\n")
    table = LimitTable.create(1, slots=16, peers=True)
    tenancy = Tenancy(table.row(0), (), str(tenants), peered=True)
    day = tokens_per_day(1000)
    peer = ScriptedPeer()
    urls: list[str] = []

    async def main() -> None:
        async with peer.running() as url:
            urls.append(url)
            poller = PeerPoller(tenancy, Peers(static=(url,)), timeout_s=2.0)
            await poller.poll()
            await poller.poll()
            assert table.share() == (1, 2)  # the silent peer holds its share
            peer.status = 200
            usage = {"a": {TOKENS_DAY: WindowUsage(day.width_us, (5,))}}
            peer.body = encode(usage, table.instance() + 1, 1, 2, 1)
            await poller.poll()
            await poller.poll()
            assert table.share() == (2, 2)

    run(main)
    url = urls[0]
    assert _records(caplog, "vfleet.router.peerlimits") == [
        (
            logging.WARNING,
            f"peer {url}: no key usage (HTTP 503); its share of each limit is held back",
        ),
        (logging.INFO, f"peer {url}: key usage answers again"),
    ]


def test_an_outage_of_a_peer_no_longer_listed_is_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.outages")
    outages = Outages(logging.getLogger("test.outages"), "down %s (%s)", "up %s")
    outages.fail("http://a", OSError("refused"))
    outages.fail("http://b", TimeoutError())
    outages.keep(["http://b"])
    outages.answered("http://a")  # forgotten: its return is not news
    outages.answered("http://b")
    assert _records(caplog, "test.outages") == [
        (logging.WARNING, "down http://a (refused)"),
        (logging.WARNING, "down http://b (TimeoutError)"),
        (logging.INFO, "up http://b"),
    ]
