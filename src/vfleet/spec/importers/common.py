"""Helpers the importers share: type checks that point at the file, names, flag lifting."""

from __future__ import annotations

import re
from typing import Any

from vfleet.engines.flags import lift
from vfleet.spec.draft import Draft
from vfleet.spec.source import Path_


def mapping(draft: Draft, value: Any, src: Path_) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise draft.doc.error(src, f"expected a mapping, got {type(value).__name__}", draft.docno)
    return value


def sequence(draft: Draft, value: Any, src: Path_) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise draft.doc.error(src, f"expected a list, got {type(value).__name__}", draft.docno)
    return value


def slug(text: str) -> str:
    """A Kubernetes-safe model name from a served name or a repo id."""
    base = text.rstrip("/").rsplit("/", 1)[-1].lower()
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    return base[:52].strip("-") or "model"


def put_args(draft: Draft, model: Path_, args: Any, src: Path_) -> None:
    """Lift typed vLLM flags out of a list of arguments into the model; keep the rest."""
    lifted = lift(sequence(draft, args, src))
    for message in lifted.notices:
        draft.note(src, message)
    for key, value in lifted.settings.items():
        path = (*model, "vllm", _camel(key))
        before = _get(draft.data, path)
        if before is not None and before != value:
            draft.note(
                src,
                f"{_camel(key)} is {before} but the arguments say {value}; "
                "the argument wins, as vLLM reads the last one",
            )
        draft.put(path, value, src)
    for key, value in lifted.lora.items():
        if key == "modules":
            for name, path in value.items():
                draft.put((*model, "vllm", "lora", "modules", name), path, src)
        else:
            draft.put((*model, "vllm", "lora", _camel(key)), value, src)
    for key, value in lifted.tools.items():
        draft.put((*model, "vllm", "toolCalling", key), value, src)
    if "served_names" in lifted.model:
        draft.put((*model, "servedNames"), list(lifted.model["served_names"]), src)
    if "task" in lifted.model:
        draft.put((*model, "task"), lifted.model["task"], src)
    if "revision" in lifted.model:
        draft.put((*model, "source", "revision"), lifted.model["revision"], src)
    if "model" in lifted.model:
        draft.put((*model, "source", "id"), lifted.model["model"], src)
    if lifted.rest:
        rest = list(_get(draft.data, (*model, "vllm", "extraArgs")) or [])
        draft.put((*model, "vllm", "extraArgs"), rest + lifted.rest, src)


def _get(data: Any, path: Path_) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def env_list(draft: Draft, value: Any, src: Path_) -> list[dict[str, Any]]:
    """Kubernetes-style env ([{name, value|valueFrom}]) or a plain mapping."""
    if isinstance(value, dict):
        return [{"name": str(k), "value": "" if v is None else str(v)} for k, v in value.items()]
    out = []
    for i, item in enumerate(sequence(draft, value, src)):
        entry = mapping(draft, item, (*src, i))
        if "name" not in entry:
            raise draft.doc.error((*src, i), "an env entry needs a name", draft.docno)
        row: dict[str, Any] = {"name": str(entry["name"])}
        if "valueFrom" in entry:
            row["valueFrom"] = entry["valueFrom"]
        else:
            row["value"] = "" if entry.get("value") is None else str(entry["value"])
        out.append(row)
    return out


def server_resources(draft: Draft, server: dict[str, Any], at: Path_) -> None:
    """`server.resources` (TKE and T9k): GPUs, CPU and memory; requests win over limits."""
    res = mapping(draft, server.get("resources"), ("server", "resources"))
    for part in ("limits", "requests"):
        src = ("server", "resources", part)
        block = mapping(draft, res.get(part), src)
        if block.get("nvidia.com/gpu") is not None:
            draft.put((*at, "gpu"), block["nvidia.com/gpu"], (*src, "nvidia.com/gpu"))
        for key in ("cpu", "memory"):
            if block.get(key) is not None:
                draft.put((*at, key), str(block[key]), (*src, key))
