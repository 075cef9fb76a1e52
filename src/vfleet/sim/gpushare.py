"""Simulated engines sharing one GPU: who else on it is busy, through a small shared file.

Engines packed onto one GPU time-slice it: while K of them have work, each one's steps take
about K times as long (measured on an H200, issue 12: a 0.35B engine decoded at a TPOT of
2.6 ms alone, 8-14 ms with four engines busy on the GPU). `vfleet sim --shared-gpu FILE`
makes every engine started with the same FILE one of the engines of one GPU: each keeps a
slot in FILE (`SLOTS` of them, memory-mapped) with its pid and when its current step ends
(CLOCK_MONOTONIC, the same for every process on the host), and before each step counts the
other slots whose step ends after now minus `GRACE_S`. The engine (`sim.engine`) stretches
the step by that count plus one; the scheduler itself stays pure (the factor is an argument).

A slot is claimed under an exclusive `flock` of FILE, at start; a slot whose pid is gone is
free again, so a killed engine's slot is taken by the next one. A dead engine's last step
ends within a second, so it stops counting as busy on its own. Reads and writes of the
slots take no lock: each is one aligned 16-byte record, and a stale read costs at most one
step stretched by one engine too many or too few.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable

SLOTS = 64  # engines one GPU file holds; vLLM packs a handful per GPU
GRACE_S = 0.01  # wall seconds a peer counts as busy after its step: the gap to its next step
_SLOT = struct.Struct("<qd")  # pid, wall (monotonic) time its current step ends
_SIZE = SLOTS * _SLOT.size


class GpuShareError(ValueError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class SharedGpu:
    """This engine's slot in a GPU file (see the module docstring)."""

    def __init__(
        self,
        path: str,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] = _alive,
    ) -> None:
        self.path = path
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise GpuShareError(f"cannot open the shared GPU file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one claim at a time
            try:
                if os.fstat(fd).st_size < _SIZE:
                    os.ftruncate(fd, _SIZE)
                self._map = mmap.mmap(fd, _SIZE)
                self.slot = self._claim(alive)
            finally:
                # explicitly: the mapping holds a duplicate of `fd`, which would keep the lock
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise GpuShareError(f"cannot use the shared GPU file {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def _claim(self, alive: Callable[[int], bool]) -> int:
        for i in range(SLOTS):
            pid, _ = _SLOT.unpack_from(self._map, i * _SLOT.size)
            if pid in (0, self.pid) or not alive(pid):
                _SLOT.pack_into(self._map, i * _SLOT.size, self.pid, 0.0)
                return i
        self._map.close()
        raise GpuShareError(f"{self.path}: more than {SLOTS} engines share this GPU")

    def busy_peers(self) -> int:
        """How many other engines on this GPU are in a step now (or just finished one)."""
        since = self._clock() - GRACE_S
        n = 0
        for i, (pid, until) in enumerate(_SLOT.iter_unpack(self._map)):
            if i != self.slot and pid and until > since:
                n += 1
        return n

    def busy_for(self, seconds: float) -> None:
        """This engine's step occupies the GPU for the next `seconds` (wall)."""
        _SLOT.pack_into(self._map, self.slot * _SLOT.size, self.pid, self._clock() + seconds)

    def close(self) -> None:
        """Give the slot back (best effort: a killed engine's slot is reclaimed anyway)."""
        if self._map.closed:
            return
        with contextlib.suppress(ValueError, OSError):
            _SLOT.pack_into(self._map, self.slot * _SLOT.size, 0, 0.0)
            self._map.close()
