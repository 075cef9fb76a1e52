"""The layering contracts in pyproject.toml ([tool.importlinter]) hold, have no exemptions, and
each one catches the violation it exists for; `vfleet router` loads neither ZeroMQ nor the
simulator when it runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import start_ready

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {c["id"]: c for c in CONFIG["contracts"]}

# One import per contract that breaks it: (module file under src/vfleet, line to add, the
# import chain lint-imports must then report).
VIOLATIONS = {
    "layers": (
        "http/client.py",
        "import vfleet.router.endpoints",
        "vfleet.http.client -> vfleet.router.endpoints",
    ),
    "pure": ("router/policies.py", "import asyncio", "vfleet.router.policies -> asyncio"),
    "router-alone": (
        "router/state.py",
        "import vfleet.sim.scheduler",
        "vfleet.router.state -> vfleet.sim.scheduler",
    ),
    "sim-alone": (
        "sim/kvcache.py",
        "import vfleet.router.state",
        "vfleet.sim.kvcache -> vfleet.router.state",
    ),
    "acyclic": ("sim/jobs.py", "import vfleet.sim.server", "No cycles are allowed in vfleet.sim."),
}


def lint_imports(cwd: Path, *args: str, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(pythonpath), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_contracts_hold_on_the_tree() -> None:
    res = lint_imports(ROOT, pythonpath=ROOT / "src")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in res.stdout


def test_no_contract_has_exemptions() -> None:
    """Nothing is excused: a contract broken by the code is fixed in the code."""
    assert set(CONTRACTS) == set(VIOLATIONS)
    for cid, contract in CONTRACTS.items():
        assert not contract.get("ignore_imports"), cid
        assert not contract.get("allow_indirect_imports"), cid


@pytest.mark.parametrize("cid", sorted(VIOLATIONS))
def test_each_contract_catches_its_violation(cid: str, tmp_path: Path) -> None:
    """A copy of the package with one forbidden import added breaks that contract, and
    lint-imports names the import."""
    shutil.copytree(
        ROOT / "src" / "vfleet",
        tmp_path / "src" / "vfleet",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    rel, line, chain = VIOLATIONS[cid]
    target = tmp_path / "src" / "vfleet" / rel
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    res = lint_imports(tmp_path, "--contract", cid, pythonpath=tmp_path / "src")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "0 kept, 1 broken" in res.stdout, res.stdout
    assert chain in res.stdout, res.stdout


def test_router_command_loads_no_zmq_and_no_simulator() -> None:
    """A real `vfleet router`, serving, with every import it made logged (-X importtime)."""
    cmd = [sys.executable, "-X", "importtime", "-m", "vfleet", "router"]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--backend", "http://127.0.0.1:9"]
    router = start_ready(cmd, "vfleet router")
    try:
        imported = {
            m.group(1)
            for line in router.log
            if (m := re.match(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", line.strip()))
        }
    finally:
        router.stop()
    assert "vfleet.router.app" in imported  # the log is the real thing
    assert not {m for m in imported if m == "zmq" or m.startswith("zmq.")}
    assert not {m for m in imported if m.startswith("vfleet.sim")}
    assert not {m for m in imported if m.startswith(("vfleet.local", "vfleet.fleetspec"))}
