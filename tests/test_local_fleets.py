"""Several fleets on one machine: a run directory per fleet (by name, under VFLEET_STATE_DIR),
`status`/`logs`/`down` that find the one fleet there is, ask when there are several, and take
`--fleet NAME`; `vfleet up` starts fresh logs and keeps the previous run's as `.log.1`.

Real `vfleet up --detach` supervisors with simulated engines on 127.0.0.1, ephemeral ports.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_vfleet
from httpclient import Client
from test_local_up import START_S, alive, leftovers, one_error_line, reap
from vfleet.local.rundir import NoFleet, pick

FLEET = """\
name: {name}
engine: sim
models:
  - name: chat
    servedNames: [{served}]
    source: hf://Qwen/Qwen3-0.6B
    gpu: 0.5
"""


def run(
    env: dict[str, str], *args: str, timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return run_vfleet(*args, timeout_s=timeout_s, env=env)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """An environment whose state dir is empty, and every fleet in it taken down afterwards."""
    env = {**os.environ, "VFLEET_STATE_DIR": str(tmp_path / "state")}
    env.pop("VFLEET_RUN_DIR", None)
    for name, served in (("alpha", "model-a"), ("beta", "model-b")):
        (tmp_path / f"{name}.yaml").write_text(FLEET.format(name=name, served=served))
    yield env, tmp_path
    for d in (tmp_path / "state" / "fleets").glob("*"):
        reap(d)


def up(env: dict[str, str], spec: Path) -> dict[str, Any]:
    res = run(env, "up", "-f", str(spec), "--port", "0", "--detach", timeout_s=START_S + 15)
    assert res.returncode == 0, res.stdout + res.stderr
    return fleet_state(env, spec.stem)


def fleet_state(env: dict[str, str], name: str) -> dict[str, Any]:
    res = run(env, "status", "--fleet", name, "--json")
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def test_two_fleets_side_by_side(state: tuple[dict[str, str], Path]) -> None:
    env, tmp = state
    root = tmp / "state" / "fleets"
    up(env, tmp / "alpha.yaml")
    # one fleet: the commands find it with no flags, and say so in the exact next commands
    assert run(env, "status").returncode == 0
    first = run(env, "up", "-f", str(tmp / "beta.yaml"), "--port", "0", "--detach")
    assert first.returncode == 0, first.stderr
    # the second fleet's next commands name it: plain ones would now be ambiguous
    assert f"logs chat-0 --fleet beta     (all logs: {root / 'beta' / 'logs'})" in first.stdout

    # several fleets and no --fleet: one line that lists them
    for args in (("status",), ("logs", "chat-0"), ("down",)):
        line = one_error_line(run(env, *args))
        assert line == (
            "Error: several fleets: alpha (running), beta (running); pick one with --fleet NAME"
        )
    line = one_error_line(run(env, "status", "--fleet", "gamma"))
    assert line == f"Error: no fleet named 'gamma' in {root} (known: alpha, beta)"

    # `status --json` lists every fleet; each has its own run directory
    listed = json.loads(run(env, "status", "--json").stdout)["fleets"]
    assert [(f["fleet"], f["phase"], f["run_dir"]) for f in listed] == [
        ("alpha", "ready", str(root / "alpha")),
        ("beta", "ready", str(root / "beta")),
    ]
    a, b = fleet_state(env, "alpha"), fleet_state(env, "beta")
    assert a["router"]["url"] != b["router"]["url"]
    a_models = Client(a["router"]["url"]).get("/v1/models").json()
    assert [m["id"] for m in a_models["data"]] == ["model-a"]

    # logs: each fleet's own engine
    log_a = run(env, "logs", "chat-0", "--fleet", "alpha").stdout
    log_b = run(env, "logs", "chat-0", "--fleet", "beta").stdout
    assert "--served-model-name model-a" in log_a and "model-b" not in log_a
    assert "--served-model-name model-b" in log_b and "model-a" not in log_b

    # down --fleet alpha: names what it stops, returns when it has stopped; beta keeps serving
    pids_a = [a["supervisor_pid"], a["router"]["pid"], *(e["pid"] for e in a["engines"])]
    res = run(env, "down", "--fleet", "alpha")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"vfleet: stopping fleet 'alpha' (supervisor pid {a['supervisor_pid']}): "
        f"router {a['router']['url']}; 1 engine(s) (chat-0)",
        "vfleet: fleet 'alpha' stopped",
    ]
    assert not [p for p in pids_a if alive(p)]
    assert leftovers(root / "alpha", a) == []
    assert Client(b["router"]["url"]).get("/v1/models").status == 200

    # alpha again: fresh logs, the previous run's kept as .log.1
    up(env, tmp / "alpha.yaml")
    logs = root / "alpha" / "logs"
    assert {"chat-0.log.1", "router.log.1", "supervisor.log.1"} <= {p.name for p in logs.iterdir()}
    assert (logs / "chat-0.log").read_text().count("=== ") == 1
    assert (logs / "chat-0.log.1").read_text().count("=== ") == 1
    assert run(env, "down", "--fleet", "alpha").returncode == 0

    # only beta runs now: the plain commands find it again
    status = run(env, "status")
    assert status.returncode == 0 and "fleet beta - ready" in status.stdout, status.stderr
    res = run(env, "down")
    assert res.returncode == 0 and res.stdout.startswith("vfleet: stopping fleet 'beta'")
    assert leftovers(root / "beta", b) == []


def test_a_fleet_name_runs_once(state: tuple[dict[str, str], Path]) -> None:
    env, tmp = state
    a = up(env, tmp / "alpha.yaml")
    line = one_error_line(run(env, "up", "-f", str(tmp / "alpha.yaml"), "--port", "0"))
    root = tmp / "state" / "fleets"
    assert line == (
        f"Error: a fleet is already running from {root / 'alpha'} (fleet 'alpha', supervisor "
        f"pid {a['supervisor_pid']}); stop it with `vfleet down --fleet alpha`, or give this one "
        "another name"
    )
    assert run(env, "down").returncode == 0


def test_no_fleet_yet(state: tuple[dict[str, str], Path]) -> None:
    env, tmp = state
    line = one_error_line(run(env, "status"))
    expected = f"no fleet found in {tmp / 'state' / 'fleets'}; start one with vfleet up -f FILE"
    assert line == f"Error: {expected}"
    assert json.loads(run(env, "status", "--json").stdout) == {"fleets": []}


def test_which_fleet_is_meant(tmp_path: Path) -> None:
    assert pick(["a", "b"], ["b"], tmp_path) == "b"  # the one running
    assert pick(["a"], [], tmp_path) == "a"  # the one there is (stopped: its logs, its state)
    with pytest.raises(NoFleet, match=r"several fleets: a \(running\), b \(running\);"):
        pick(["a", "b", "c"], ["a", "b"], tmp_path)
    with pytest.raises(NoFleet, match="several fleets: a, b; pick one with --fleet NAME"):
        pick(["a", "b"], [], tmp_path)
    with pytest.raises(NoFleet, match="no fleet found"):
        pick([], [], tmp_path)
