"""Local autoscaling (`vfleet up` with `autoscaling`): the plan's engine slots, the pure slot
choice and demand parsing, and real fleets of simulated engines that wake from zero under a
burst, follow steady load up and back down to zero, and drain replicas without losing a stream.

Windows, periods and grace times in the fleets are short so each end-to-end test runs in
seconds; every wait is bounded and nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpclient import Conn, wait_for
from test_local_up import Up, start_up, vfleet
from vfleet.autoscale import Sample, ScalePolicy
from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.models import Fleet
from vfleet.local.packer import PackError
from vfleet.local.plan import Options, build
from vfleet.local.scaler import (
    Demand,
    ModelScaler,
    SlotView,
    demand_of,
    make_sample,
    pick,
    routed,
)

KEY = "sk-test-autoscale"
# Target 2 in flight per replica; windows of seconds so a test sees a whole cycle quickly.
QUICK = {"target": 2, "stableWindowS": 3, "panicWindowS": 1}
AUTH = {"Authorization": f"Bearer {KEY}"}


def fleet(**raw: Any) -> Fleet:
    return Fleet.model_validate({"name": "t", **raw})


def ports(start: int = 9000) -> Iterator[int]:
    return iter(range(start, start + 1000))


def auto_model(name: str, gpu: float, **auto: Any) -> dict[str, Any]:
    return {"name": name, "source": f"org/{name}", "gpu": gpu, "autoscaling": auto}


# -- the plan -----------------------------------------------------------------------------------


def test_unbounded_max_is_capped_and_min_replicas_start() -> None:
    f = fleet(engine="sim", models=[auto_model("m", 0.1, minReplicas=1)])
    plan = build(f, Options(engine_rules=load_rules()), ports())
    assert [e.key for e in plan.engines] == [f"m-{i}" for i in range(8)]
    assert [e.initial for e in plan.engines] == [True] + [False] * 7
    assert plan.slots == {"m": 8}
    assert plan.devices == (0,)  # 8 x 10% share one simulated GPU
    assert len({e.port for e in plan.engines}) == 8
    assert any("at most 8 here (--max-replicas-cap 8)" in n for n in plan.notices)
    capped = build(f, Options(max_replicas_cap=3, engine_rules=load_rules()), ports())
    assert [e.key for e in capped.engines] == ["m-0", "m-1", "m-2"]


def test_scale_to_zero_plans_slots_but_starts_none() -> None:
    f = fleet(engine="sim", models=[auto_model("m", 0.5, minReplicas=0, maxReplicas=3)])
    plan = build(f, Options(engine_rules=load_rules()), ports())
    assert [e.initial for e in plan.engines] == [False, False, False]
    assert plan.devices == (0, 1)  # simulated GPUs for every slot of the max
    assert any("scaled to zero; it starts on its first request" in n for n in plan.notices)


def test_slots_that_do_not_fit_are_dropped_with_a_notice() -> None:
    f = fleet(
        models=[
            {"name": "fixed", "source": "org/f", "gpu": 0.5},
            auto_model("m", 0.2, minReplicas=1, maxReplicas=5),
        ]
    )
    plan = build(
        f, Options(devices=(0,), vllm_version=(0, 26, 0), engine_rules=load_rules()), ports()
    )
    assert [e.key for e in plan.engines] == ["fixed-0", "m-0", "m-1"]
    assert plan.slots == {"m": 2}
    assert "model m: at most 2 replicas fit" in plan.notices


def test_min_replicas_that_do_not_fit_are_a_pack_error() -> None:
    f = fleet(models=[auto_model("m", 0.6, minReplicas=2, maxReplicas=4)])
    with pytest.raises(PackError, match="replicas of m do not fit"):
        build(f, Options(devices=(0,), vllm_version=(0, 26, 0), engine_rules=load_rules()), ports())


# -- slot choice and demand ---------------------------------------------------------------------


@st.composite
def slot_views(draw: st.DrawFn) -> list[SlotView]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        wanted = draw(st.booleans())
        healthy = wanted and draw(st.booleans())
        busy = not wanted and draw(st.booleans())
        out.append(SlotView(f"m-{i}", i, wanted, healthy, busy))
    return out


@given(slot_views(), st.integers(0, 10))
def test_pick_reaches_desired_as_far_as_free_slots_allow(
    slots: list[SlotView], desired: int
) -> None:
    start, drain = pick(slots, desired)
    by_key = {s.key: s for s in slots}
    assert not (start and drain)
    assert all(not by_key[k].wanted and not by_key[k].busy for k in start)
    assert all(by_key[k].wanted for k in drain)
    wanted = sum(s.wanted for s in slots) + len(start) - len(drain)
    free = sum(not s.wanted and not s.busy for s in slots)
    assert wanted == min(desired, sum(s.wanted for s in slots) + free)
    # Ready replicas go last, highest replica first; starts take the lowest free replicas.
    kept = [s for s in slots if s.wanted and s.key not in drain]
    for k in drain:
        assert all((by_key[k].healthy, -by_key[k].replica) <= (s.healthy, -s.replica) for s in kept)
    skipped = [s for s in slots if not s.wanted and not s.busy and s.key not in start]
    assert all(by_key[k].replica < s.replica for k in start for s in skipped)


def test_demand_sums_served_names_and_ignores_the_rest() -> None:
    doc = {
        "models": {
            "a": {"inflight": 2, "held": 3, "requests": 10},
            "a-lora": {"inflight": 1, "held": 0, "requests": 4},
            "b": {"inflight": 9, "held": 9, "requests": 9},
            "bad": "x",
        },
        "endpoints": {"http://127.0.0.1:1/": 0, "http://127.0.0.1:2": 3},
        "workers": 2,
    }
    assert demand_of(doc, ("a", "a-lora", "absent", "bad")) == Demand(3, 3, 14)
    assert demand_of({}, ("a",)) == Demand()
    assert routed(doc) == {"http://127.0.0.1:1": 0, "http://127.0.0.1:2": 3}
    sample = make_sample(5.0, Demand(3, 3, 14), [], 0)
    assert (sample.concurrency, sample.requests, sample.ready, sample.kv_usage) == (6, 14, 0, 0)


def test_model_scaler_records_changes_not_every_decision() -> None:
    policy = ScalePolicy(
        min_replicas=0,
        max_replicas=4,
        target=2,
        stable_window_s=4,
        panic_window_s=1,
        scale_to_zero_grace_s=2,
        period_s=0.5,
    )
    s = ModelScaler("m", ("m",), policy, desired=0)
    t, current = 0.0, 0
    for concurrency in [6, 6, 6, 6, 6, 6] + [0] * 30:
        d = s.observe(Sample(t, concurrency, 0, ready=current), current, wall=1000 + t)
        current, t = d.desired, t + 0.5
    tos = [h["to"] for h in s.history]
    assert tos[0] == 1 and "wake" in s.history[0]["reason"]
    assert max(tos) == 3 and tos[-1] == 0
    peak = tos.index(3)
    assert tos[: peak + 1] == sorted(tos[: peak + 1])  # up, then only down: no flapping
    assert tos[peak:] == sorted(tos[peak:], reverse=True)
    assert s.changes == len(tos) and s.row()["desired"] == 0


# -- end to end ---------------------------------------------------------------------------------


def write_fleet(tmp_path: Path, auto: dict[str, Any], keys: bool = False, workers: int = 1) -> Path:
    """One autoscaled chat model on simulated engines that take 2 s to open their port (as
    vLLM loads weights) and stream a token every ~11 ms."""
    spec = {
        "name": "elastic",
        "engine": "sim",
        "models": [
            {
                "name": "chat",
                "servedNames": ["m"],
                "source": "org/m",
                "gpu": 0.2,
                "sim": {"timeScale": 10, "extraArgs": ["--startup-delay", "2"]},
                "autoscaling": auto,
            }
        ],
        "router": {"workers": workers, **({"apiKeys": [KEY]} if keys else {})},
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps(spec))
    return path


def model_state(up: Up) -> dict[str, Any]:
    state: dict[str, Any] = up.state()["models"]["chat"]
    return state


def chat(conn: Conn, max_tokens: int, stream: bool = False) -> tuple[int, bytes]:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    resp = conn.request("POST", "/v1/chat/completions", body, headers=AUTH)
    return resp.status, resp.body


class Load:
    """`n` clients sending streaming chat requests back to back until stopped; every outcome
    is kept: (status, whether the stream ended with [DONE])."""

    def __init__(self, url: str, n: int, max_tokens: int) -> None:
        self.url, self.max_tokens = url, max_tokens
        self.stop = threading.Event()
        self.results: list[tuple[int, bool]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def client(self) -> None:
        with Conn(self.url, timeout_s=60) as conn:
            while not self.stop.is_set():
                try:
                    status, body = chat(conn, self.max_tokens, stream=True)
                except OSError as exc:  # a cut connection is a lost request
                    status, body = -1, repr(exc).encode()
                with self.lock:
                    self.results.append((status, body.endswith(b"data: [DONE]\n\n")))

    def finish(self) -> list[tuple[int, bool]]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads)
        return self.results


@pytest.fixture
def fleet_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def make(auto: dict[str, Any], keys: bool = False, workers: int = 1) -> Up:
        up = start_up(tmp_path / "run", "-f", str(write_fleet(tmp_path, auto, keys, workers)))
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_burst_at_zero_wakes_the_model_and_every_request_succeeds_in_order(
    fleet_up: Callable[..., Up], workers: int
) -> None:
    # With two router workers the held requests are spread over both processes: the wake-up
    # must come from either, and each must release its own queue.
    up = fleet_up({"minReplicas": 0, "maxReplicas": 2, "target": 100}, keys=True, workers=workers)
    assert model_state(up)["current"] == 0
    assert all(e["state"] == "idle" and e["pid"] is None for e in up.state()["engines"])
    # 100 clients, each on its own keep-alive connection: the first requests all arrive while
    # no engine runs; each client then sends two more, and every answer must match its request.
    results: dict[int, list[tuple[int, int]]] = {}
    barrier = threading.Barrier(100)

    def client(i: int) -> None:
        out = []
        with Conn(up.url, timeout_s=60) as conn:
            barrier.wait(timeout=20)
            for k in (1, 2, 3):
                status, body = chat(conn, max_tokens=k)
                tokens = json.loads(body)["usage"]["completion_tokens"] if status == 200 else -1
                out.append((status, tokens))
        results[i] = out

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert len(results) == 100
    assert all(r == [(200, 1), (200, 2), (200, 3)] for r in results.values()), results
    state = model_state(up)
    assert state["current"] >= 1 and state["ready"] >= 1
    assert state["history"][0]["from"] == 0 and state["history"][0]["reason"].startswith("wake")


@pytest.mark.timeout(90)
def test_steady_load_scales_to_three_then_back_to_one_and_to_zero(
    fleet_up: Callable[..., Up],
) -> None:
    up = fleet_up(dict(QUICK, minReplicas=0, maxReplicas=4, scaleToZeroGraceS=5))
    load = Load(up.url, n=6, max_tokens=40)  # ~6 in flight: 3x one replica's target of 2
    try:
        assert wait_for(lambda: model_state(up)["ready"] == 3, timeout_s=20, interval_s=0.1)
        changes = model_state(up)["changes"]
        # Twice the stable window at a steady 3 (panic over, stable average in charge).
        assert not wait_for(lambda: model_state(up)["changes"] != changes, timeout_s=6)
    finally:
        results = load.finish()
    assert results and all(r == (200, True) for r in results), results
    assert wait_for(lambda: model_state(up)["current"] == 0, timeout_s=25, interval_s=0.1)
    state = model_state(up)
    tos = [h["to"] for h in state["history"]]
    peak = tos.index(3)
    assert tos[: peak + 1] == sorted(tos[: peak + 1]), state["history"]
    assert tos[peak:] == sorted(tos[peak:], reverse=True), state["history"]
    assert 4 not in tos and 1 in tos[peak:], state["history"]  # kept 1 through the grace
    assert wait_for(lambda: all(e["state"] == "idle" for e in up.state()["engines"]))
    assert json.loads((up.run_dir / "endpoints.json").read_text()) == []
    res = vfleet("status", "--run-dir", str(up.run_dir))
    assert res.returncode == 0, res.stderr
    assert "LAST DECISION" in res.stdout and "0..4 concurrency 2" in res.stdout


@pytest.mark.timeout(90)
def test_scale_down_under_streaming_load_loses_no_request(fleet_up: Callable[..., Up]) -> None:
    up = fleet_up(dict(QUICK, minReplicas=1, maxReplicas=3))
    heavy = Load(up.url, n=6, max_tokens=40)
    try:
        assert wait_for(lambda: model_state(up)["ready"] == 3, timeout_s=20, interval_s=0.1)
        light = Load(up.url, n=2, max_tokens=300)  # ~3 s streams, one replica's worth
    finally:
        results = heavy.finish()
    try:
        # Two replicas drain while the light load streams; least-load routing spreads the two
        # streams over two engines, so a drained engine has one in flight.
        drained = wait_for(
            lambda: (
                model_state(up)["current"] == 1
                and sum(e["state"] == "idle" for e in up.state()["engines"]) == 2
            ),
            timeout_s=30,
            interval_s=0.1,
        )
    finally:
        results += light.finish()
    assert drained, model_state(up)
    assert all(r == (200, True) for r in results), [r for r in results if r != (200, True)]
    assert len(results) > 20
    state = model_state(up)
    assert [h["to"] for h in state["history"]][-1] == 1, state["history"]
    drains = [e["drained"] for e in up.state()["engines"] if e["drained"]]
    assert len(drains) == 2 and any(d["requests"] > 0 for d in drains), drains


@pytest.mark.timeout(60)
def test_a_crashed_replica_that_is_still_wanted_is_restarted(fleet_up: Callable[..., Up]) -> None:
    up = fleet_up(dict(QUICK, minReplicas=1, maxReplicas=2))
    first = up.engine("chat-0")
    os.killpg(first["pid"], signal.SIGKILL)

    def restarted() -> bool:
        row = up.engine("chat-0")
        return row["restarts"] == 1 and row["state"] == "healthy"

    assert wait_for(restarted, timeout_s=30, interval_s=0.1)
    assert up.engine("chat-0")["pid"] != first["pid"]
    assert up.engine("chat-1")["state"] == "idle"  # no load: its standby slot stays idle
    state = model_state(up)
    assert (state["desired"], state["current"], state["ready"]) == (1, 1, 1)
