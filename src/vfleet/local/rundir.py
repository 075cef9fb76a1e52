"""The run directory: how a second terminal finds a running fleet.

state.json (the supervisor's view of every engine, rewritten atomically on each change),
endpoints.json (what the router serves from), router.yaml, and logs/<engine>.log.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_run_dir() -> Path:
    if os.environ.get("VFLEET_RUN_DIR"):
        return Path(os.environ["VFLEET_RUN_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vfleet" / "run"


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
        state = self.read_state() or {}
        pid = state.get("supervisor_pid")
        alive = state.get("phase") not in ("stopped", "failed") and pid_alive(pid)
        return int(pid) if alive and pid else None

    def clear(self) -> None:
        for p in (self.state_file, self.endpoints_file, self.router_config):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
