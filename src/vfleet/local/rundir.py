"""Run directories: how a second terminal finds a running fleet, one directory per fleet.

Each fleet started by `vfleet up` gets `STATE_DIR/fleets/NAME/` (STATE_DIR: env VFLEET_STATE_DIR,
else $XDG_STATE_HOME/vfleet, else ~/.local/state/vfleet), so two fleets on one machine never
share state or logs. `--run-dir` (env VFLEET_RUN_DIR) names one directory explicitly instead.

A run directory holds state.json (the supervisor's view of every engine, rewritten atomically
on each change), endpoints.json (what the router serves from), router.yaml, and
logs/<engine>.log (the previous run's as <engine>.log.1).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_FLEETS = 256  # a listing reads at most this many run directories


def state_dir() -> Path:
    if os.environ.get("VFLEET_STATE_DIR"):
        return Path(os.environ["VFLEET_STATE_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vfleet"


def fleets_dir() -> Path:
    return state_dir() / "fleets"


def explicit_run_dir(flag: str | None) -> Path | None:
    """The directory `--run-dir` or VFLEET_RUN_DIR names, if either does."""
    if flag:
        return Path(flag)
    env = os.environ.get("VFLEET_RUN_DIR")
    return Path(env) if env else None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def endpoints_file(self) -> Path:
        return self.path / "endpoints.json"

    @property
    def autoscale_file(self) -> Path:
        """The autoscaler's desired replicas per served name, which the router re-exports."""
        return self.path / "autoscale.json"

    @property
    def router_config(self) -> Path:
        return self.path / "router.yaml"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def prepare(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)  # router.yaml may hold API keys

    def rotate_logs(self) -> None:
        """Start fresh logs: each <name>.log becomes <name>.log.1 (replacing the older one), so
        `vfleet logs` shows this run only and the previous run is still there to compare."""
        if not self.logs.is_dir():
            return
        for log in self.logs.glob("*.log"):
            with contextlib.suppress(OSError):
                os.replace(log, log.with_name(log.name + ".1"))

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, path: Path, data: Any) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)  # readers never see half a file

    def owner(self) -> int | None:
        """The pid of a live supervisor using this directory, if any."""
        return running_pid(self.read_state() or {})

    def clear(self) -> None:
        for p in (self.state_file, self.endpoints_file, self.autoscale_file, self.router_config):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def running_pid(state: dict[str, Any]) -> int | None:
    """The supervisor pid of a state that says it runs and whose supervisor is alive."""
    pid = state.get("supervisor_pid")
    alive = state.get("phase") not in ("stopped", "failed") and pid_alive(pid)
    return int(pid) if alive and pid else None


def fleet_run_dir(name: str) -> RunDir:
    return RunDir(fleets_dir() / name)


def known_fleets(root: Path | None = None) -> list[tuple[str, RunDir]]:
    """Every fleet with a run directory under the state dir (it has a state.json), by name."""
    root = root or fleets_dir()
    try:
        entries = sorted(p for p in root.iterdir() if (p / "state.json").is_file())
    except OSError:
        return []
    return [(p.name, RunDir(p)) for p in entries[:MAX_FLEETS]]


class NoFleet(LookupError):
    """No fleet, or several and none named: the message is the one line to show."""


def pick(names: Sequence[str], running: Sequence[str], root: Path) -> str:
    """Which fleet a command without --fleet means: the one running fleet, else the one known
    fleet; several: the user must say which (nothing here guesses between fleets)."""
    candidates = list(running) or list(names)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise NoFleet(f"no fleet found in {root}; start one with vfleet up -f FILE")
    listed = ", ".join(f"{n} (running)" if n in running else n for n in candidates)
    raise NoFleet(f"several fleets: {listed}; pick one with --fleet NAME")


def find(fleet: str | None, run_dir: str | None) -> RunDir:
    """The run directory `vfleet status/logs/down` read: --run-dir (or VFLEET_RUN_DIR), else
    the fleet --fleet names, else the only one there is."""
    explicit = explicit_run_dir(run_dir)
    if explicit is not None:
        return RunDir(explicit)
    fleets = known_fleets()
    if fleet is not None:
        if fleet not in {n for n, _ in fleets}:
            known = ", ".join(n for n, _ in fleets) or "none"
            raise NoFleet(f"no fleet named {fleet!r} in {fleets_dir()} (known: {known})")
        return fleet_run_dir(fleet)
    running = [n for n, rd in fleets if rd.owner()]
    return fleet_run_dir(pick([n for n, _ in fleets], running, fleets_dir()))
