"""Starting and stopping the processes of a benchmark: fake engines, routers (stdlib only).

Every process gets its own session, so that stopping it also stops whatever it started (nginx's
worker, a router's worker processes), and every wait here has a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

FAKE_ENGINE = Path(__file__).with_name("fakeengine.py")


def http_status(url: str, body: bytes | None = None, timeout_s: float = 5.0) -> int:
    """The status of one GET (or POST of a JSON `body`); 0 when nothing answered."""
    headers = {"content-type": "application/json"} if body else {}
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_ok(url: str, timeout_s: float = 30.0) -> bool:
    """Poll a GET until it answers 200, for at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_status(url, timeout_s=1.0) == 200:
            return True
        time.sleep(0.1)
    return False


def spawn_engine(python: str, pin: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start one fake engine on a free port with `python` (a vfleet venv's); its URL."""
    with log.open("w") as logf:
        argv = [*pin, python, str(FAKE_ENGINE), "--port", "0"]
        proc = subprocess.Popen(argv, stdout=logf, stderr=logf, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("ready on "):
                return proc, line.removeprefix("ready on ").strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    tail = log.read_text()[-300:]
    raise RuntimeError(f"fake engine did not start with {python} (needs uvloop, httptools): {tail}")


def stop(proc: subprocess.Popen[bytes] | None, grace_s: float = 15.0) -> None:
    """SIGTERM the process's session, SIGKILL it after `grace_s`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass
