"""Kubernetes discovery: list pods, watch from the list's resourceVersion, list again whenever the
watch cannot be trusted, and hand every new set of serving pods to the router.

vllm-stack's router only ever watched, so a DELETED event lost while its stream was down left a
deleted pod routable for hours (production-stack #1091, #656). Here the watch only makes changes
fast; the list is the truth. Pods are listed again when a watch breaks, on 410 Gone or any other
ERROR event, after any failed request, and every `resync_s` however healthy the watch looks (a
watch can also go silent without failing). A watch the server ends cleanly (its timeout) resumes
from the last resourceVersion seen, bookmarks included, as the API server intends. While the API
server cannot be reached the last known pods keep serving (the health probes still eject dead
ones) and requests are retried with a doubling, capped delay.

lightkube loads the connection settings (in-cluster service account, KUBECONFIG or
~/.kube/config, client certificates, exec plugins, CA bundles) and builds the authenticated
httpx2 client. The list and watch requests are made here rather than through lightkube's watch
helper, which neither asks for bookmarks nor lets its caller see a 410: it restarts the watch
without a resourceVersion, which replays ADDED events but never the DELETED ones that were missed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2
import orjson
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ConfigError

from vfleet.router.config import KubeSettingsError, RouterConfig
from vfleet.router.kubepods import (
    PodEndpoint,
    PodRules,
    PodTable,
    WatchError,
    apply_event,
    changes,
    from_list,
    list_page,
)

log = logging.getLogger("vfleet.router.kube")

PAGE_SIZE = 500  # pods per list request (`limit`); larger sets are read in pages
REQUEST_TIMEOUT_S = 10.0  # connect, and read for lists; a watch waits on its resync deadline
BACKOFF_BASE_S = 0.5  # delay after the second failure in a row, doubling from there
BACKOFF_MAX_S = 30.0  # and never more than this (nor more than resync_s)
HEALTHY_WATCH_S = 1.0  # a watch open this long counts as working even if nothing happened
RESYNC = "periodic resync"

Publish = Callable[[Sequence[PodEndpoint]], None]


class ApiError(Exception):
    """The API server answered with an error status (or an ERROR event)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}" if code else message)
        self.code = code


@dataclass(frozen=True, slots=True)
class KubeTarget:
    """What to watch and how to reach the API server, resolved once at start-up."""

    config: SingleConfig  # lightkube's: server, credentials, CA
    namespace: str
    selector: str  # label selector
    rules: PodRules
    resync_s: float  # seconds between full relists
    page_size: int = PAGE_SIZE

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{quote(self.namespace, safe='')}/pods"


def load_target(cfg: RouterConfig) -> KubeTarget | None:
    """Discovery settings read at the edge; None when it is off, KubeSettingsError if unusable."""
    if cfg.k8s_selector is None:
        return None
    try:
        if cfg.k8s_api_url:
            kube = KubeConfig.from_one(
                cluster=Cluster(server=cfg.k8s_api_url), user=User(), namespace=cfg.k8s_namespace
            )
        else:
            kube = KubeConfig.from_env()
        single = kube.get()
        assert single is not None  # get() without a default raises instead
        client_adapter.ConnectionParams().httpx_params(single)  # certificates, credentials: now
    except ConfigError as exc:
        raise KubeSettingsError(
            f"Kubernetes discovery: {exc} (no in-cluster service account either); "
            "set KUBECONFIG, or --k8s-api-url for a plain HTTP server such as `kubectl proxy`"
        ) from exc
    except (OSError, KeyError, ValueError) as exc:  # unreadable files, bad YAML or certificates
        raise KubeSettingsError(
            f"Kubernetes discovery: cannot use the kubeconfig: {exc!r}"
        ) from exc
    return KubeTarget(
        config=single,
        namespace=cfg.k8s_namespace or single.namespace,
        selector=cfg.k8s_selector,
        rules=PodRules(port=cfg.k8s_port, model_label=cfg.k8s_model_label),
        resync_s=cfg.k8s_resync_s,
    )


def backoff_s(failures: int, resync_s: float) -> float:
    """Delay before the next request after `failures` in a row: the first retry is at once."""
    if failures <= 1:
        return 0.0
    cap = min(BACKOFF_MAX_S, max(BACKOFF_BASE_S, resync_s))
    return min(cap, BACKOFF_BASE_S * 2.0 ** (failures - 2))


class Discovery:
    """The list+watch loop for one router process; `publish` gets every new set of pods."""

    def __init__(self, target: KubeTarget, publish: Publish) -> None:
        self.target = target
        self.publish = publish
        self.listed = asyncio.Event()  # set once the first list has been published
        self._pods: Mapping[str, PodEndpoint] = {}
        self._failures = 0  # requests in a row that got nowhere
        self._seen = False  # the current watch stream has delivered an event

    async def run(self) -> None:
        params = client_adapter.ConnectionParams(timeout=httpx2.Timeout(REQUEST_TIMEOUT_S))
        async with client_adapter.AsyncClient(self.target.config, params) as client:
            while True:
                await asyncio.sleep(backoff_s(self._failures, self.target.resync_s))
                try:
                    table = await self._list(client)
                    self._replace(table.pods, relist=True)
                    why = await self._watch(client, table)
                    level = logging.DEBUG if why == RESYNC else logging.INFO
                    log.log(level, "kubernetes: listing pods again: %s", why)
                except (httpx2.HTTPError, ApiError, ValueError) as exc:
                    self._failed(exc)
                except Exception as exc:  # a bug: say so loudly, then keep discovering
                    log.exception("kubernetes discovery failed unexpectedly")
                    self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        log.warning(
            "kubernetes: %s (%s) in namespace %s; listing pods again in %.1f s",
            exc,
            type(exc).__name__,
            self.target.namespace,
            backoff_s(self._failures, self.target.resync_s),
        )

    def _replace(self, pods: Mapping[str, PodEndpoint], relist: bool = False) -> None:
        added, gone = changes(self._pods, pods)
        for ep in added:
            log.info(
                "kubernetes: pod %s serves at %s (%s)",
                ep.name,
                ep.url,
                ",".join(ep.models) or "models from /v1/models",
            )
        for ep in gone:
            log.info(
                "kubernetes: pod %s (%s) no longer serves%s",
                ep.name,
                ep.url,
                " (found by a full list)" if relist else "",
            )
        self._pods = pods
        self.publish(list(pods.values()))
        self.listed.set()

    async def _list(self, client: httpx2.AsyncClient) -> PodTable:
        items: list[dict[str, Any]] = []
        version: str | None = None
        token: str | None = None
        while True:
            params = {"labelSelector": self.target.selector, "limit": str(self.target.page_size)}
            if token:
                params["continue"] = token
            resp = await client.get(self.target.path, params=params)
            if resp.status_code != 200:
                raise _api_error(resp.status_code, resp.content)
            page, page_version, token = list_page(orjson.loads(resp.content))
            items += page
            version = version or page_version  # every page is of the first page's snapshot
            if token is None:
                return from_list(items, version, self.target.rules)

    async def _watch(self, client: httpx2.AsyncClient, table: PodTable) -> str:
        """Follow changes until a full list is due; why it is. Raises when a request fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.target.resync_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                self._failures = 0
                return RESYNC
            params = {
                "labelSelector": self.target.selector,
                "watch": "1",
                "resourceVersion": table.version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(math.ceil(left)),
            }
            opened = loop.time()
            self._seen = False
            try:
                async with asyncio.timeout(left):
                    table, why = await self._follow(client, params, table)
            except TimeoutError:
                self._failures = 0
                return RESYNC
            finally:
                # A stream that delivered events, or stayed open a while, worked: whatever
                # ends it now is news, not a failing server, so the next try is immediate.
                if self._seen or loop.time() - opened >= HEALTHY_WATCH_S:
                    self._failures = 0
            if not self._seen and loop.time() - opened < HEALTHY_WATCH_S:
                self._failures += 1  # ended at once, with nothing: back off before the next try
            if why is not None:
                return why
            # The server ended the stream (its timeout): go on from the last version seen.
            await asyncio.sleep(backoff_s(self._failures, self.target.resync_s))

    async def _follow(
        self,
        client: httpx2.AsyncClient,
        params: dict[str, str],
        table: PodTable,
    ) -> tuple[PodTable, str | None]:
        """Apply one watch stream's events: (table, why a full list is due, or None)."""
        timeout = httpx2.Timeout(REQUEST_TIMEOUT_S, read=None)
        async with client.stream("GET", self.target.path, params=params, timeout=timeout) as resp:
            if resp.status_code == 410:
                return table, "410 Gone: the resourceVersion is too old"
            if resp.status_code != 200:
                raise _api_error(resp.status_code, await resp.aread())
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                result = apply_event(table, orjson.loads(line), self.target.rules)
                if isinstance(result, WatchError):
                    if result.code == 410:
                        return table, f"410 Gone ({result.message})"
                    raise ApiError(result.code, f"ERROR event: {result.reason} {result.message}")
                self._seen = True
                if result.pods is not table.pods:
                    self._replace(result.pods)
                table = result
        return table, None


def _api_error(status: int, body: bytes) -> ApiError:
    """The Status message the API server sent, e.g. RBAC's `pods is forbidden: ...`."""
    try:
        message = str(orjson.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    return ApiError(status, message or body[:200].decode(errors="replace"))
