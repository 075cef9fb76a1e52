"""Shared fixtures: real `vfleet sim` processes on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
READY = re.compile(r"ready on http://([\d.]+):(\d+)")


@dataclass
class SimProcess:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT
    log: list[str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout_s)


def run_vfleet(
    *args: str, timeout_s: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `vfleet ARGS` to its end (bounded), with no stdin, capturing its text output."""
    return subprocess.run(
        [sys.executable, "-m", "vfleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def start_vfleet(
    command: str, *args: str, timeout_s: float = 20.0, env: dict[str, str] | None = None
) -> SimProcess:
    """Start `vfleet COMMAND --port 0 ARGS` and wait for its ready line (bounded)."""
    cmd = [sys.executable, "-m", "vfleet", command, "--host", "127.0.0.1", "--port", "0", *args]
    return start_ready(cmd, f"vfleet {command}", timeout_s, env)


def start_ready(
    cmd: list[str],
    what: str,
    timeout_s: float = 20.0,
    env: dict[str, str] | None = None,
    ready: re.Pattern[str] = READY,
) -> SimProcess:
    """Start `cmd` and wait (bounded) for the `ready on http://HOST:PORT` line on its stderr
    (`ready`: another pattern of it, e.g. https; its two groups are the host and the port)."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    log: list[str] = []
    deadline = time.monotonic() + timeout_s
    # Log lines may come before the ready line (the router's endpoint up/down notes).
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        m = ready.search(line)
        if m:
            # Keep draining stderr so a chatty process never blocks on a full pipe.
            threading.Thread(target=_drain, args=(proc, log), daemon=True).start()
            scheme = "https" if "https://" in m.group(0) else "http"
            return SimProcess(proc, f"{scheme}://{m.group(1)}:{m.group(2)}", log)
    proc.kill()
    proc.wait(timeout=10)
    proc.stderr.close()
    raise AssertionError(f"{what} did not become ready: {''.join(log)}")


def start_sim(*args: str, timeout_s: float = 20.0, env: dict[str, str] | None = None) -> SimProcess:
    return start_vfleet("sim", *args, timeout_s=timeout_s, env=env)


def start_router(
    *args: str, timeout_s: float = 20.0, env: dict[str, str] | None = None
) -> SimProcess:
    return start_vfleet("router", *args, timeout_s=timeout_s, env=env)


def _drain(proc: subprocess.Popen[str], log: list[str]) -> None:
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            log.append(line)
    except ValueError:  # closed by stop()
        pass


def _started_by(command: str) -> Iterator[Callable[..., SimProcess]]:
    """A factory fixture body: start `vfleet COMMAND` processes, stop them all afterwards."""
    started: list[SimProcess] = []

    def make(*args: str, **kw: object) -> SimProcess:
        sp = start_vfleet(command, *args, **kw)  # type: ignore[arg-type]
        started.append(sp)
        return sp

    yield make
    for sp in started:
        sp.stop()


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimProcess]]:
    yield from _started_by("sim")


@pytest.fixture(scope="module")
def gen_sim() -> Iterator[SimProcess]:
    """A generate model with instant steps, shared by a module's read-mostly tests."""
    sp = start_sim(
        "--model",
        "demo",
        "--profile",
        "instant",
        "--max-model-len",
        "512",
        "--num-gpu-blocks",
        "256",
    )
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def embed_sim() -> Iterator[SimProcess]:
    sp = start_sim(
        "--model", "embedder", "--task", "embed", "--profile", "instant", "--embedding-dim", "64"
    )
    yield sp
    sp.stop()


@pytest.fixture
def router_factory() -> Iterator[Callable[..., SimProcess]]:
    yield from _started_by("router")
