"""Simulated engines sharing one GPU: the time-slicing model, and the small shared file through
which live engines on one GPU see each other.

The model (`stretch`, pure, in `sim.timeslice`): engines packed onto one GPU time-slice it, so
while K of them have work each one's steps take about K times as long (measured on an H200,
issue 12: a 0.35B engine decoded at a TPOT of 2.6 ms alone, 8-14 ms with four engines busy on
the GPU). A step that starts at `now` is stretched by one plus the number of other engines of
its GPU busy at `now`, fixed when it starts. A peer is busy while it is in a step or has work to
step (its next step follows at once), and stops being busy when its last step ends with nothing
left to do. Each peer is given to `stretch` as the time until which it is busy (`BUSY`: it has
work). The virtual-time planner (`bench.plan`) and the live engines (`sim.engine`, through
`SharedGpu`) both call `stretch`, so a plan and a live run of one fleet model the GPU the same
way.

The file: `vfleet sim --shared-gpu FILE` makes every engine started with the same FILE one of
the engines of one GPU. Each keeps a slot in FILE (`SLOTS` of them, memory-mapped) with its pid
and the wall time (CLOCK_MONOTONIC, the same for every process on the host) until which it is
busy: when a step starts, the step's end, plus `LEASE_S` when it has work left after the step
(its next step follows at once); 0 when it stops stepping (out of work, asleep: `idle`). The
lease is what makes a killed engine stop counting: a lease after its last step's end. An
engine reads its peers at the wall time its step starts in the model (a late wake-up on a
busy host is absorbed, as `sim.engine` absorbs it in the step's times), so a live engine sees
its peers as `bench.plan` does.

A slot is claimed under an exclusive `flock` of FILE, at start; a slot whose pid is gone is
free again, so a killed engine's slot is taken by the next one. Reads and writes of the slots
take no lock: each is one aligned 16-byte record, and a stale read costs at most one step
stretched by one engine too many or too few.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable

from vfleet.sim.timeslice import BUSY, stretch

__all__ = ["BUSY", "GpuShareError", "SharedGpu", "stretch"]

SLOTS = 64  # engines one GPU file holds; vLLM packs a handful per GPU
# Wall seconds past its step's end that a working engine stays busy: it steps again as soon as
# it has handed out the step's tokens (well under this, even on a loaded host); only an engine
# killed mid-work ever runs it out.
LEASE_S = 1.0
_SLOT = struct.Struct("<qd")  # pid, wall (monotonic) time until which it is busy
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

    def slowdown(self, ago: float = 0.0) -> int:
        """How many times its time alone a step of this engine that started `ago` seconds
        (wall) before now takes (`stretch`)."""
        me = self.slot
        peers = (u for i, (pid, u) in enumerate(_SLOT.iter_unpack(self._map)) if i != me and pid)
        return stretch(self._clock() - ago, peers)

    def step(self, seconds: float, more: bool) -> None:
        """This engine is in a step that ends in `seconds` (wall); with `more` work after it,
        it steps again at once, so it stays busy (a lease past the end, see the module
        docstring)."""
        until = self._clock() + seconds + (LEASE_S if more else 0.0)
        _SLOT.pack_into(self._map, self.slot * _SLOT.size, self.pid, until)

    def idle(self) -> None:
        """This engine has no step to take (no work, or asleep): its peers stop counting it."""
        if not self._map.closed:
            _SLOT.pack_into(self._map, self.slot * _SLOT.size, self.pid, 0.0)

    def close(self) -> None:
        """Give the slot back (best effort: a killed engine's slot is reclaimed anyway)."""
        if self._map.closed:
            return
        with contextlib.suppress(ValueError, OSError):
            _SLOT.pack_into(self._map, self.slot * _SLOT.size, 0, 0.0)
            self._map.close()
