"""Kubernetes discovery end to end: a real router, real `vfleet sim` engines as the pods' servers,
and a fake API server (tests/kubefake.py) that speaks list+watch and fails the ways clusters do.

The router's view is read from outside: the endpoints it knows are the `upstream` labels of its
`vfleet_router_endpoint_healthy` samples, and which engine served a request from the engines' own
counters. Pods point at 127.0.0.1 with each sim's port (the `http` container port).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProcess, start_sim
from httpclient import Client, free_port, wait_for
from kubefake import FakeKube
from vfleet.router.config import RouterConfig
from vfleet.router.kubepods import PodEndpoint
from vfleet.router.kubewatch import Discovery, KubeTarget, backoff_s, load_target
from vfleet.router.upstream import host_port

Factory = Callable[..., SimProcess]
SELECTOR = "app.kubernetes.io/component=engine"
LABELS = {"app.kubernetes.io/component": "engine"}
COMPLETION = {"model": "demo", "prompt": "Hello, pods.", "max_tokens": 2, "ignore_eos": True}
SLOW_RESYNC = "600"  # so only events, relists and 410s can explain a change, never the timer


@pytest.fixture(scope="module")
def sim_a() -> Iterator[SimProcess]:
    sp = start_sim("--model", "demo", "--profile", "instant")
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def sim_b() -> Iterator[SimProcess]:
    sp = start_sim("--model", "demo", "--profile", "instant")
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def sim_other() -> Iterator[SimProcess]:
    sp = start_sim("--model", "other", "--profile", "instant")
    yield sp
    sp.stop()


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


def start_kube_router(
    router_factory: Factory, fake: FakeKube, *args: str, resync: str = SLOW_RESYNC, **kw: Any
) -> SimProcess:
    flags = ("--k8s-api-url", fake.url, "--k8s-selector", SELECTOR, "--k8s-resync", resync)
    return router_factory(*flags, "--health-interval", "0.2", *args, **kw)


def endpoint_health(router: SimProcess) -> dict[str, bool]:
    """Every endpoint the router knows, and whether it passes health probes."""
    text = Client(router.url).get("/metrics").body.decode()
    prefix = 'vfleet_router_endpoint_healthy{upstream="'
    return {
        line[len(prefix) :].partition('"')[0]: float(line.rpartition(" ")[2]) == 1.0
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def known(router: SimProcess) -> set[str]:
    return set(endpoint_health(router))


def becomes(router: SimProcess, urls: set[str], timeout_s: float = 10.0) -> bool:
    """Wait (bounded) until the router knows exactly `urls`, all of them healthy."""
    return wait_for(
        lambda: endpoint_health(router) == dict.fromkeys(urls, True), timeout_s=timeout_s
    )


def successes(sim: SimProcess) -> float:
    text = Client(sim.url).get("/metrics").body.decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


def serve_some(router: SimProcess, sims: list[SimProcess], n: int = 6) -> list[float]:
    """Send n completions (each must succeed); how many each engine finished meanwhile."""
    before = [successes(s) for s in sims]
    c = Client(router.url)
    for _ in range(n):
        resp = c.post("/v1/completions", COMPLETION)
        assert resp.status == 200, resp.body
    after: list[float] = []

    def settled() -> bool:
        after[:] = [successes(s) for s in sims]
        return sum(after) - sum(before) >= n

    assert wait_for(settled, timeout_s=5)
    return [a - b for a, b in zip(after, before, strict=True)]


def pod_port(sim: SimProcess, **kw: Any) -> dict[str, Any]:
    return {"port": sim.port, "labels": dict(LABELS), **kw}


# -- which pods serve -------------------------------------------------------------------------


def test_only_ready_running_undeleted_matching_pods_serve(
    kube: FakeKube,
    router_factory: Factory,
    sim_a: SimProcess,
    sim_b: SimProcess,
    sim_other: SimProcess,
) -> None:
    kube.add_pod("ready", **pod_port(sim_a))
    kube.add_pod("not-ready", **pod_port(sim_b, ready=False))
    kube.add_pod("pending", **pod_port(sim_b, phase="Pending", ip=None))
    kube.add_pod("terminating", **pod_port(sim_other))
    kube.terminate("terminating")
    kube.add_pod("other-app", port=sim_other.port, labels={"app.kubernetes.io/component": "db"})
    kube.add_pod("elsewhere", namespace="other", **pod_port(sim_b))
    router = start_kube_router(router_factory, kube)
    assert becomes(router, {sim_a.url})
    assert serve_some(router, [sim_a, sim_b, sim_other]) == [6, 0, 0]
    list_params = kube.lists()[0].params
    assert list_params["labelSelector"] == SELECTOR
    watch = kube.watches()[0].params
    assert watch["allowWatchBookmarks"] == "true"
    assert watch["resourceVersion"] == kube.version  # from the list's resourceVersion


def test_deleted_pod_is_dropped_at_once_and_traffic_moves(
    kube: FakeKube, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    kube.add_pod("a", **pod_port(sim_a))
    kube.add_pod("b", **pod_port(sim_b))
    router = start_kube_router(router_factory, kube)
    assert becomes(router, {sim_a.url, sim_b.url})
    kube.delete("b")
    assert becomes(router, {sim_a.url}, timeout_s=5)
    assert serve_some(router, [sim_a, sim_b]) == [6, 0]
    assert len(kube.lists()) == 1  # the DELETED event did it, no relist was needed


def test_not_ready_and_terminating_pods_stop_serving_and_ready_ones_return(
    kube: FakeKube, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    kube.add_pod("a", **pod_port(sim_a))
    kube.add_pod("b", **pod_port(sim_b))
    router = start_kube_router(router_factory, kube)
    assert becomes(router, {sim_a.url, sim_b.url})
    kube.set_ready("b", False)
    assert becomes(router, {sim_a.url}, timeout_s=5)
    kube.set_ready("b", True)
    assert becomes(router, {sim_a.url, sim_b.url}, timeout_s=5)
    kube.terminate("b")
    assert becomes(router, {sim_a.url}, timeout_s=5)
    kube.set_labels("a", {"app.kubernetes.io/component": "retired"})  # left the selector
    assert becomes(router, set(), timeout_s=5)
    assert len(kube.lists()) == 1


# -- missed events: relists -------------------------------------------------------------------


def test_pod_deleted_while_the_watch_is_down_is_gone_after_the_relist(
    kube: FakeKube, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    kube.add_pod("a", **pod_port(sim_a))
    kube.add_pod("b", **pod_port(sim_b))
    router = start_kube_router(router_factory, kube)
    assert becomes(router, {sim_a.url, sim_b.url})
    assert kube.wait_watches(1)
    kube.pause()  # the router's next requests wait unanswered: it is cut off
    kube.drop_watches()
    assert wait_for(lambda: kube.open_watches() == 0)
    kube.delete("b")  # while no watch is connected
    assert known(router) == {sim_a.url, sim_b.url}  # nothing told it yet
    kube.resume()
    assert becomes(router, {sim_a.url}, timeout_s=10)
    assert len(kube.lists()) == 2  # the relist after the broken watch found it gone
    # the log is read by another thread: the line may arrive just after the endpoint set changed
    assert wait_for(
        lambda: any("no longer serves (found by a full list)" in line for line in router.log)
    )


def test_silently_stale_watch_is_corrected_by_the_periodic_relist(
    kube: FakeKube, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    """production-stack #1091: the DELETED event never arrives, the watch looks healthy."""
    kube.add_pod("a", **pod_port(sim_a))
    kube.add_pod("b", **pod_port(sim_b))
    router = start_kube_router(router_factory, kube, resync="1")
    assert becomes(router, {sim_a.url, sim_b.url})
    kube.lossy = True  # watches stay open but miss everything from now on
    kube.delete("b")
    lists = len(kube.lists())
    assert becomes(router, {sim_a.url}, timeout_s=10)  # one resync interval, plus slack
    assert len(kube.lists()) > lists
    assert serve_some(router, [sim_a, sim_b]) == [6, 0]


@pytest.mark.parametrize(
    "how", ["error-event-on-open-watch", "error-event-on-resume", "http-410-on-resume"]
)
def test_410_gone_makes_the_router_list_again(
    how: str, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    with FakeKube(gone_as_http=how == "http-410-on-resume") as kube:
        kube.add_pod("a", **pod_port(sim_a))
        kube.add_pod("b", **pod_port(sim_b))
        router = start_kube_router(router_factory, kube)
        assert becomes(router, {sim_a.url, sim_b.url})
        assert kube.wait_watches(1)
        kube.lossy = True
        kube.delete("b")  # never delivered: only a list can show it
        kube.lossy = False
        if how == "error-event-on-open-watch":
            kube.send_error(410)
        else:  # history compacted past the router's version, then the stream ends cleanly
            kube.compact()
            kube.end_watches()
        assert becomes(router, {sim_a.url}, timeout_s=10)
        assert len(kube.lists()) == 2
        assert wait_for(lambda: any("410 Gone" in line for line in router.log))


def test_bookmarks_move_the_version_the_watch_resumes_from(
    kube: FakeKube, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    kube.add_pod("a", **pod_port(sim_a))
    router = start_kube_router(router_factory, kube)
    assert becomes(router, {sim_a.url})
    assert kube.wait_watches(1)
    for i in range(3):  # changes the router's selector does not see: no events for it
        kube.add_pod(f"unrelated-{i}", port=1, labels={"app": "db"})
    bookmark = kube.bookmark()  # queued before the end below, so the router reads it first
    kube.compact()  # versions before the bookmark are gone: only the bookmark's still works
    kube.end_watches()
    assert wait_for(lambda: len(kube.watches()) == 2, timeout_s=5)
    assert kube.watches()[1].params["resourceVersion"] == bookmark
    kube.add_pod("b", **pod_port(sim_b))  # and the resumed watch delivers what comes next
    assert becomes(router, {sim_a.url, sim_b.url}, timeout_s=5)
    assert len(kube.lists()) == 1  # no 410, so no relist


# -- ports and models -------------------------------------------------------------------------


def test_models_from_the_label_or_from_the_engine(
    kube: FakeKube,
    router_factory: Factory,
    sim_a: SimProcess,
    sim_b: SimProcess,
    sim_other: SimProcess,
) -> None:
    kube.add_pod("a", **pod_port(sim_a, labels={**LABELS, "vfleet.io/model": "demo"}))
    kube.add_pod("b", **pod_port(sim_b, labels={**LABELS, "vfleet.io/model": "labelled"}))
    kube.add_pod("c", **pod_port(sim_other))  # no label: /v1/models says "other"
    router = start_kube_router(router_factory, kube)
    c = Client(router.url)
    assert wait_for(
        lambda: (
            {m["id"] for m in c.get("/v1/models").json()["data"]} == {"demo", "labelled", "other"}
        ),
        timeout_s=10,
    )
    # The label decides: b is not asked for demo, though its engine serves it.
    assert serve_some(router, [sim_a, sim_b]) == [6, 0]
    other = c.post("/v1/completions", {**COMPLETION, "model": "other"})
    assert other.status == 200, other.body


def test_port_from_the_annotation_or_the_default_flag(
    kube: FakeKube, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    kube.add_pod("no-named-port", port=None, labels=dict(LABELS))
    kube.add_pod(
        "annotated", port=1, labels=dict(LABELS), annotations={"vfleet.io/port": str(sim_b.port)}
    )
    router = start_kube_router(router_factory, kube, "--k8s-port", str(sim_a.port))
    assert becomes(router, {sim_a.url, sim_b.url})


@pytest.fixture
def sim_v6() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A sim on the IPv6 loopback (start_sim only knows 127.0.0.1)."""
    cmd = [
        sys.executable,
        "-m",
        "vfleet",
        "sim",
        "--host",
        "::1",
        "--port",
        "0",
        "--model",
        "demo",
        "--profile",
        "instant",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the ready line (bounded by the test timeout)
    try:
        assert "ready on" in line, line
        yield proc, int(line.strip().rpartition(":")[2])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


def test_ipv6_pod_ips_are_served(
    kube: FakeKube, router_factory: Factory, sim_v6: tuple[subprocess.Popen[str], int]
) -> None:
    kube.add_pod("v6", ip="::1", port=sim_v6[1], labels=dict(LABELS))
    router = start_kube_router(router_factory, kube)
    url = f"http://[::1]:{sim_v6[1]}"
    assert becomes(router, {url})
    resp = Client(router.url).post("/v1/completions", COMPLETION)
    assert resp.status == 200, resp.body


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("http://[fd00::1]:8123", ("fd00::1", 8123)),
        ("http://[::1]", ("::1", 80)),
        ("http://feed.local/endpoints", ("feed.local", 80)),
        ("http://feed.local:9000/a/b", ("feed.local", 9000)),
    ],
)
def test_host_and_port_of_an_endpoint_url(url: str, expected: tuple[str, int]) -> None:
    assert host_port(url) == expected


# -- the API server misbehaves ----------------------------------------------------------------


def test_unreachable_api_server_keeps_the_router_up_and_retrying(
    router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    port = free_port()
    router = router_factory(
        "--k8s-api-url",
        f"http://127.0.0.1:{port}",
        "--k8s-selector",
        SELECTOR,
        "--backend",
        sim_a.url,
        "--health-interval",
        "0.2",
        "--k8s-resync",
        "2",
    )  # retries back off to 2 s at most
    assert becomes(router, {sim_a.url})  # static backends serve meanwhile
    assert serve_some(router, [sim_a], n=2) == [2]
    assert wait_for(lambda: sum("listing pods again in" in line for line in router.log) >= 3)
    with FakeKube(port=port) as kube:  # the API server comes up
        kube.add_pod("b", **pod_port(sim_b))
        assert becomes(router, {sim_a.url, sim_b.url}, timeout_s=30)
    assert router.proc.poll() is None


@pytest.mark.parametrize("status", [500, 403])
def test_api_errors_are_logged_and_retried_until_it_recovers(
    status: int, kube: FakeKube, router_factory: Factory, sim_a: SimProcess
) -> None:
    kube.add_pod("a", **pod_port(sim_a))
    kube.fail_with = status
    router = start_kube_router(router_factory, kube, resync="2")  # backoff capped at 2 s
    assert wait_for(lambda: sum(f"HTTP {status}" in line for line in router.log) >= 2)
    assert known(router) == set()
    assert Client(router.url).get("/ready").status == 503
    kube.fail_with = None
    assert becomes(router, {sim_a.url}, timeout_s=20)
    assert Client(router.url).get("/ready").status == 200


def test_kubeconfig_credentials_and_namespace_are_used(
    tmp_path: Path, router_factory: Factory, sim_a: SimProcess
) -> None:
    with FakeKube(token="s3cret") as kube:
        kube.add_pod("a", namespace="llm", **pod_port(sim_a))
        kube.add_pod("elsewhere", **pod_port(sim_a, port=1))
        config = tmp_path / "kubeconfig"
        config.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
            f"clusters:\n- name: fake\n  cluster:\n    server: {kube.url}\n"
            "users:\n- name: me\n  user:\n    token: s3cret\n"
            "contexts:\n- name: test\n  context: {cluster: fake, user: me, namespace: llm}\n"
        )
        router = router_factory(
            "--k8s-selector", SELECTOR, "--health-interval", "0.2", env={"KUBECONFIG": str(config)}
        )
        assert becomes(router, {sim_a.url})
        assert kube.lists()[0].path == "/api/v1/namespaces/llm/pods"


def run_router(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vfleet", "router", "--host", "127.0.0.1", "--port", "0", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (
            ("--k8s-selector", SELECTOR),
            {"KUBECONFIG": "/nonexistent/kubeconfig"},
            "/nonexistent/kubeconfig",
        ),
        (("--k8s-selector", " "), {}, "k8s_selector is empty"),
        (("--k8s-namespace", "llm", "--backend", "http://127.0.0.1:1"), {}, "--k8s-selector"),
        (
            (
                "--k8s-selector",
                SELECTOR,
                "--k8s-api-url",
                "http://127.0.0.1:1",
                "--k8s-resync",
                "0",
            ),
            {},
            "k8s_resync_s",
        ),
    ],
    ids=["missing-kubeconfig", "empty-selector", "namespace-without-selector", "zero-resync"],
)
def test_unusable_settings_are_one_line_errors(
    args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    out = run_router(*args, env=env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    assert needle in lines[0], lines


# -- workers ----------------------------------------------------------------------------------


def test_every_worker_watches_and_drops_a_deleted_pod(
    kube: FakeKube, router_factory: Factory, sim_a: SimProcess, sim_b: SimProcess
) -> None:
    kube.add_pod("a", **pod_port(sim_a))
    kube.add_pod("b", **pod_port(sim_b))
    router = start_kube_router(router_factory, kube, "--workers", "2")
    assert wait_for(lambda: sum("ready on" in line for line in router.log) == 2, timeout_s=10)
    assert kube.wait_watches(2)
    kube.delete("b")
    # Each /metrics answer comes from one worker; fresh connections reach both in turn.
    assert wait_for(lambda: all(known(router) == {sim_a.url} for _ in range(20)), timeout_s=10)
    assert serve_some(router, [sim_a, sim_b], n=10) == [10, 0]


# -- the loop itself, in process --------------------------------------------------------------


def test_backoff_starts_at_once_then_doubles_up_to_a_cap() -> None:
    delays = [backoff_s(n, 30.0) for n in range(1, 10)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_s(9, 2.0) == 2.0  # never longer than a resync interval


def test_large_pod_sets_are_listed_in_pages(kube: FakeKube) -> None:
    for i in range(5):
        kube.add_pod(f"p{i}", port=9000 + i, labels=dict(LABELS))
    target = load_target(RouterConfig(k8s_selector=SELECTOR, k8s_api_url=kube.url))
    assert isinstance(target, KubeTarget)
    target = KubeTarget(
        target.config, target.namespace, target.selector, target.rules, resync_s=60.0, page_size=2
    )
    published: list[list[PodEndpoint]] = []

    async def main() -> None:
        discovery = Discovery(target, lambda pods: published.append(list(pods)))
        task = asyncio.create_task(discovery.run())
        try:
            await asyncio.wait_for(discovery.listed.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert sorted(ep.url for ep in published[0]) == [
        f"http://127.0.0.1:{9000 + i}" for i in range(5)
    ]
    pages = kube.lists()
    assert [r.params.get("limit") for r in pages] == ["2", "2", "2"]
    assert "continue" not in pages[0].params and all("continue" in r.params for r in pages[1:])
