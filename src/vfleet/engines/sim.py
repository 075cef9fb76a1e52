"""`vfleet sim` command lines from a model: the simulator stands in for vLLM with the same
names, task and limits, so a fleet behaves the same to clients and to the router."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vfleet.fleetspec.models import Model

_TASK = {
    "generate": "generate",
    "embed": "embed",
    "reward": "embed",
    "classify": "classify",
    "score": "classify",
}


def sim_command(
    model: Model,
    model_ref: str,
    host: str,
    port: int,
    gpu_memory_utilization: float | None = None,
    executable: Sequence[str] = (sys.executable, "-m", "vfleet"),
    kv_events_config: str | None = None,
) -> list[str]:
    """`kv_events_config`: vLLM's --kv-events-config JSON, for a model whose router reads
    KV events; written last, so it wins over one in the model's sim args (click keeps the
    last value), as the router must know where the events are."""
    s = model.vllm
    argv = [*executable, "sim", "--model", model_ref, "--host", host, "--port", str(port)]
    for name in model.served_names:
        argv += ["--served-model-name", name]
    argv += ["--task", _TASK[model.effective_task], "--profile", model.sim.profile]
    argv += ["--time-scale", f"{model.sim.time_scale:g}"]
    for flag, value in (
        ("--max-model-len", s.max_model_len),
        ("--max-num-seqs", s.max_num_seqs),
        ("--max-num-batched-tokens", s.max_num_batched_tokens),
    ):
        if value is not None:
            argv += [flag, str(value)]
    gmu = s.gpu_memory_utilization or gpu_memory_utilization
    if gmu is not None:
        argv += ["--gpu-memory-utilization", f"{gmu:g}"]
    if s.enable_prefix_caching is False:
        argv.append("--no-enable-prefix-caching")
    if s.lora.enabled or s.lora.modules:
        argv.append("--enable-lora")
        for name, path in s.lora.modules.items():
            argv += ["--lora-modules", f"{name}={path}"]
        if s.lora.max_loras:
            argv += ["--max-loras", str(s.lora.max_loras)]
    if s.tool_calling.enabled:
        # as vLLM: tool_choice "auto" is refused unless both flags are given
        argv += [
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            s.tool_calling.parser or "hermes",
        ]
    argv += list(model.sim.extra_args)
    if kv_events_config is not None:
        argv += ["--kv-events-config", kv_events_config]
    return argv


def shared_gpu_args(engine: str, devices: Sequence[int], share_pct: int, run_dir: str) -> list[str]:
    """`--shared-gpu FILE` for a sim engine holding a fraction of one GPU, FILE one per GPU in
    the run directory: the sim engines packed onto a GPU time-slice it (`sim.gpushare`), as
    vLLM engines sharing a real one do. Nothing for whole GPUs or for vLLM. (A string path:
    the launch plan that imports this module does no I/O, not even pathlib.)"""
    if engine != "sim" or share_pct >= 100 or len(devices) != 1:
        return []
    return ["--shared-gpu", f"{run_dir.rstrip('/')}/gpu-{devices[0]}.share"]
