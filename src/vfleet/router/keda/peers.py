"""The other router replicas' demand, read over HTTP (`GET /vfleet/demand`).

Peers are static URLs (`--peer`) plus, with `--k8s-peer-selector`, the Ready pods that match it
(the other replicas of the router's Deployment; this pod itself is left out). Two ways to read
them:

- `read_all()`: one request to every peer at once, each bounded by a short timeout, for the
  one-shot RPCs (IsActive, GetMetrics). A peer that does not answer in time is skipped.
- `follow()`: while an active-state stream is open, a long-poll per peer keeps the latest
  reading current: `?wait_s=1` answers at once while the peer holds a request (so a request
  held on another replica wakes the model within a few milliseconds) and otherwise within a
  second, which keeps an idle fleet at about one request per second per peer.

A peer that stops answering is logged once when it fails and once when it answers again
(`Outages`, which the key-usage poller, router.peerpoll, uses for its own requests too).

A router that serves TLS asks the pods it finds over HTTPS (its replicas serve what it serves);
static peers say their scheme in their URL. `peertls` owns what an HTTPS peer must present.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from vfleet.http import client
from vfleet.http.client import split_url
from vfleet.router.keda.peertls import PeerTls
from vfleet.router.keda.query import Counts, parse_demand_body

if TYPE_CHECKING:
    from vfleet.router.config import RouterConfig
    from vfleet.router.kubepods import PodEndpoint
    from vfleet.router.kubewatch import KubeTarget

log = logging.getLogger("vfleet.router.keda")

PEER_TIMEOUT_S = 0.5  # a peer answering slower than this is skipped for that reading
LONG_POLL_S = 1.0  # wait_s of the follower's long-polls
MIN_POLL_GAP_S = 0.025  # a follower asks one peer at most this often
RETRY_S = 0.5  # after a failed poll, wait this long before asking that peer again
STALE_S = LONG_POLL_S + PEER_TIMEOUT_S + 1.0  # readings older than this no longer count
DEMAND_PATH = "/vfleet/demand"

T = TypeVar("T")


def load_peer_target(cfg: RouterConfig) -> KubeTarget | None:
    """Kubernetes discovery of the peer routers, resolved at start-up (KubeSettingsError)."""
    if cfg.k8s_peer_selector is None:
        return None
    from vfleet.router.kubewatch import load_target

    # the peers' port: their container port named `http` (the chart's), else this router's
    port = cfg.port or cfg.k8s_port
    return load_target(replace(cfg, k8s_selector=cfg.k8s_peer_selector, k8s_port=port))


def peers_from_config(cfg: RouterConfig) -> Peers:
    """The peers `cfg` names (static ones; Kubernetes discovery publishes into `set_pods`),
    asked with the admin key when the routers check keys (a client key gets 401 there)."""
    keys = cfg.admin_keys or cfg.api_keys
    return Peers(
        static=cfg.peers,
        auth=b"authorization: Bearer %s\r\n" % keys[0].encode() if keys else b"",
        self_name=socket.gethostname(),
        tls=PeerTls(cfg.peer_ca, cfg.tls_cert, cfg.peer_tls_name),
        # the replicas of a router that serves TLS serve it too (one Deployment, one Secret)
        pod_scheme="https" if cfg.tls_cert else "http",
    )


@dataclass(slots=True)
class Outages:
    """The peers failing one kind of request, so that an outage is logged once when it starts
    and once when it ends rather than on every poll (peers are asked every second or faster).

    `failed` is a %-format of the peer URL and the reason, `recovered` of the URL alone. Each
    kind of request keeps its own set: a peer may answer one route and refuse another."""

    logger: logging.Logger
    failed: str
    recovered: str
    _failing: set[str] = field(default_factory=set)

    def fail(self, url: str, exc: BaseException) -> None:
        if url not in self._failing:
            self._failing.add(url)
            self.logger.warning(self.failed, url, str(exc) or type(exc).__name__)

    def answered(self, url: str) -> None:
        if url in self._failing:
            self._failing.discard(url)
            self.logger.info(self.recovered, url)

    def keep(self, urls: Sequence[str]) -> None:
        """Forget peers no longer listed (pods come and go: the set stays bounded by the list)."""
        self._failing.intersection_update(urls)


def _demand_outages() -> Outages:
    return Outages(
        log,
        "peer %s: no demand reading (%s); skipped until it answers",
        "peer %s answers again",
    )


@dataclass(slots=True)
class _Followed:
    """The follower's state for one peer."""

    reading: dict[str, Counts] | None = None
    at: float = 0.0  # monotonic time of the reading
    task: asyncio.Task[None] | None = None
    next_at: float = 0.0  # no poll before this


@dataclass(slots=True)
class Peers:
    """Where the peers are and what they last reported."""

    static: tuple[str, ...] = ()
    auth: bytes = b""  # an authorization header line, when the routers check API keys
    self_name: str = ""  # this pod's name: never its own peer
    timeout_s: float = PEER_TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    tls: PeerTls = field(default_factory=PeerTls)  # for https:// peers
    pod_scheme: str = "http"  # of the peers found in Kubernetes: https when this router is
    _pods: tuple[str, ...] = ()
    _outages: Outages = field(default_factory=_demand_outages)  # of the demand reads
    _followed: dict[str, _Followed] = field(default_factory=dict)
    _followers: int = 0
    _loop: asyncio.Task[None] | None = None

    def urls(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.static, *self._pods)))

    def set_pods(self, pods: Sequence[PodEndpoint]) -> None:
        """Kubernetes discovery's publish callback: the router pods now Ready."""
        mine = self.self_name
        scheme = self.pod_scheme + "://"
        self._pods = tuple(
            scheme + p.url.partition("://")[2] for p in pods if p.name.rpartition("/")[2] != mine
        )
        self._outages.keep(self.urls())

    async def read_all(self) -> dict[str, dict[str, Counts]]:
        """Every peer's demand now; peers that fail or time out are left out."""
        urls = self.urls()
        results = await asyncio.gather(*(self._read(url, 0.0) for url in urls))
        return {url: r for url, r in zip(urls, results, strict=True) if r is not None}

    async def fetch(self, url: str, path: str, timeout_s: float) -> bytes:
        """The body of peer `url`'s 200 answer to `GET path`, asked as every peer route is (this
        router's peer credentials, TLS verified by `tls`); OSError, TimeoutError or ValueError
        (another status, a URL without a host) when there is none."""
        if url.startswith("https://"):
            name = self.tls.server_name(split_url(url)[0])
            got = await client.get(
                url, path, timeout_s, self.auth, tls=self.tls.context(), server_name=name
            )
        else:
            got = await client.get(url, path, timeout_s, self.auth)
        if got.status != 200:
            raise ValueError(f"HTTP {got.status}")
        return got.body

    async def ask(
        self,
        url: str,
        path: str,
        timeout_s: float,
        parse: Callable[[bytes], T],
        outages: Outages,
    ) -> T | None:
        """`parse` of peer `url`'s answer to `GET path` (see `fetch`), or None when there is
        none or `parse` refuses it (ValueError, IndexError); `outages` logs the peer's failing
        and recovering, once each."""
        try:
            got = parse(await self.fetch(url, path, timeout_s))
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            outages.fail(url, exc)
            return None
        outages.answered(url)
        return got

    async def _read(self, url: str, wait_s: float) -> dict[str, Counts] | None:
        path = f"{DEMAND_PATH}?wait_s={wait_s:g}" if wait_s > 0 else DEMAND_PATH
        return await self.ask(url, path, self.timeout_s + wait_s, parse_demand_body, self._outages)

    # -- the follower, shared by every open stream --------------------------------------------

    @contextlib.asynccontextmanager
    async def follow(self) -> AsyncIterator[None]:
        """Keep `latest()` current while the block runs (shared by concurrent callers)."""
        self._followers += 1
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._follow_loop())
        try:
            yield
        finally:
            self._followers -= 1
            if self._followers == 0 and self._loop is not None:
                loop, self._loop = self._loop, None
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop

    def latest(self) -> list[dict[str, Counts]]:
        """The follower's current readings, those that are recent enough."""
        now = self.clock()
        return [
            f.reading
            for f in self._followed.values()
            if f.reading is not None and now - f.at <= STALE_S
        ]

    async def _follow_loop(self) -> None:
        try:
            while True:
                self._start_polls(self.clock())
                await asyncio.sleep(MIN_POLL_GAP_S)
        finally:
            for f in self._followed.values():
                if f.task is not None:
                    f.task.cancel()
            await asyncio.gather(
                *(f.task for f in self._followed.values() if f.task is not None),
                return_exceptions=True,
            )
            self._followed.clear()

    def _start_polls(self, now: float) -> None:
        urls = self.urls()
        for gone in set(self._followed) - set(urls):
            f = self._followed.pop(gone)
            if f.task is not None:
                f.task.cancel()
        loop = asyncio.get_running_loop()
        for url in urls:
            f = self._followed.setdefault(url, _Followed())
            if f.task is None and now >= f.next_at:
                f.task = loop.create_task(self._poll(url, f))

    async def _poll(self, url: str, f: _Followed) -> None:
        started = self.clock()
        reading = await self._read(url, LONG_POLL_S)
        now = self.clock()
        f.task = None
        if reading is None:
            f.reading, f.next_at = None, now + RETRY_S
            return
        f.reading, f.at = reading, now
        f.next_at = started + MIN_POLL_GAP_S
