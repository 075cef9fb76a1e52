"""The desired replica counts of `vfleet up`'s autoscaler, read by the router from a file.

The supervisor decides how many replicas each model should run; the router is the one scrape
target, so it re-exports those counts (`vfleet_router_autoscaler_desired_replicas{source=
"local"}`) beside the replicas it sees ready. A file, like the endpoints file, because every
router worker reads it for itself: whichever worker answers a scrape has the same numbers.

Format (JSON, written whole with a rename): `{"models": {"<served name>": {"desired": N}}}`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from vfleet.router import filestamp

log = logging.getLogger("vfleet.router.autoscaled")

CHECK_S: Final = 0.5  # how often the file's stat is looked at
MAX_MODELS: Final = 1024  # a bound on what one file may add to every scrape


def parse_desired(raw: Any) -> dict[str, int]:
    """{served name: desired replicas} from the file's JSON; entries that are not a name with a
    non-negative whole count are skipped, at most MAX_MODELS kept."""
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        return {}
    out: dict[str, int] = {}
    for name, row in models.items():
        n = row.get("desired") if isinstance(row, dict) else None
        if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n < 0:
            continue
        out[str(name)] = int(n)
        if len(out) >= MAX_MODELS:
            break
    return out


async def watch_desired(path: str, apply: Callable[[dict[str, int]], None]) -> None:
    """Call `apply` with the file's counts now and whenever it changes; a missing file is no
    counts (the supervisor has not written it yet, or has no autoscaled model)."""
    await filestamp.watch(
        path,
        "autoscale file",
        lambda: apply(parse_desired(json.loads(Path(path).read_text()))),
        lambda: apply({}),
        CHECK_S,
    )
