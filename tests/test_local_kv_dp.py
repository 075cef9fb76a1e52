"""`vfleet up`'s plan for a data-parallel engine routed by `kv`: vLLM binds each rank's KV-event
sockets at the configured port + the rank (and refuses an ipc:// endpoint for a rank above 0),
so such an engine publishes on TCP, ranks on PORT..PORT+N-1 and replay sockets on
PORT+100..PORT+100+N-1, and the plan says how many ranks the router follows. Pure: no process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.load import load
from vfleet.local.plan import Options, PlanError, build

FLEET = """\
name: kvdp
router: {policy: kv}
models:
  - name: wide
    servedNames: [wide]
    source: hf://Qwen/Qwen3-0.6B
    gpu: 2
    replicas: 2
    vllm:
      extraArgs: ["--data-parallel-size", "2"]
  - name: narrow
    servedNames: [narrow]
    source: hf://Qwen/Qwen3-0.6B
    gpu: 1
"""


def plan_of(tmp_path: Path, first_port: int = 20000) -> list[tuple[str, str | None, int, dict]]:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    fleet = load([path]).fleet
    opts = Options(engine_rules=load_rules(), kv_events_dir="/run/x", devices=(0, 1, 2, 3, 4))
    plan = build(fleet, opts, iter(range(first_port, first_port + 20)))
    out = []
    for e in plan.engines:
        config = json.loads(e.argv[e.argv.index("--kv-events-config") + 1])
        out.append((e.key, e.kv_events, e.kv_ranks, config))
    return out


def test_a_data_parallel_engine_publishes_on_a_port_range(tmp_path: Path) -> None:
    rules = load_rules().kv_events
    engines = {key: (connect, ranks, config) for key, connect, ranks, config in plan_of(tmp_path)}
    for key in ("wide-0", "wide-1"):
        connect, ranks, config = engines[key]
        assert ranks == 2
        assert connect is not None and connect.startswith("tcp://127.0.0.1:")
        port = int(connect.rpartition(":")[2])
        # rank 0's sockets; vLLM binds rank 1's at + 1
        assert config["endpoint"] == f"tcp://*:{port}"
        assert config["replay_endpoint"] == f"tcp://*:{port + 100}"
        assert rules.ports(port, ranks) == (range(port, port + 2), range(port + 100, port + 102))
    # one rank: the socket in the run directory, as before
    connect, ranks, config = engines["narrow-0"]
    assert ranks == 1 and connect == "ipc:///run/x/narrow-0.sock"
    assert config["replay_endpoint"] == "ipc:///run/x/narrow-0.replay.sock"


def test_no_room_above_the_port_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no room above port"):
        plan_of(tmp_path, first_port=65434)  # its publisher: 65435
