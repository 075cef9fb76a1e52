"""Runs a simulated engine with its edge limits given as JSON: `python edgesim.py LIMITS [PROFILE]`.

The tests need short timeouts and small bounds that `vfleet sim` has no flags for; this builds the
same `SimConfig` the command line would, with `EdgeLimits(**LIMITS)`, and serves it on an
ephemeral port of 127.0.0.1 (the ready line is the one `vfleet sim` prints).
"""

from __future__ import annotations

import json
import sys

from vfleet.http.limits import EdgeLimits
from vfleet.sim.app import run
from vfleet.sim.config import SimConfig
from vfleet.sim.profiles import PROFILES
from vfleet.sim.scheduler import SchedulerConfig


def main() -> None:
    limits = EdgeLimits(**json.loads(sys.argv[1]))
    profile = PROFILES[sys.argv[2] if len(sys.argv) > 2 else "instant"]
    cfg = SimConfig(
        served_names=("demo",),
        model_path="demo",
        profile=profile,
        scheduler=SchedulerConfig(max_model_len=512, num_gpu_blocks=256),
        host="127.0.0.1",
        port=0,
        edge=limits,
    )
    run(cfg)


if __name__ == "__main__":
    main()
