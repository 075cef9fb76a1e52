"""Starting and stopping engine processes: own process group, own log, die with the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the supervisor dies (even by SIGKILL), the
    # kernel sends SIGTERM, so no engine is left holding a GPU with nobody watching it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def spawn(
    argv: Sequence[str], log: Path, env: dict[str, str], banner: str
) -> asyncio.subprocess.Process:
    """Start `argv` in its own session (Ctrl-C in the terminal reaches only the supervisor, which
    then stops engines in order), appending stdout and stderr to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {banner}\n".encode())
        out.flush()
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group (vLLM's API server has engine-core children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop(procs: Sequence[asyncio.subprocess.Process], grace_s: float) -> None:
    """SIGTERM, then SIGKILL whatever is still running after `grace_s`."""
    live = [p for p in procs if p.returncode is None]
    for p in live:
        signal_group(p.pid, signal.SIGTERM)
    if not live:
        return
    done = asyncio.gather(*(p.wait() for p in live))
    try:
        await asyncio.wait_for(asyncio.shield(done), grace_s)
    except TimeoutError:
        for p in live:
            if p.returncode is None:
                signal_group(p.pid, signal.SIGKILL)
        await done
    for p in live:  # children that outlived their leader
        signal_group(p.pid, signal.SIGKILL)


def tail(path: Path, lines: int = 3) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    rows = [r for r in text.splitlines() if r.strip() and not r.startswith("=== ")]
    return " | ".join(rows[-lines:])
