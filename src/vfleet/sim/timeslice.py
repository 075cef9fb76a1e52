"""The time-slicing model of engines packed onto one GPU, pure: how much longer a step takes
while other engines of its GPU are busy (issue 12: a 0.35B engine on an H200 decoded at a TPOT
of 2.6 ms alone, 8-14 ms with four engines busy on the GPU).

A step that starts at `now` is stretched by one plus the number of other engines of its GPU
busy at `now`, fixed when it starts. A peer is busy while it is in a step or has work to step,
and is given as the time until which it is busy (`BUSY`: it has work). Its own module so that
the virtual-time planner (`bench.plan`), which may do no I/O, and the live engines' shared file
(`sim.gpushare`) call the same code.
"""

from __future__ import annotations

from collections.abc import Iterable

BUSY = float("inf")  # `stretch`'s "until" of a peer that has work (the planner's view)


def stretch(now: float, peers_busy_until: Iterable[float]) -> int:
    """How many times its time alone a step starting at `now` takes on a GPU shared with peers
    busy until the given times (`BUSY` for a peer with work): one plus the peers busy now."""
    return 1 + sum(1 for until in peers_busy_until if until > now)
