"""`vllm serve` command lines from a model, for the vLLM version that will run them.

Pure: the rules come in (`vfleet.engines.rules`, the chart's engine-rules.yaml), and with them
every flag name written here. The typed settings become flags in the rules' order, the task
becomes `--task` or `--runner/--convert` by version, LoRA and tool calling follow, and flags
users still copy from older guides are rewritten for the installed version, each with a notice
(`--disable-log-requests` dropped from 0.10.2, `--cuda-graph-sizes` renamed from 0.11.1, and
whatever else the rules file lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vfleet.engines.rules import (
    EngineRules,
    LoraRules,
    Rewrite,
    Setting,
    ToolRules,
    Version,
    parse_version,
    since,
)
from vfleet.fleetspec.models import Lora, Model, ToolCalling

__all__ = ["Command", "Version", "parse_version", "serve_command", "translate"]


@dataclass(frozen=True)
class Command:
    argv: list[str]
    notices: list[str] = field(default_factory=list)


def serve_command(
    model: Model,
    model_ref: str,
    host: str,
    port: int,
    version: Version | None = None,
    gpu_memory_utilization: float | None = None,
    executable: Sequence[str] = ("vllm",),
    *,
    engine_rules: EngineRules,
    kv_events_config: str | None = None,
) -> Command:
    """`executable serve MODEL ...`; `gpu_memory_utilization` is the packer's derived value,
    used only when the model does not set one. With `kv_events_config` (the JSON
    `EngineRules.kv_events.config` writes) the engine publishes its KV-cache events for the
    router, replacing any hand-written config."""
    r = engine_rules
    s = model.vllm
    argv = [*executable, "serve", model_ref, r.host_flag, host, r.port_flag, str(port)]
    argv += [r.served_flag, *model.served_names]
    notices: list[str] = []
    if model.source.revision and model.source.kind in r.revision_sources:
        argv += [r.revision_flag, model.source.revision]
    values = {setting.field: getattr(s, setting.field) for setting in r.settings}
    values["gpu_memory_utilization"] = s.gpu_memory_utilization or gpu_memory_utilization
    for setting in r.settings:
        argv += setting_flags(setting, values[setting.field])
    argv += _task(model.task, version, r)
    argv += _lora(s.lora, r.lora)
    argv += _tools(s.tool_calling, r.tools)
    extra = list(s.extra_args)
    if kv_events_config is not None:
        extra = _without(extra, r.kv_events.flag, notices)
    argv += translate(extra, version, notices, engine_rules=r)
    if kv_events_config is not None:  # last: the chart appends it to the finished line too
        argv += [r.kv_events.flag, kv_events_config]
    return Command(argv, notices)


def _without(args: list[str], flag: str, notices: list[str]) -> list[str]:
    """`args` less `flag` and its one value (`--flag V` or `--flag=V`), with a notice."""
    out: list[str] = []
    i = 0
    while i < len(args):
        name = args[i].split("=", 1)[0].replace("_", "-")
        if name != flag:
            out.append(args[i])
            i += 1
            continue
        notices.append(f"{flag} replaced: the router reads this engine's KV events")
        i += 1 if "=" in args[i] or i + 1 >= len(args) else 2
    return out


def setting_flags(setting: Setting, value: Any) -> list[str]:
    """The words one typed setting adds (none when unset or at its default)."""
    if value is None:
        return []
    if setting.type == "switch":
        return [setting.flag if value else str(setting.negated)]
    if setting.type == "flag":
        return [setting.flag] if value else []
    if setting.default is not None and value == setting.default:
        return []
    return [setting.flag, f"{value:g}" if isinstance(value, float) else str(value)]


def _task(task: str, version: Version | None, r: EngineRules) -> list[str]:
    runner = since(version, r.runner_since)
    if task == "auto":
        return []
    if task == "generate":
        return [r.runner_flag, "generate"] if runner else []
    if not runner:
        return [r.task_flag, task]
    return [r.runner_flag, "pooling", r.convert_flag, r.convert[task]]


def _lora(lora: Lora, rules: LoraRules) -> list[str]:
    if not (lora.enabled or lora.modules):
        return []
    out = [rules.enable.flag]
    for setting in rules.settings:
        out += setting_flags(setting, getattr(lora, setting.field))
    if lora.modules:
        out += [rules.modules.flag, *(f"{k}={v}" for k, v in lora.modules.items())]
    return out


def _tools(tools: ToolCalling, rules: ToolRules) -> list[str]:
    out = [rules.enable.flag] if tools.enabled else []
    if tools.parser:
        out += [rules.parser.flag, tools.parser]
    return out


def translate(
    args: list[str],
    version: Version | None,
    notices: list[str],
    *,
    engine_rules: EngineRules,
) -> list[str]:
    """Rewrite flags the target vLLM no longer takes; everything else passes unchanged."""
    due = {w.flag: w for w in engine_rules.rewrites if since(version, w.since)}
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        rewrite = due.get(word.split("=", 1)[0].replace("_", "-"))
        if rewrite is None:
            out.append(word)
            i += 1
        elif rewrite.drop:
            notices.append(f"{rewrite.flag} dropped: {rewrite.why}")
            i += 1
        else:
            values, i = _values(args, i)
            out += _renamed(rewrite, values, notices)
    return out


def _renamed(rewrite: Rewrite, values: list[str], notices: list[str]) -> list[str]:
    new = rewrite.one if rewrite.one and len(values) == 1 else str(rewrite.to)
    before, after = " ".join([rewrite.flag, *values]), " ".join([new, *values])
    notices.append(f"{before} is now {after} (vLLM >= {'.'.join(map(str, rewrite.since))})")
    return [new, *values]


def _values(args: list[str], i: int) -> tuple[list[str], int]:
    """The values of a multi-value flag at args[i] and the index after them."""
    word = args[i]
    if "=" in word:
        return word.split("=", 1)[1].replace(",", " ").split(), i + 1
    j = i + 1
    while j < len(args) and not args[j].startswith("-"):
        j += 1
    return args[i + 1 : j], j
