"""Simulated engines time-slicing one GPU (`vfleet sim --shared-gpu FILE`): the model
(`stretch`), the slot file, the stretched steps, and real sim processes decoding slower while
their GPU neighbours are busy."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import SimProcess, run_vfleet
from httpclient import Client
from test_local_up import start_up
from vfleet.sim.gpushare import BUSY, LEASE_S, SLOTS, GpuShareError, SharedGpu, stretch
from vfleet.sim.profiles import PROFILES
from vfleet.sim.scheduler import Scheduler, SchedulerConfig, Sequence

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_step_is_stretched_by_one_plus_the_peers_busy_when_it_starts() -> None:
    # the model both `bench.plan` and the live engines use: a peer is busy until the time given
    assert stretch(5.0, []) == 1
    assert stretch(5.0, [BUSY, BUSY, BUSY]) == 4  # three peers with work
    assert stretch(5.0, [5.5, 5.0, 4.0, BUSY]) == 3  # one mid-step, two done, one with work


def test_engines_on_one_file_count_each_other_busy_while_they_have_work(tmp_path: Path) -> None:
    path, clock = str(tmp_path / "gpu-0"), Clock()
    a = SharedGpu(path, pid=101, clock=clock, alive=lambda pid: True)
    b = SharedGpu(path, pid=102, clock=clock, alive=lambda pid: True)
    c = SharedGpu(path, pid=103, clock=clock, alive=lambda pid: True)
    d = SharedGpu(path, pid=104, clock=clock, alive=lambda pid: True)
    assert (a.slot, b.slot, c.slot, d.slot) == (0, 1, 2, 3)
    assert a.slowdown() == 1
    b.step(0.010, more=True)
    c.step(0.002, more=True)
    d.step(0.001, more=False)  # its last step: it stops counting when the step ends
    assert a.slowdown() == 4
    assert b.slowdown() == 3  # an engine does not count itself
    clock.t += 0.002 + 0.001  # c's step ended; it still has work (its next step is coming)
    assert a.slowdown() == 3
    assert a.slowdown(ago=0.0025) == 4  # a step that started back then saw d still busy
    c.idle()  # asleep with work left: no longer counted, at once
    assert a.slowdown() == 2
    clock.t += 0.010 + LEASE_S  # b was killed mid-work: its claim runs out a lease after its step
    assert a.slowdown() == 1
    for g in (a, b, c, d):
        g.close()


def test_a_dead_engines_slot_is_taken_again_and_a_full_gpu_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "gpu-0")
    live = set(range(1, SLOTS + 1))
    gpus = [SharedGpu(path, pid=p, alive=live.__contains__) for p in sorted(live)]
    with pytest.raises(GpuShareError, match=f"more than {SLOTS} engines"):
        SharedGpu(path, pid=999, alive=live.__contains__)
    live.discard(7)  # killed: its slot is free for the engine started in its place
    assert SharedGpu(path, pid=999, alive=live.__contains__).slot == 6
    gpus[0].close()  # a clean exit gives its slot back
    assert SharedGpu(path, pid=1000, alive=live.__contains__).slot == 0


def _batch(sched: Scheduler) -> None:
    for i in range(3):
        sched.add(Sequence(list(range(i * 100, i * 100 + 40)), 8, 0.0))


def test_a_step_stretched_by_the_busy_count_takes_that_many_times_as_long() -> None:
    cfg = SchedulerConfig(max_num_seqs=8, num_gpu_blocks=64, max_model_len=256)
    alone, shared = Scheduler(cfg, PROFILES["small"]), Scheduler(cfg, PROFILES["small"])
    _batch(alone)
    _batch(shared)
    t_alone = t_shared = 0.0
    for _ in range(4):  # a prefill step, then decode steps
        a, s = alone.step(t_alone), shared.step(t_shared, 4)
        assert s.duration_s == pytest.approx(4 * a.duration_s)
        assert [q.n_out for q in shared.running] == [q.n_out for q in alone.running]
        t_alone += a.duration_s
        t_shared += s.duration_s
    assert shared.running[0].first_token_at == pytest.approx(4 * alone.running[0].first_token_at)


def test_an_unreadable_gpu_file_is_a_one_line_error(tmp_path: Path) -> None:
    res = run_vfleet(
        "sim", "--model", "m", "--port", "0", "--shared-gpu", str(tmp_path / "no" / "gpu-0")
    )
    assert res.returncode != 0
    assert "cannot open the shared GPU file" in res.stderr
    assert "Traceback" not in res.stderr


def _tpot(url: str) -> float:
    """Mean modelled time per output token of an engine's finished requests (its /metrics)."""
    text = Client(url).get("/metrics").body.decode()
    total = float(re.search(r"vllm:request_time_per_output_token_seconds_sum\S* (\S+)", text)[1])  # type: ignore[index]
    count = float(re.search(r"vllm:request_time_per_output_token_seconds_count\S* (\S+)", text)[1])  # type: ignore[index]
    assert count > 0
    return total / count


def _load(engines: list[SimProcess], per_engine: int, tokens: int) -> None:
    """`per_engine` completions of `tokens` tokens on every engine at once (all at once: the
    engines' busy stretches overlap from the first step to the last)."""
    body = {"model": "m", "prompt": "hello " * 32, "max_tokens": tokens, "ignore_eos": True}
    jobs = [e.url for e in engines for _ in range(per_engine)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        statuses = list(
            pool.map(lambda u: Client(u, 60.0).post("/v1/completions", body).status, jobs)
        )
    assert statuses == [200] * len(jobs)


def test_four_sim_engines_on_one_gpu_decode_about_four_times_slower_than_one_alone(
    tmp_path: Path, sim_factory: Callable[..., SimProcess]
) -> None:
    # The small profile is fitted to the engine of the H200 measurement (TPOT 2.6 ms alone,
    # 8-14 ms with four busy on the GPU). A time scale of 4 makes each modelled millisecond
    # four wall milliseconds, so the gap between one engine's steps (Python's own time) is
    # small next to its neighbours' steps.
    common = ("--model", "m", "--profile", "small", "--time-scale", "4")
    alone = sim_factory(*common, "--shared-gpu", str(tmp_path / "gpu-1"))
    _load([alone], 4, 48)
    packed = [sim_factory(*common, "--shared-gpu", str(tmp_path / "gpu-0")) for _ in range(4)]
    _load(packed, 4, 48)
    base = _tpot(alone.url)
    ratios = [_tpot(e.url) / base for e in packed]
    # each step is stretched by the number of engines busy on the GPU, never more than four
    assert all(2.0 < r <= 4.0 * 1.05 for r in ratios), ratios


def test_vfleet_up_gives_the_sim_engines_of_one_gpu_one_shared_file(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        "name: packed\nengine: sim\nmodels:\n"
        "  - {name: chat, source: org/chat, replicas: 2, gpu: 0.5}\n"
        "  - {name: big, source: org/big, replicas: 1, gpu: 1}\n"
    )
    up = start_up(tmp_path / "run", "-f", str(spec))
    try:
        engines = {e["key"]: e for e in up.state()["engines"]}
        assert (
            engines["chat-0"]["devices"]
            == engines["chat-1"]["devices"]
            != engines["big-0"]["devices"]
        )
        share = tmp_path / "run" / f"gpu-{engines['chat-0']['devices'][0]}.share"
        for key in ("chat-0", "chat-1"):
            banner = (tmp_path / "run" / "logs" / f"{key}.log").read_text().splitlines()[0]
            assert banner.endswith(f"--shared-gpu {share}"), banner
        assert "--shared-gpu" not in (tmp_path / "run" / "logs" / "big-0.log").read_text()
        claimed = {pid for pid, _ in struct.iter_unpack("<qd", share.read_bytes()) if pid}
        assert claimed == {engines["chat-0"]["pid"], engines["chat-1"]["pid"]}
    finally:
        up.stop()
