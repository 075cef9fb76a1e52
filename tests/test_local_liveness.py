"""`vfleet up` and an engine that stops answering /health while its process lives on (a hung
engine keeps its port): while it fails it is out of the endpoints file and the router sends it
nothing; after `failures` failed probes it is restarted; one that recovers first is back in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from httpclient import metric_value, request, wait_for
from test_local_up import read_state, start_up

FLEET = """
name: live
engine: sim
models:
  - name: chat
    servedNames: [m]
    source: org/m
    replicas: 2
    gpu: 0.5
    health: {intervalS: 0.2, timeoutS: 1, failures: 3}
"""


# Health probes every 0.2 s but a restart only after 10,000 failures: the failing engine stays
# up, failing, for as long as the test looks at it.
PATIENT = FLEET.replace("failures: 3", "failures: 10000")


def _engine(state: dict[str, Any], key: str) -> dict[str, Any]:
    return next(e for e in state["engines"] if e["key"] == key)


def _served(url: str) -> float:
    """Requests the engine itself finished (its vLLM counter, every finish reason summed)."""
    text = request(url, "GET", "/metrics")[1].decode()
    return sum(
        metric_value(text, "vllm:request_success_total", finished_reason=reason)
        for reason in ("stop", "length", "abort")
    )


def _router_healthy(router: str, engine: str) -> bool:
    """Whether the router lists `engine` as a healthy endpoint (absent: not healthy)."""
    text = request(router, "GET", "/metrics")[1].decode()
    try:
        return metric_value(text, "vfleet_router_endpoint_healthy", upstream=engine) == 1
    except AssertionError:  # no sample: the endpoint is not in the router's table at all
        return False


def _chat(router: str) -> int:
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    return request(router, "POST", "/v1/chat/completions", body)[0]


def test_failing_engine_is_out_of_the_router_while_it_fails(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(PATIENT)
    run_dir = tmp_path / "run"
    up = start_up(run_dir, "-f", str(spec))
    try:
        state = read_state(run_dir)
        bad, good = _engine(state, "chat-0")["url"], _engine(state, "chat-1")["url"]
        assert wait_for(lambda: _router_healthy(up.url, bad), timeout_s=15)
        status, _ = request(bad, "POST", "/sim/faults", {"health_failing": True})
        assert status == 200

        def out_of_the_router() -> bool:
            listed = {e["url"] for e in json.loads((run_dir / "endpoints.json").read_text())}
            row = _engine(read_state(run_dir), "chat-0")
            return (
                row["state"] == "unhealthy"
                and bad not in listed
                and not _router_healthy(up.url, bad)
            )

        assert wait_for(out_of_the_router, timeout_s=15, interval_s=0.1)
        before_bad, before_good = _served(bad), _served(good)
        assert [_chat(up.url) for _ in range(20)] == [200] * 20
        # Every request went to the healthy engine; the failing one (still running, still
        # answering requests if asked) got none.
        assert _served(bad) == before_bad
        assert _served(good) == before_good + 20
        row = _engine(read_state(run_dir), "chat-0")
        assert (row["state"], row["restarts"]) == ("unhealthy", 0)
        assert row["pid"] == _engine(state, "chat-0")["pid"]

        # Recovered before its restart: back in the router, and given requests again (least
        # load takes turns between equals; a bounded number of tries).
        request(bad, "POST", "/sim/faults", {"health_failing": False})
        assert wait_for(lambda: _router_healthy(up.url, bad), timeout_s=15, interval_s=0.1)
        for _ in range(100):
            assert _chat(up.url) == 200
            if _served(bad) > before_bad:
                break
        assert _served(bad) > before_bad
        assert _engine(read_state(run_dir), "chat-0")["restarts"] == 0
    finally:
        up.stop()


def test_engine_failing_health_checks_is_restarted(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(FLEET)
    run_dir = tmp_path / "run"
    up = start_up(run_dir, "-f", str(spec))
    try:
        state = read_state(run_dir)
        first = _engine(state, "chat-0")
        # The engine's process stays up but its /health answers 503 from now on.
        status, _ = request(first["url"], "POST", "/sim/faults", {"health_failing": True})
        assert status == 200

        def restarted() -> bool:
            row = _engine(read_state(run_dir), "chat-0")
            return row["restarts"] == 1 and row["state"] == "healthy"

        assert wait_for(restarted, timeout_s=30, interval_s=0.1)
        row = _engine(read_state(run_dir), "chat-0")
        assert row["pid"] != first["pid"]
        endpoints = json.loads((run_dir / "endpoints.json").read_text())
        assert {e["url"] for e in endpoints} == {first["url"], _engine(state, "chat-1")["url"]}
        assert _engine(read_state(run_dir), "chat-1")["restarts"] == 0
    finally:
        up.stop()
