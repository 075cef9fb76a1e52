"""`vfleet up --dry-run`: the plan `up` would start, as JSON, with nothing started.

One row per engine slot in the shape of `vfleet status --json`'s engine rows (key, model, GPU
label, devices, share, port), plus what only the plan knows: the memory fraction the engine is
given, its environment and its command line. Scripts compare this with what runs later (the
multi-GPU check reads CUDA_VISIBLE_DEVICES of the real processes) and tests compare it with
`vfleet k8s render`. Values of variables and flags that look like secrets are masked: the plan
is meant to be pasted into reports. Pure.
"""

from __future__ import annotations

from typing import Any

from vfleet.fleetspec.models import Fleet
from vfleet.local.plan import EngineSpec, Plan

MASK = "***"
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
_SECRET_FLAGS = ("--api-key", "--hf-token")
MEMORY_FLAG = "--gpu-memory-utilization"


def plan_json(fleet: Fleet, plan: Plan, router_host: str, router_port: int) -> dict[str, Any]:
    return {
        "fleet": fleet.name,
        "devices": list(plan.devices),
        "simulated_gpus": plan.simulated_gpus,
        "router": {"host": router_host, "port": router_port},
        "notices": list(plan.notices),
        "engines": [engine_row(e) for e in plan.engines],
    }


def engine_row(spec: EngineSpec) -> dict[str, Any]:
    return {
        "key": spec.key,
        "model": spec.model,
        "replica": spec.replica,
        "engine": spec.engine,
        "served": list(spec.served),
        "gpu": spec.gpu_label,
        "devices": list(spec.devices),
        "share_pct": spec.share_pct,
        "memory": memory_of(spec.argv),
        "port": spec.port,
        "kv_events": spec.kv_events,  # where the router subscribes (kv-routed models only)
        "initial": spec.initial,
        "env": {k: (MASK if secret_name(k) else v) for k, v in sorted(spec.env.items())},
        "argv": masked_argv(spec.argv),
    }


def memory_of(argv: list[str]) -> float | None:
    """The --gpu-memory-utilization the command gives (None: the engine's own default)."""
    for i, arg in enumerate(argv):
        if arg == MEMORY_FLAG and i + 1 < len(argv):
            return float(argv[i + 1])
        if arg.startswith(MEMORY_FLAG + "="):
            return float(arg.partition("=")[2])
    return None


def secret_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS)


def masked_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        if hide_next:
            out.append(MASK)
        elif eq and flag in _SECRET_FLAGS:
            out.append(f"{flag}={MASK}")
        else:
            out.append(arg)
        hide_next = not hide_next and arg in _SECRET_FLAGS
    return out
