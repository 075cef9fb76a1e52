"""Key budgets shared by router replicas, the I/O part: the `GET /vfleet/usage` route every
replica answers, and the loop that asks the peers for theirs and writes it into the limit table's
peer row (router.sharedlimits), where every worker's decision adds it without any network I/O.

The peers are the KEDA scaler's (router.keda.peers): `--peer` URLs and, with
`--k8s-peer-selector`, the Ready router pods, asked the same way (the admin key, HTTPS verified
per `--peer-ca`/`--tls-cert`), and the route sits behind the same admin gate as
`/vfleet/demand`. One worker polls (worker 0: the others read what it writes), every POLL_S,
each peer bounded by TIMEOUT_S; an answer counts for STALE_S, so one lost poll does not cut every
budget, and a peer silent for longer is assumed to use its share (router.peerlimits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from vfleet.errors import MethodNotAllowed, error_json
from vfleet.http.server import Connection, Handler, Request
from vfleet.router import peerlimits
from vfleet.router.keda.peers import Outages, Peers, peers_from_config
from vfleet.router.peerlimits import Usage, Want, decode, encode, merge
from vfleet.router.sharedlimits import MAX_KEYS, REQUESTS, TOKENS_DAY, TOKENS_MINUTE
from vfleet.router.tenants import Tenancy

if TYPE_CHECKING:
    from vfleet.router.config import RouterConfig
    from vfleet.router.kubewatch import KubeTarget

log = logging.getLogger("vfleet.router.peerlimits")

USAGE_PATH: Final = "/vfleet/usage"
POLL_S: Final = 1.0  # seconds between polls of the peers
TIMEOUT_S: Final = 0.5  # a peer answering slower is skipped for that poll
STALE_S: Final = 3.0  # an answer counts this long (three polls)
MAX_PEERS: Final = 64  # peers asked; the rest are left out (and logged once)
REGIONS: Final = {
    peerlimits.REQUESTS: REQUESTS,
    peerlimits.TOKENS_MINUTE: TOKENS_MINUTE,
    peerlimits.TOKENS_DAY: TOKENS_DAY,
}
_ALLOW_GET: Final = b"allow: GET\r\n"


def usage_route(tenancy: Tenancy, handle: Handler, clock: Callable[[], float]) -> Handler:
    """`handle`, with USAGE_PATH answered here: this router's own usage per key (its peers'
    are not in it). Wrap it inside the admin gate, which guards it as it does /vfleet/demand."""
    refusal = error_json(MethodNotAllowed(f"Method not allowed on {USAGE_PATH}: use GET."))

    def with_usage(req: Request, conn: Connection) -> None:
        if req.path != USAGE_PATH:
            handle(req, conn)
        elif req.method != "GET":
            conn.respond(405, refusal, extra_headers=_ALLOW_GET)
        else:
            table = tenancy.table
            known, expected = tenancy.share()
            usage = tenancy.usage(clock())
            body = encode(usage, table.instance(), known, expected, table.generation())
            conn.respond(200, body)

    return with_usage


class PeerPoller:
    """Asks the peers for their usage and writes the merge into the peer row."""

    def __init__(
        self,
        tenancy: Tenancy,
        peers: Peers,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
        stale_s: float = STALE_S,
    ) -> None:
        self.tenancy = tenancy
        self.peers = peers
        self.clock = clock
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.stale_s = stale_s
        self.row = tenancy.table.peer_row()
        self.answers: dict[str, tuple[float, Usage]] = {}  # url -> (arrived, usage), bounded
        self.written: set[tuple[int, int]] = set()  # (slot, region) holding peer usage
        self.outages = Outages(
            log,
            "peer %s: no key usage (%s); its share of each limit is held back",
            "peer %s: key usage answers again",
        )
        self.itself: set[str] = set()  # listed URLs that answer as this router: not peers
        self.capped = False

    async def run(self) -> None:
        """Poll `poll_s` after the previous poll ended (the caller has just made one; a poll
        takes at most `timeout_s`)."""
        while True:
            await asyncio.sleep(self.poll_s)
            await self.poll()

    async def poll(self) -> None:
        """Ask every peer at once (each bounded), then write what is known."""
        urls = self.peers.urls()
        if len(urls) > MAX_PEERS and not self.capped:
            self.capped = True
            log.warning("%d peer routers; usage is asked of the first %d", len(urls), MAX_PEERS)
        urls = urls[:MAX_PEERS]
        await asyncio.gather(*(self._ask(url) for url in urls))
        for gone in set(self.answers) - set(urls):
            del self.answers[gone]
        self.outages.keep(urls)
        self.itself &= set(urls)
        self.write(self.clock(), len(urls) - len(self.itself))

    async def _ask(self, url: str) -> None:
        got = await self.peers.ask(url, USAGE_PATH, self.timeout_s, _decode, self.outages)
        if got is None:
            return
        instance, usage = got
        if instance == self.tenancy.table.instance():
            # A peer list shared by every replica names this one too: its usage is counted
            # already, and it is not one more replica.
            if url not in self.itself:
                self.itself.add(url)
                log.info("peer %s is this router itself; left out", url)
            return
        self.itself.discard(url)
        self.answers[url] = (self.clock(), usage)

    def write(self, now: float, peers: int) -> None:
        """The peers' recent usage into the peer row, then the replica counts (`peers`: how
        many are listed, answering or not)."""
        fresh = [a for a in self.answers.values() if now - a[0] <= self.stale_s]
        tenants = self.tenancy.tenants()
        want: Want = {
            (name, wname): window
            for name, tenant in tenants.items()
            for wname, _, window in tenant.windows()
        }
        merged = merge(fresh, want)
        now_written = {(tenants[n].slot, REGIONS[w]) for n, w in merged}
        for slot, region in self.written - now_written:
            self.row.clear(slot, region)
        for (name, wname), counts in merged.items():
            tenant = tenants[name]
            self.row.write(tenant.slot, tenant.tag, REGIONS[wname], want[name, wname], now, counts)
        self.written = now_written
        known = peerlimits.known_replicas((a[0] for a in fresh), now, self.stale_s)
        self.row.publish(known, peerlimits.expected_replicas(self.tenancy.replicas, peers))


def _decode(body: bytes) -> tuple[int, Usage]:
    return decode(body, MAX_KEYS)


def peer_polling(
    cfg: RouterConfig, tenancy: Tenancy, peer_kube: KubeTarget | None
) -> tuple[PeerPoller, Coroutine[Any, Any, None] | None]:
    """The poller of `cfg`'s peers, and the Kubernetes discovery that lists the router pods
    among them (None without `--k8s-peer-selector`)."""
    if not cfg.admin_keys and (cfg.api_keys or cfg.tenants_file):
        log.warning(
            "keys are on and no admin key is set: peer routers will refuse to share their "
            "key usage (each keeps to its share); give every router the same admin key"
        )
    peers = peers_from_config(cfg)
    discovery = None
    if peer_kube is not None:
        from vfleet.router.kubewatch import Discovery

        discovery = Discovery(peer_kube, peers.set_pods).run()
    return PeerPoller(tenancy, peers), discovery
