"""What one router scrape says about scaling and routing, against real router and sim processes:
the autoscalers' desired replicas (`vfleet up`'s, from the file its supervisor writes; KEDA's,
from what the router's external scaler answered) beside the replicas the router sees ready, the
routing decisions by policy and reason, and the `--metrics-grace` flag. With several workers
every scrape, whichever worker answers, shows the same numbers."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from conftest import SimProcess
from httpclient import Client, raw_socket, wait_for
from vfleet.router.keda import externalscaler_pb2 as pb
from vfleet.router.keda import externalscaler_pb2_grpc as pb_grpc

Factory = Callable[..., SimProcess]
SAMPLE = re.compile(r"^([a-z_:]+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')
SCALER_LINE = re.compile(r"KEDA external scaler \(gRPC\) on [\d.]+:(\d+)")
SCRAPES = 6  # with two workers, six fresh connections all but surely reach both
COMPLETION = {"model": "chat", "prompt": "hi", "max_tokens": 2}


def series(router: SimProcess, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """One scrape's samples of `family`, keyed by their sorted (label, value) pairs."""
    got = Client(router.url).get("/metrics")  # a fresh connection: any worker may answer
    assert got.status == 200
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for line in got.body.decode().splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == family:
            out[tuple(sorted(LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


Labels = tuple[tuple[str, str], ...]


def every_scrape(router: SimProcess, family: str, want: dict[Labels, float]) -> Callable[[], bool]:
    """A check: SCRAPES scrapes in a row all show exactly `want` for `family`."""

    def check() -> bool:
        return all(series(router, family) == want for _ in range(SCRAPES))

    return check


def desired(model: str, source: str) -> tuple[tuple[str, str], ...]:
    return (("model", model), ("source", source))


def model(name: str) -> tuple[tuple[str, str], ...]:
    return (("model", name),)


def write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # the supervisor's way: never half a file


@pytest.mark.timeout(60)
def test_local_desired_replicas_come_from_the_autoscale_file_on_every_worker(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    sim = sim_factory("--model", "chat", "--profile", "instant")
    state = tmp_path / "autoscale.json"
    write_json(state, {"models": {"chat": {"desired": 3}, "cold": {"desired": 0}}})
    cfg = tmp_path / "router.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"backends": [sim.url], "autoscale_file": str(state), "workers": 2, "models": ["cold"]}
        )
    )
    router = router_factory("--config", str(cfg))
    want = {desired("chat", "local"): 3.0, desired("cold", "local"): 0.0}
    assert wait_for(every_scrape(router, "vfleet_router_autoscaler_desired_replicas", want), 20)
    # the actual side: the sim is ready for chat; nothing serves cold
    ready = {model("chat"): 1.0, model("cold"): 0.0}
    assert wait_for(every_scrape(router, "vfleet_router_model_ready_replicas", ready), 20)

    write_json(state, {"models": {"chat": {"desired": 1}}})  # the autoscaler scaled down
    want = {desired("chat", "local"): 1.0}
    assert wait_for(every_scrape(router, "vfleet_router_autoscaler_desired_replicas", want), 20)

    sim.stop()  # the replica goes: ready drops, desired stays what the autoscaler said
    ready = {model("chat"): 0.0, model("cold"): 0.0}
    assert wait_for(every_scrape(router, "vfleet_router_model_ready_replicas", ready), 20)

    state.unlink()  # no autoscaler: no desired series
    assert wait_for(every_scrape(router, "vfleet_router_autoscaler_desired_replicas", {}), 20)


@pytest.fixture
def held_sockets() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def hold(router: SimProcess, name: str) -> socket.socket:
    """A request for `name` left waiting for its answer: held while no engine serves it."""
    body = json.dumps({"model": name, "prompt": "x", "max_tokens": 1}).encode()
    sock = raw_socket(router.url)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
        b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


def scaler_port(router: SimProcess) -> int:
    found: list[int] = []

    def seen() -> bool:
        found.extend(
            int(m.group(1)) for line in list(router.log) if (m := SCALER_LINE.search(line))
        )
        return bool(found)

    assert wait_for(seen, timeout_s=10), "".join(router.log)
    return found[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_keda_desired_replicas_are_the_answered_metric_over_its_target(
    workers: str,
    sim_factory: Factory,
    router_factory: Factory,
    held_sockets: list[socket.socket],
) -> None:
    sim = sim_factory("--model", "warm", "--profile", "instant")
    router = router_factory(
        "--backend", sim.url, "--model", "cold", "--keda-port", "0", "--hold-timeout", "60",
        "--workers", workers,
    )  # fmt: skip
    held_sockets.extend(hold(router, "cold") for _ in range(3))
    meta = {"scalerAddress": "x", "models": "cold", "target": "2"}
    ref = pb.ScaledObjectRef(name="chat", namespace="llm", scalerMetadata=meta)
    request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="vfleet-cold")
    with grpc.insecure_channel(f"127.0.0.1:{scaler_port(router)}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)

        def answered(value: float) -> Callable[[], bool]:
            def check() -> bool:
                got = stub.GetMetrics(request, timeout=10).metricValues[0].metricValueFloat
                return float(got) == value

            return check

        assert wait_for(answered(3.0), timeout_s=20)  # three held requests
        # KEDA's HPA: ceil(3 / 2) replicas; the scrape, on any worker, says the same
        want = {desired("cold", "keda"): 2.0}
        assert wait_for(every_scrape(router, "vfleet_router_autoscaler_desired_replicas", want))
        ready = {model("cold"): 0.0, model("warm"): 1.0}
        assert wait_for(every_scrape(router, "vfleet_router_model_ready_replicas", ready), 20)
        for sock in held_sockets:
            sock.close()  # the clients gave up: no demand left
        assert wait_for(answered(0.0), timeout_s=20)
        want = {desired("cold", "keda"): 0.0}
        assert wait_for(every_scrape(router, "vfleet_router_autoscaler_desired_replicas", want))


def decisions(router: SimProcess) -> dict[tuple[str, str, str], float]:
    got = series(router, "vfleet_router_routing_decisions_total")
    return {(dict(k)["model"], dict(k)["policy"], dict(k)["reason"]): v for k, v in got.items()}


@pytest.mark.timeout(60)
def test_routing_decisions_are_counted_by_policy_and_reason(
    sim_factory: Factory, router_factory: Factory
) -> None:
    sims = [sim_factory("--model", "chat", "--profile", "instant") for _ in range(2)]
    router = router_factory(
        *(a for s in sims for a in ("--backend", s.url)),
        "--policy", "least_load", "--model-policy", "chat=round_robin",
        "--model", "cold", "--hold-timeout", "0", "--workers", "2",
    )  # fmt: skip
    client = Client(router.url)
    for _ in range(5):
        assert client.post("/v1/completions", COMPLETION).status == 200
    cold = {**COMPLETION, "model": "cold"}
    assert client.post("/v1/completions", cold).status == 503  # nothing serves it, no holding
    want = {("chat", "round_robin", "picked"): 5.0, ("cold", "least_load", "none"): 1.0}
    assert wait_for(lambda: all(decisions(router) == want for _ in range(SCRAPES)), 10)


@pytest.mark.timeout(60)
def test_metrics_grace_flag_retires_a_departed_endpoints_series(
    tmp_path: Path, sim_factory: Factory, router_factory: Factory
) -> None:
    sims = [sim_factory("--model", "chat", "--profile", "instant") for _ in range(2)]
    feed = tmp_path / "endpoints.json"
    write_json(feed, [{"url": s.url, "models": ["chat"]} for s in sims])
    router = router_factory(
        "--endpoints-file", str(feed), "--policy", "round_robin", "--metrics-grace", "0.5"
    )
    client = Client(router.url)
    for _ in range(4):
        assert client.post("/v1/completions", COMPLETION).status == 200

    def upstreams() -> set[str]:
        return {dict(k)["upstream"] for k in series(router, "vfleet_router_requests_total")}

    assert upstreams() == {s.url for s in sims}
    write_json(feed, [{"url": sims[0].url, "models": ["chat"]}])  # the second one leaves
    assert wait_for(lambda: upstreams() == {sims[0].url}, timeout_s=20)


def test_a_negative_metrics_grace_is_one_line_of_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vfleet", "router", "--backend", "http://127.0.0.1:9",
         "--metrics-grace", "-1"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "--metrics-grace" in done.stderr, done.stderr
    assert len([line for line in lines if "Error" in line]) == 1


@pytest.mark.timeout(90)
def test_vfleet_up_exports_desired_and_ready_replicas_through_the_router(tmp_path: Path) -> None:
    from test_local_autoscale import write_fleet
    from test_local_up import start_up

    spec = write_fleet(tmp_path, {"minReplicas": 0, "maxReplicas": 2, "target": 100}, workers=2)
    up = start_up(tmp_path / "run", "-f", str(spec))
    try:
        router = SimProcess(up.proc, up.url, [])  # only its URL is used: scrapes go there
        at_zero = {desired("m", "local"): 0.0}
        assert wait_for(every_scrape(router, "vfleet_router_autoscaler_desired_replicas", at_zero))
        assert series(router, "vfleet_router_model_ready_replicas") == {model("m"): 0.0}
        body = {"model": "m", "prompt": "hello", "max_tokens": 2}
        assert Client(up.url).post("/v1/completions", body).status == 200  # held, then woken
        awake = {desired("m", "local"): 1.0}
        assert wait_for(every_scrape(router, "vfleet_router_autoscaler_desired_replicas", awake))
        ready = {model("m"): 1.0}
        assert wait_for(every_scrape(router, "vfleet_router_model_ready_replicas", ready), 20)
    finally:
        up.stop()


def test_the_autoscale_file_keeps_only_whole_non_negative_counts() -> None:
    from vfleet.router.autoscaled import MAX_MODELS, parse_desired

    raw = {
        "models": {
            "a": {"desired": 2},
            "b": {"desired": -1},
            "c": {"desired": True},
            "d": {"desired": "3"},
            "e": {"desired": float("nan")},
            "f": 4,
            "g": {"desired": 1.0},
        }
    }
    assert parse_desired(raw) == {"a": 2, "g": 1}
    assert parse_desired([1, 2]) == {} and parse_desired({"models": []}) == {}
    many = {"models": {f"m{i}": {"desired": 1} for i in range(MAX_MODELS + 5)}}
    assert len(parse_desired(many)) == MAX_MODELS


@pytest.mark.timeout(60)
def test_a_retry_is_its_own_routing_decision(sim_factory: Factory, router_factory: Factory) -> None:
    crashing = sim_factory("--model", "chat", "--profile", "instant", "--crash-after-requests", "2")
    steady = sim_factory("--model", "chat", "--profile", "instant")
    router = router_factory(
        "--backend", crashing.url, "--backend", steady.url, "--policy", "round_robin"
    )
    client = Client(router.url)
    for _ in range(8):
        assert client.post("/v1/completions", COMPLETION).status == 200
    assert crashing.wait_exit(10) == 1  # it did crash, so some request was retried
    got = decisions(router)
    retries = series(router, "vfleet_router_retries_total")[model("chat")]
    assert got[("chat", "round_robin", "picked")] == 8  # one first choice per request
    # A reset on a reused connection is retried once on the same engine first, with no choice
    # made; a retry elsewhere is one.
    assert 1 <= got[("chat", "round_robin", "retry")] <= retries
