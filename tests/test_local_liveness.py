"""`vfleet up` restarts an engine that stops answering /health while its process lives on (a
hung engine keeps its port), and keeps it out of the router meanwhile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from httpclient import request, wait_for
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


def _engine(state: dict[str, Any], key: str) -> dict[str, Any]:
    return next(e for e in state["engines"] if e["key"] == key)


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
