"""Reading vLLM flags users wrote by hand (extraArgs, server.args, container args).

Pure. Flags that vfleet models with a typed field are lifted out of the list so that the packer,
the router and the simulator can see them (a `--tensor-parallel-size=4` in T9k's extraArgs decides
how many GPUs a replica needs); the rest stays in order as extra arguments.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# flag -> (EngineSettings field, value kind). Both spellings vLLM accepts are listed.
_SETTINGS: dict[str, tuple[str, str]] = {
    "--max-model-len": ("max_model_len", "int"),
    "--gpu-memory-utilization": ("gpu_memory_utilization", "float"),
    "--tensor-parallel-size": ("tensor_parallel_size", "int"),
    "-tp": ("tensor_parallel_size", "int"),
    "--pipeline-parallel-size": ("pipeline_parallel_size", "int"),
    "-pp": ("pipeline_parallel_size", "int"),
    "--max-num-seqs": ("max_num_seqs", "int"),
    "--max-num-batched-tokens": ("max_num_batched_tokens", "int"),
    "--quantization": ("quantization", "str"),
    "-q": ("quantization", "str"),
    "--dtype": ("dtype", "str"),
    "--chat-template": ("chat_template", "str"),
    "--enable-prefix-caching": ("enable_prefix_caching", "true"),
    "--no-enable-prefix-caching": ("enable_prefix_caching", "false"),
    "--enable-chunked-prefill": ("enable_chunked_prefill", "true"),
    "--no-enable-chunked-prefill": ("enable_chunked_prefill", "false"),
    "--enforce-eager": ("enforce_eager", "true"),
    "--trust-remote-code": ("trust_remote_code", "true"),
}
_LORA = {"--enable-lora", "--max-loras", "--max-lora-rank", "--lora-modules"}
_TOOLS = {"--enable-auto-tool-choice", "--tool-call-parser"}
_MODEL = {"--served-model-name", "--task", "--runner", "--convert", "--revision", "--model"}
_DROPPED = {"--host", "--port"}  # the supervisor and the chart own these
_MULTI = {"--served-model-name", "--lora-modules"}  # nargs='+'
_BOOL_ONLY = {"--enable-lora", "--enable-auto-tool-choice"}
# --task values onto vfleet's task (what the router and the simulator care about)
_TASK = {
    "embed": "embed",
    "embedding": "embed",
    "classify": "classify",
    "score": "score",
    "reward": "reward",
    "generate": "generate",
}
_CONVERT = {
    "embed": "embed",
    "classify": "classify",
    "score": "score",
    "reward": "reward",
    "token_embed": "embed",
    "token_classify": "classify",
}


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


def lift(args: Sequence[Any]) -> Lifted:
    out = Lifted()
    words = tokens(args)
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, inline = word.partition("=")
        flag = _norm(flag)
        known = flag in _SETTINGS or flag in _LORA or flag in _TOOLS or flag in _MODEL
        if not word.startswith("-") or not (known or flag in _DROPPED):
            out.rest.append(word)
            i += 1
            continue
        values: list[str] = []
        kind = _SETTINGS[flag][1] if flag in _SETTINGS else "str"
        takes_value = kind not in ("true", "false") and flag not in _BOOL_ONLY
        if eq:
            values = [inline]
        elif takes_value:
            j = i + 1
            while j < len(words) and not (words[j].startswith("-") and len(words[j]) > 1):
                values.append(words[j])
                j += 1
                if flag not in _MULTI:
                    break
            i = j - 1
        i += 1
        if takes_value and not values:
            out.notices.append(f"{flag} has no value; passed on as given")
            out.rest.append(word)
            continue
        if not _apply(out, flag, kind, values):
            out.rest.extend([word] if eq else [word, *values])
    return out


def _apply(out: Lifted, flag: str, kind: str, values: list[str]) -> bool:
    """Record one flag; False when its value does not parse (it then stays an extra arg)."""
    value = values[0] if values else ""
    if flag in _DROPPED:
        out.notices.append(f"{flag} {value} dropped: vfleet assigns hosts and ports")
        return True
    if flag in _SETTINGS:
        name = _SETTINGS[flag][0]
        if kind in ("true", "false"):
            out.settings[name] = kind == "true"
            return True
        try:
            out.settings[name] = {"int": int, "float": float, "str": str}[kind](value)
        except ValueError:
            return False  # e.g. --max-model-len 32k: vLLM's own parser decides
        return True
    if flag == "--served-model-name":
        out.model["served_names"] = tuple(values)
    elif flag == "--task":
        if value not in _TASK:
            return False
        out.model["task"] = _TASK[value]
    elif flag == "--runner":
        if value == "pooling":
            out.model.setdefault("task", "embed")
        elif value != "generate":
            return value == "auto"
    elif flag == "--convert":
        if value not in _CONVERT:
            return value == "auto"
        out.model["task"] = _CONVERT[value]
    elif flag in ("--revision", "--model"):
        out.model[flag[2:]] = value
    elif flag == "--enable-lora":
        out.lora["enabled"] = True
    elif flag == "--max-loras":
        out.lora["max_loras"] = int(value) if value.isdigit() else None
        return value.isdigit()
    elif flag == "--max-lora-rank":
        out.lora["max_lora_rank"] = int(value) if value.isdigit() else None
        return value.isdigit()
    elif flag == "--lora-modules":
        mods = dict(v.partition("=")[::2] for v in values if "=" in v)
        if len(mods) != len(values):
            return False
        out.lora.setdefault("modules", {}).update(mods)
        out.lora["enabled"] = True
    elif flag == "--enable-auto-tool-choice":
        out.tools["enabled"] = True
    elif flag == "--tool-call-parser":
        out.tools["parser"] = value
    return True
