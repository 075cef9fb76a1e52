"""`vfleet status --watch` on a terminal (a pseudo-terminal here): the table is drawn, redrawn
in place as the fleet's state changes, and Ctrl-C ends it cleanly; `--watch` with `--json` is
a one-line usage error. The fleet is a state file (the supervisor's view), so no engine runs."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(40)


DEFAULT_SIGINT_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def state(*keys: str) -> dict[str, Any]:
    engines = [
        {"key": k, "model": "chat", "served": ["chat"], "gpu": "0", "port": 1, "state": "down"}
        for k in keys
    ]
    return {"fleet": "demo", "phase": "stopped", "router": {}, "engines": engines}


def write_state(run_dir: Path, data: dict[str, Any]) -> None:
    tmp = run_dir / "state.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(run_dir / "state.json")


def read_until(fd: int, seen: bytearray, needle: bytes, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return needle in seen


def test_watch_redraws_in_place_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    write_state(tmp_path, state("chat-0"))
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"}
    argv = [sys.executable, "-m", "vfleet", "status", "--watch", "0.2", "--run-dir", str(tmp_path)]
    proc = subprocess.Popen(
        # Ctrl-C as a terminal delivers it: a test run started in the background by a shell
        # without job control inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt (this test failed that way, started with `bash -c '...' &`).
        [sys.executable, "-c", DEFAULT_SIGINT_EXEC, *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        assert read_until(master, seen, b"chat-0"), bytes(seen)
        write_state(tmp_path, state("chat-0", "chat-1"))  # a replica added
        assert read_until(master, seen, b"chat-1"), bytes(seen)
        assert b"\x1b[" in seen  # redrawn in place (cursor movement), not appended below
        assert proc.poll() is None  # still watching
        proc.send_signal(signal.SIGINT)
        # Read the terminal while it stops, so that its last redraw never waits on a full pty.
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            read_until(master, seen, b"\x00", timeout_s=0.2)
        assert proc.wait(timeout=1) == 0
        read_until(master, seen, b"\x00", timeout_s=0.5)  # whatever is left
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)


def test_watch_and_json_do_not_mix(tmp_path: Path) -> None:
    write_state(tmp_path, state("chat-0"))
    res = subprocess.run(
        [sys.executable, "-m", "vfleet", "status", "--watch", "--json", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "Error: --watch shows a live table; --json prints the state once"
    ]
