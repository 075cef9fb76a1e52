"""The circuit breaker on engine errors, end to end: three real simulator engines behind a real
router, one made to answer 500s through its fault injection (`POST /sim/faults`). The router
ejects it after the threshold (its clients, with `--retry-5xx`, only see successes), sends it
no more than its trial requests while it is ejected, and serves it again once it recovers."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from conftest import SimProcess, run_vfleet
from httpclient import Client

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., SimProcess]
BODY = {"model": "m", "prompt": "hi", "max_tokens": 2}
MAX_REQUESTS = 200  # every loop below is bounded by this many requests


def seen(sim: SimProcess) -> int:
    """Inference requests the engine has received (its fault injector counts them)."""
    got = Client(sim.url).get("/sim/faults").json()
    return int(got["requests_seen"])


def faults(sim: SimProcess, **changes: object) -> None:
    assert Client(sim.url).post("/sim/faults", changes).status == 200


def events(router: SimProcess, upstream: str, event: str) -> float:
    """vfleet_router_breaker_events_total of one endpoint and event (0 before the first)."""
    text = Client(router.url).get("/metrics").body.decode()
    pattern = (
        rf'^vfleet_router_breaker_events_total\{{(?=[^}}]*upstream="{re.escape(upstream)}")'
        rf'(?=[^}}]*event="{event}")[^}}]*\}} (\S+)$'
    )
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def breaker_open(router: SimProcess, upstream: str) -> float:
    return Client(router.url).metric("vfleet_router_breaker_open", upstream=upstream)


def send(router: SimProcess, n: int) -> list[int]:
    client = Client(router.url, 20)
    return [client.post("/v1/completions", BODY).status for _ in range(n)]


def test_an_engine_answering_500s_is_ejected_then_served_again(
    sim_factory: Factory, router_factory: Factory
) -> None:
    good = [sim_factory("--model", "m", "--profile", "instant") for _ in range(2)]
    bad = sim_factory("--model", "m", "--profile", "instant")
    router = router_factory(
        *(a for s in (*good, bad) for a in ("--backend", s.url)),
        "--policy",
        "round_robin",
        "--retry-5xx",
        "--breaker-min-requests",
        "4",
        "--breaker-window",
        "60",
        "--breaker-cooldown",
        "1",
        "--breaker-max-cooldown",
        "2",
    )
    assert send(router, 6) == [200] * 6
    assert seen(bad) >= 1  # round robin reaches it while it is well
    faults(bad, error_rate=1.0)

    # Its 500s are retried on the others; after four of them it is ejected.
    statuses: list[int] = []
    while not events(router, bad.url, "opened") and len(statuses) < MAX_REQUESTS:
        statuses += send(router, 3)
    assert events(router, bad.url, "opened") >= 1, "".join(router.log)
    assert statuses and set(statuses) == {200}
    assert any("ejected" in line for line in router.log)

    # While it is ejected it gets its trial requests only (each fails, and is retried): one
    # per half-open, plus one when it half-opened just before `trials` was read.
    trials = events(router, bad.url, "half_opened")
    before = seen(bad)
    assert send(router, 30) == [200] * 30
    tried = events(router, bad.url, "half_opened") - trials
    assert seen(bad) - before <= tried + 1, (seen(bad) - before, tried)

    # Once it answers again, a trial succeeds and it is back in the rotation.
    faults(bad, error_rate=0.0)
    statuses = []
    while not events(router, bad.url, "closed") and len(statuses) < MAX_REQUESTS:
        statuses += send(router, 1)
        time.sleep(0.05)  # a cool-down (2 s at most) passes within a few dozen of these
    assert events(router, bad.url, "closed") >= 1, "".join(router.log)
    assert set(statuses) == {200}
    assert breaker_open(router, bad.url) == 0
    before = seen(bad)
    assert send(router, 9) == [200] * 9
    assert seen(bad) - before >= 1
    assert all(s.proc.poll() is None for s in (*good, bad, router))


def test_the_last_engine_of_a_model_is_never_ejected(
    sim_factory: Factory, router_factory: Factory
) -> None:
    bad = sim_factory("--model", "m", "--profile", "instant", "--error-rate", "1.0")
    router = router_factory(
        "--backend", bad.url, "--breaker-min-requests", "2", "--breaker-cooldown", "30"
    )
    statuses = send(router, 6)
    assert set(statuses) == {500}  # its errors reach the clients: nothing else serves it
    assert events(router, bad.url, "spared") >= 1
    assert events(router, bad.url, "opened") == 0
    assert breaker_open(router, bad.url) == 0
    faults(bad, error_rate=0.0)
    assert send(router, 2) == [200, 200]  # served all along, so at once


def test_with_the_breaker_off_an_erring_engine_keeps_its_share(
    sim_factory: Factory, router_factory: Factory
) -> None:
    good = sim_factory("--model", "m", "--profile", "instant")
    bad = sim_factory("--model", "m", "--profile", "instant", "--error-rate", "1.0")
    router = router_factory(
        "--backend",
        good.url,
        "--backend",
        bad.url,
        "--policy",
        "round_robin",
        "--retry-5xx",
        "--no-breaker",
        "--breaker-min-requests",
        "2",
    )
    assert send(router, 20) == [200] * 20  # retried on the good one
    assert seen(bad) >= 5  # still its turns in the rotation
    assert events(router, bad.url, "opened") == 0


def test_without_retry_5xx_a_500_is_relayed(sim_factory: Factory, router_factory: Factory) -> None:
    good = sim_factory("--model", "m", "--profile", "instant")
    bad = sim_factory("--model", "m", "--profile", "instant", "--error-rate", "1.0")
    router = router_factory(
        "--backend", good.url, "--backend", bad.url, "--policy", "round_robin", "--no-breaker"
    )
    assert sorted(set(send(router, 4))) == [200, 500]


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--breaker-error-rate", "1.5", "error rate"),
        ("--breaker-min-requests", "0", "min requests"),
        ("--breaker-window", "0", "window"),
        ("--breaker-cooldown", "-1", "cool-down"),
    ],
)
def test_bad_breaker_settings_are_one_line_errors(flag: str, value: str, words: str) -> None:
    done = run_vfleet("router", "--backend", "http://127.0.0.1:9", flag, value)
    assert done.returncode != 0
    assert words in done.stderr
    assert "Traceback" not in done.stderr
