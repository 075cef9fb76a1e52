"""Placing replicas on GPUs (`local.packer`) and the engine plan built from a fleet
(`local.plan`). Both are pure: hypothesis for the packer's invariants, small fleets for the plan."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vfleet.engines.rulefile import load_rules
from vfleet.engines.rules import parse
from vfleet.fleetspec.load import load
from vfleet.fleetspec.models import Fleet
from vfleet.local.packer import PackError, Placement, Request, derived_memory, fewest_devices, pack
from vfleet.local.plan import Options, PlanError, build
from vfleet.local.weights import on_disk

ROOT = Path(__file__).parent.parent
EPS = 1e-6
RULES = load_rules()

# -- hypothesis: the packer's invariants -------------------------------------------------------


@st.composite
def requests(draw: st.DrawFn) -> list[Request]:
    """Replicas of a few models: whole GPUs, shares of one, or no GPU; memory given or not."""
    out: list[Request] = []
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["whole", "share", "share", "cpu"]))
        devices, share = 0, 0
        if kind == "whole":
            devices = draw(st.integers(1, 4))
        elif kind == "share":
            share = draw(st.integers(1, 99))
        memory = draw(st.none() | st.floats(0.01, 1.0).map(lambda f: round(f, 2)))
        for replica in range(draw(st.integers(1, 4))):
            out.append(Request(f"m{i}", replica, devices, share, memory))
    return out


DEVICES = st.lists(st.integers(0, 15), min_size=0, max_size=6, unique=True)


def by_device(placements: Sequence[Placement]) -> dict[int, list[Placement]]:
    out: dict[int, list[Placement]] = defaultdict(list)
    for p in placements:
        for d in p.devices:
            out[d].append(p)
    return out


def check_invariants(reqs: list[Request], devices: list[int], placed: list[Placement]) -> None:
    # Every request placed exactly once, in request order.
    assert [(p.model, p.replica) for p in placed] == [(r.model, r.replica) for r in reqs]
    for r, p in zip(reqs, placed, strict=True):
        assert set(p.devices) <= set(devices)
        assert len(set(p.devices)) == len(p.devices)
        if r.devices:
            assert len(p.devices) == r.devices
            assert p.share_pct == 100
        elif r.share_pct:
            assert len(p.devices) == 1
            assert p.share_pct == r.share_pct
            want = r.memory if r.memory is not None else derived_memory(r.share_pct, RULES)
            assert p.memory == pytest.approx(want)
            if r.memory is None:  # derived: never more memory than compute share
                assert p.memory <= r.share_pct / 100
        else:
            assert p.devices == ()
    for d, on in by_device(placed).items():
        # Never more than 100% of a device.
        assert sum(p.share_pct for p in on) <= 100, (d, on)
        # Whole-GPU replicas have their devices to themselves.
        if any(p.share_pct == 100 for p in on):
            assert len(on) == 1, (d, on)
        # Never more than all of a device's memory.
        shared = [p.memory or 0.0 for p in on if p.share_pct < 100]
        assert sum(shared) <= 1.0 + EPS, (d, on)


@settings(max_examples=300, deadline=None)
@given(requests(), DEVICES)
def test_pack_invariants(reqs: list[Request], devices: list[int]) -> None:
    try:
        placed = pack(reqs, devices, RULES)
    except PackError as exc:
        # The message names at least one model, and only models that were asked for.
        names = {r.model for r in reqs}
        head = str(exc).split(" do not fit", 1)[0].removeprefix("replicas of ")
        assert head, str(exc)
        assert set(head.split(", ")) <= names, str(exc)
        return
    check_invariants(reqs, devices, placed)


@settings(max_examples=200, deadline=None)
@given(requests())
def test_fewest_devices_is_enough_and_one_less_is_not(reqs: list[Request]) -> None:
    n = fewest_devices(reqs, RULES)
    check_invariants(reqs, list(range(n)), pack(reqs, range(n), RULES))
    needs_gpu = any(r.devices or r.share_pct for r in reqs)
    if needs_gpu:
        with pytest.raises(PackError):
            pack(reqs, range(n - 1), RULES)
    else:
        assert n <= 1


@settings(max_examples=100, deadline=None)
@given(requests(), DEVICES)
def test_pack_is_deterministic(reqs: list[Request], devices: list[int]) -> None:
    try:
        first = pack(reqs, devices, RULES)
    except PackError as exc:
        with pytest.raises(PackError) as again:
            pack(reqs, devices, RULES)
        assert str(again.value) == str(exc)
        return
    assert pack(reqs, devices, RULES) == first


# -- examples ----------------------------------------------------------------------------------


def shares(model: str, n: int, pct: int, memory: float | None = None) -> list[Request]:
    return [Request(model, i, 0, pct, memory) for i in range(n)]


def test_four_fifths_fit_on_one_device() -> None:
    placed = pack(shares("embed", 4, 20), [0], RULES)
    assert [p.devices for p in placed] == [(0,)] * 4
    assert [p.share_pct for p in placed] == [20] * 4
    assert [p.memory for p in placed] == [0.18] * 4  # 90% of the share: headroom for profiling


def test_seed_000_four_replicas_with_their_own_memory_fit_on_one_device() -> None:
    placed = pack(shares("qwen3embed", 4, 20, memory=0.15), [0], RULES)
    assert {p.devices for p in placed} == {(0,)}
    assert [p.memory for p in placed] == [0.15] * 4


def test_quickstart_fits_on_one_device() -> None:
    reqs = shares("chat", 2, 30) + shares("embed", 4, 10)
    placed = pack(reqs, [0], RULES)
    assert sum(p.share_pct for p in placed) == 100
    assert fewest_devices(reqs, RULES) == 1


def test_whole_gpus_get_devices_nobody_else_uses() -> None:
    reqs = [Request("big", 0, 2), *shares("small", 3, 50)]
    placed = pack(reqs, [0, 1, 2, 3], RULES)
    big = placed[0]
    assert big.devices == (0, 1)
    assert all(set(p.devices).isdisjoint(big.devices) for p in placed[1:])


def test_cpu_only_replicas_take_no_device() -> None:
    placed = pack([Request("cpu", 0)], [], RULES)
    assert placed == [Placement("cpu", 0, (), 0, None)]


def test_memory_limits_sharing_even_when_compute_fits() -> None:
    reqs = shares("hungry", 2, 10, memory=0.6)
    with pytest.raises(PackError, match="hungry"):
        pack(reqs, [0], RULES)
    assert fewest_devices(reqs, RULES) == 2


def test_share_memory_follows_the_engine_rules() -> None:
    """The headroom is the rules file's (the chart applies the same number): 60% of a share
    lets three 30% shares that 90% would not fit share one device with a 40% replica."""
    raw = yaml.safe_load((ROOT / "charts/vfleet/files/engine-rules.yaml").read_text())
    assert derived_memory(30, RULES) == RULES.share_memory(30) == 0.27
    raw["gpuShare"]["headroomPercent"] = 60
    lean = parse(raw)
    assert derived_memory(30, lean) == 0.18
    reqs = [*shares("chat", 2, 30), Request("big", 0, 0, 40, memory=0.6)]
    with pytest.raises(PackError):
        pack(reqs, [0], RULES)  # 0.27 + 0.27 + 0.6 > 1
    placed = pack(reqs, [0], lean)
    assert [p.memory for p in placed] == [0.18, 0.18, 0.6]
    assert fewest_devices(reqs, lean) == 1 < fewest_devices(reqs, RULES)


def test_pack_error_names_the_models_that_do_not_fit() -> None:
    reqs = [*shares("chat", 2, 60), *shares("embed", 2, 10)]
    with pytest.raises(PackError) as info:
        pack(reqs, [0], RULES)
    msg = str(info.value)
    assert msg.startswith("replicas of chat do not fit on 1 GPU(s) [0]")
    assert "the fleet asks for 1.4 GPUs" in msg
    assert "chat 2 x 0.6 GPU" in msg and "embed 2 x 0.1 GPU" in msg


def test_pack_error_with_no_devices() -> None:
    with pytest.raises(PackError) as info:
        pack([Request("a", 0, 1), *shares("b", 1, 50)], [], RULES)
    assert str(info.value).startswith("replicas of a, b do not fit on 0 GPU(s) [none]")


def test_whole_gpu_request_larger_than_the_machine() -> None:
    with pytest.raises(PackError, match="replicas of llama do not fit on 2 GPU"):
        pack([Request("llama", 0, 4)], [0, 1], RULES)


@pytest.mark.parametrize(
    ("reqs", "n"),
    [
        ([], 0),
        ([Request("cpu", 0)], 1),
        (shares("a", 1, 1), 1),
        (shares("a", 5, 20), 1),
        (shares("a", 6, 20), 2),
        (shares("a", 3, 34), 2),
        (shares("a", 2, 60), 2),
        (shares("a", 2, 50) + shares("b", 4, 25), 2),
        ([Request("a", 0, 1), *shares("b", 2, 50)], 2),
        ([Request("a", 0, 2), Request("a", 1, 2)], 4),
        ([Request("a", 0, 8)], 8),
        (shares("a", 3, 60) + shares("b", 3, 40), 3),
    ],
)
def test_fewest_devices_simple_cases(reqs: list[Request], n: int) -> None:
    assert fewest_devices(reqs, RULES) == n


# -- the plan ----------------------------------------------------------------------------------


def fleet(**fields: Any) -> Fleet:
    return Fleet.model_validate(fields)


def ports() -> itertools.count[int]:
    return itertools.count(20000)


def test_sim_engines_without_gpus_get_simulated_devices() -> None:
    qs = load([ROOT / "examples" / "quickstart.yaml"]).fleet
    plan = build(qs, Options(engine_rules=RULES), ports())
    assert plan.simulated_gpus is True
    assert plan.devices == (0,)
    assert [e.key for e in plan.engines] == [
        "chat-0",
        "chat-1",
        "embed-0",
        "embed-1",
        "embed-2",
        "embed-3",
    ]
    assert [e.share_pct for e in plan.engines] == [30, 30, 10, 10, 10, 10]
    assert all(e.devices == (0,) for e in plan.engines)
    assert len({e.port for e in plan.engines}) == 6
    assert all(e.engine == "sim" for e in plan.engines)
    assert all(e.env["CUDA_VISIBLE_DEVICES"] == "0" for e in plan.engines)
    assert "chat: --gpu-memory-utilization 0.27 derived from its 30% GPU share" in plan.notices


def test_sim_fleet_spread_over_as_many_simulated_devices_as_needed() -> None:
    f = fleet(
        engine="sim",
        models=[
            {"name": "big", "source": "org/big", "gpu": 2},
            {"name": "s", "source": "org/s", "gpu": 0.5, "replicas": 3},
        ],
    )
    plan = build(f, Options(engine_rules=RULES), ports())
    assert plan.simulated_gpus is True
    assert plan.devices == (0, 1, 2, 3)


def test_given_gpus_are_used_as_given() -> None:
    f = fleet(engine="sim", models=[{"name": "s", "source": "org/s", "gpu": 0.5, "replicas": 2}])
    plan = build(f, Options(engine_rules=RULES, devices=(3, 5)), ports())
    assert plan.simulated_gpus is False
    assert plan.devices == (3, 5)
    assert {e.devices for e in plan.engines} <= {(3,), (5,)}


def test_replicas_that_do_not_fit_the_given_gpus() -> None:
    f = fleet(engine="sim", models=[{"name": "s", "source": "org/s", "gpu": 0.6, "replicas": 2}])
    with pytest.raises(PackError, match="replicas of s do not fit on 1 GPU"):
        build(f, Options(engine_rules=RULES, devices=(0,)), ports())


def test_seed_000_plan_four_replicas_on_one_simulated_gpu() -> None:
    f = load([ROOT / "examples" / "seeds" / "000-embedding.yaml"]).fleet
    plan = build(f, Options(engine_rules=RULES, engine="sim"), ports())
    assert plan.simulated_gpus is True
    assert [(e.devices, e.share_pct) for e in plan.engines] == [((0,), 20)] * 4
    for e in plan.engines:
        argv = e.argv
        assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.15"  # its own, not derived
        assert argv[argv.index("--task") + 1] == "embed"
        assert e.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert any("CUDA_VISIBLE_DEVICES=0 replaced" in n for n in plan.notices)


def test_local_source_that_does_not_exist_is_a_plan_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    f = fleet(engine="sim", models=[{"name": "m", "source": str(missing), "gpu": 0.5}])
    assert on_disk(f, None) == {}
    with pytest.raises(PlanError) as info:
        build(f, Options(engine_rules=RULES, on_disk=on_disk(f, None)), ports())
    assert str(info.value) == f"m: model path {missing} does not exist"


def test_local_source_that_exists_is_passed_as_a_path(tmp_path: Path) -> None:
    f = fleet(engine="sim", models=[{"name": "m", "source": str(tmp_path), "gpu": 0.5}])
    (e,) = build(f, Options(engine_rules=RULES, on_disk=on_disk(f, None)), ports()).engines
    assert e.argv[e.argv.index("--model") + 1] == str(tmp_path)


def test_plan_reads_no_filesystem_only_what_the_caller_found(tmp_path: Path) -> None:
    """An existing path the caller did not report is missing to the plan; a reported one is
    used as reported (the plan never looks at the disk itself)."""
    f = fleet(engine="sim", models=[{"name": "m", "source": str(tmp_path), "gpu": 0.5}])
    with pytest.raises(PlanError, match="does not exist"):
        build(f, Options(engine_rules=RULES), ports())
    (e,) = build(
        f, Options(engine_rules=RULES, on_disk={"m": "/reported/elsewhere"}), ports()
    ).engines
    assert e.argv[e.argv.index("--model") + 1] == "/reported/elsewhere"


def test_pvc_source_missing_under_pvc_root_on_vllm(tmp_path: Path) -> None:
    f = fleet(models=[{"name": "m", "source": "pvc://llm/bge-m3", "gpu": 1}])
    found = on_disk(f, str(tmp_path))
    assert found == {}
    with pytest.raises(PlanError) as info:
        build(
            f,
            Options(engine_rules=RULES, devices=(0,), pvc_root=str(tmp_path), on_disk=found),
            ports(),
        )
    assert str(info.value) == (
        f"m: {tmp_path}/llm/bge-m3 does not exist (PVC 'llm' under --pvc-root {tmp_path})"
    )


def test_pvc_source_on_vllm_needs_pvc_root() -> None:
    f = fleet(models=[{"name": "m", "source": "pvc://llm/bge-m3", "gpu": 1}])
    with pytest.raises(PlanError, match="give --pvc-root DIR"):
        build(f, Options(engine_rules=RULES, devices=(0,)), ports())


def test_pvc_source_under_pvc_root(tmp_path: Path) -> None:
    (tmp_path / "llm" / "bge-m3").mkdir(parents=True)
    f = fleet(models=[{"name": "m", "source": "pvc://llm/bge-m3", "gpu": 1}])
    found = on_disk(f, str(tmp_path))
    (e,) = build(
        f, Options(engine_rules=RULES, devices=(0,), pvc_root=str(tmp_path), on_disk=found), ports()
    ).engines
    assert e.argv[:3] == ["vllm", "serve", str(tmp_path / "llm" / "bge-m3")]
    assert e.env["CUDA_VISIBLE_DEVICES"] == "0"


def test_pvc_source_on_sim_runs_without_pvc_root() -> None:
    f = fleet(models=[{"name": "m", "source": "pvc://llm/bge-m3/", "gpu": 1}])
    (e,) = build(f, Options(engine_rules=RULES, engine="sim"), ports()).engines
    assert e.argv[e.argv.index("--model") + 1] == "bge-m3"


def test_vllm_without_gpus_is_a_plan_error() -> None:
    f = fleet(models=[{"name": "m", "source": "org/m", "gpu": 1}])
    with pytest.raises(PlanError, match=r"no GPUs found for m: give --gpus"):
        build(f, Options(engine_rules=RULES), ports(), gpus=())


def test_vllm_on_detected_gpus() -> None:
    f = fleet(models=[{"name": "m", "source": "org/m", "gpu": 0.5, "replicas": 2}])
    plan = build(f, Options(engine_rules=RULES, vllm_version=(0, 26, 0)), ports(), gpus=(0, 1))
    assert plan.simulated_gpus is False
    assert [e.argv[:2] for e in plan.engines] == [["vllm", "serve"]] * 2
    assert all(e.startup_timeout_s == 900 for e in plan.engines)


def test_autoscaling_plans_a_slot_per_max_replica_and_starts_min() -> None:
    f = fleet(
        engine="sim",
        models=[
            {
                "name": "m",
                "source": "org/m",
                "gpu": 0.1,
                "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
            }
        ],
    )
    plan = build(f, Options(engine_rules=RULES), ports())
    assert [e.key for e in plan.engines] == [f"m-{i}" for i in range(5)]
    assert [e.initial for e in plan.engines] == [True, True, False, False, False]
    assert plan.slots == {"m": 5}


def test_zero_replicas_start_nothing() -> None:
    f = fleet(
        engine="sim",
        models=[
            {"name": "a", "source": "org/a", "gpu": 0.1},
            {"name": "b", "source": "org/b", "replicas": 0},
        ],
    )
    plan = build(f, Options(engine_rules=RULES), ports())
    assert [e.key for e in plan.engines] == ["a-0"]
    assert "b: 0 replicas; not started" in plan.notices
