"""The router on SIGTERM: stops accepting, lets requests in flight finish, then exits."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable

from conftest import SimProcess
from httpclient import metric_value, request, wait_for


def test_sigterm_lets_in_flight_requests_finish(
    sim_factory: Callable[..., SimProcess], router_factory: Callable[..., SimProcess]
) -> None:
    # ~1 s of decoding: 200 tokens at the small profile's ~1 ms per step, slowed 5x.
    sim = sim_factory("--model", "m", "--profile", "small", "--time-scale", "5")
    router = router_factory("--backend", sim.url)
    result: dict[str, object] = {}

    def long_request() -> None:
        body = {"model": "m", "prompt": "x", "max_tokens": 200, "ignore_eos": True}
        status, raw = request(router.url, "POST", "/v1/completions", body, timeout=30)
        result["status"] = status
        result["tokens"] = json.loads(raw)["usage"]["completion_tokens"]

    t = threading.Thread(target=long_request)
    t.start()

    # Wait until the router has the request in flight, then ask it to stop.
    def in_flight() -> bool:
        text = request(router.url, "GET", "/metrics")[1].decode()
        return metric_value(text, "vfleet_router_endpoint_inflight", endpoint=sim.url) >= 1

    assert wait_for(in_flight, timeout_s=10)
    router.proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert result == {"status": 200, "tokens": 200}
    assert router.wait_exit(timeout_s=10) == 0
