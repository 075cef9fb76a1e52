"""Reading vLLM flags users wrote by hand (extraArgs, server.args, container args).

Pure given the rules (`vfleet.engines.rules`: which flags are typed settings, the names of the
model, task, LoRA and tool-calling flags, which --task/--convert values mean which task, which
flags vfleet owns); without them, the chart's rules file is read. Flags that vfleet models with
a typed field are lifted out of the list so that the packer,
the router and the simulator can see them (a `--tensor-parallel-size=4` in T9k's extraArgs decides
how many GPUs a replica needs); the rest stays in order as extra arguments.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vfleet.engines.rulefile import load_rules
from vfleet.engines.rules import EngineRules, Setting

# vLLM's --model names the weights like the positional argument; the chart never writes it.
_MODEL_FLAG = "--model"


def _settings(settings: tuple[Setting, ...]) -> dict[str, tuple[str, str]]:
    """flag -> (spec field, value kind), every spelling the rules list; a switch's
    two flags read as "true" and "false"."""
    out: dict[str, tuple[str, str]] = {}
    for s in settings:
        kind = "true" if s.type in ("switch", "flag") else s.type
        for flag in (s.flag, *s.aliases):
            out[flag] = (s.field, kind)
        if s.negated:
            out[s.negated] = (s.field, "false")
    return out


@dataclass
class Lifted:
    settings: dict[str, Any] = field(default_factory=dict)  # EngineSettings fields
    lora: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # served_names, task, revision, model
    rest: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def tokens(args: Sequence[Any]) -> list[str]:
    """Items as argv words. TKE renders extraArgs into a shell line, so `--x 1 2` in one item is
    three words there; vLLM flags never contain spaces, so splitting such items is safe."""
    out: list[str] = []
    for item in args:
        text = str(item) if not isinstance(item, bool) else str(item).lower()
        if text.startswith("-") and any(c.isspace() for c in text):
            out.extend(shlex.split(text))
        else:
            out.append(text)
    return out


def _norm(flag: str) -> str:
    # vLLM accepts --gpu_memory_utilization as well as --gpu-memory-utilization.
    return flag if not flag.startswith("--") else "--" + flag[2:].replace("_", "-")


def lift(args: Sequence[Any], engine_rules: EngineRules | None = None) -> Lifted:
    """Typed settings, LoRA, tool and model flags out of `args`; the rest in order.
    `engine_rules`: default, the file of the chart vfleet uses (the importers read files
    anyway; the plan and the packer never call this)."""
    r = engine_rules or load_rules()
    table = _settings(r.settings)
    lora_table = _settings(r.lora.settings)
    known = {
        *table,
        *lora_table,
        r.lora.enable.flag,
        r.lora.modules.flag,
        r.tools.enable.flag,
        r.tools.parser.flag,
        r.served_flag,
        r.task_flag,
        r.runner_flag,
        r.convert_flag,
        r.revision_flag,
        _MODEL_FLAG,
        *r.owned,
    }
    multi = {r.served_flag, r.lora.modules.flag}  # nargs='+'
    bare = {r.lora.enable.flag, r.tools.enable.flag}
    out = Lifted()
    words = tokens(args)
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, inline = word.partition("=")
        flag = _norm(flag)
        if not word.startswith("-") or flag not in known:
            out.rest.append(word)
            i += 1
            continue
        values: list[str] = []
        kind = table[flag][1] if flag in table else "str"
        takes_value = kind not in ("true", "false") and flag not in bare
        if eq:
            values = [inline]
        elif takes_value:
            j = i + 1
            while j < len(words) and not (words[j].startswith("-") and len(words[j]) > 1):
                values.append(words[j])
                j += 1
                if flag not in multi:
                    break
            i = j - 1
        i += 1
        if takes_value and not values:
            out.notices.append(f"{flag} has no value; passed on as given")
            out.rest.append(word)
            continue
        if not _apply(out, r, table, lora_table, flag, values):
            out.rest.extend([word] if eq else [word, *values])
    return out


def _apply(
    out: Lifted,
    r: EngineRules,
    table: dict[str, tuple[str, str]],
    lora_table: dict[str, tuple[str, str]],
    flag: str,
    values: list[str],
) -> bool:
    """Record one flag; False when its value does not parse (it then stays an extra arg)."""
    value = values[0] if values else ""
    if flag in r.owned:
        out.notices.append(f"{flag} {value} dropped: vfleet assigns hosts and ports")
        return True
    if flag in table:
        return _typed(out.settings, table[flag], value)
    if flag in lora_table:
        return _typed(out.lora, lora_table[flag], value)
    if flag == r.served_flag:
        out.model["served_names"] = tuple(values)
    elif flag == r.task_flag:
        if value not in r.from_task:
            return False
        out.model["task"] = r.from_task[value]
    elif flag == r.runner_flag:
        if value == "pooling":
            out.model.setdefault("task", "embed")
        elif value != "generate":
            return value == "auto"
    elif flag == r.convert_flag:
        if value not in r.from_convert:
            return value == "auto"
        out.model["task"] = r.from_convert[value]
    elif flag == r.revision_flag:
        out.model["revision"] = value
    elif flag == _MODEL_FLAG:
        out.model["model"] = value
    elif flag == r.lora.enable.flag:
        out.lora["enabled"] = True
    elif flag == r.lora.modules.flag:
        mods = dict(v.partition("=")[::2] for v in values if "=" in v)
        if len(mods) != len(values):
            return False
        out.lora.setdefault("modules", {}).update(mods)
        out.lora["enabled"] = True
    elif flag == r.tools.enable.flag:
        out.tools["enabled"] = True
    elif flag == r.tools.parser.flag:
        out.tools["parser"] = value
    return True


def _typed(into: dict[str, Any], entry: tuple[str, str], value: str) -> bool:
    """One typed setting's value into `into`; False when it does not parse."""
    name, kind = entry
    if kind in ("true", "false"):
        into[name] = kind == "true"
        return True
    try:
        into[name] = {"int": int, "float": float, "str": str}[kind](value)
    except ValueError:
        return False  # e.g. --max-model-len 32k: vLLM's own parser decides
    return True
