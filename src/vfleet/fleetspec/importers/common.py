"""Helpers the importers share: type checks that point at the file, names, flag lifting."""

from __future__ import annotations

import math
import re
from typing import Any

from vfleet.engines.flags import lift
from vfleet.fleetspec.draft import Draft
from vfleet.fleetspec.source import Path_


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


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def duration_s(value: Any) -> float | None:
    """Seconds of a Go/Knative duration ("60s", "1m30s", "1.5h", "500ms"); a bare number is
    seconds. None when it is not one."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return None
    seconds = number(value)
    if seconds is None and isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    return seconds if seconds is not None and seconds >= 0 else None


def number(value: Any) -> float | None:
    """A number written as a number or a string ("32", "10.0", "200%"); None when not one."""
    if isinstance(value, bool):
        return None
    try:
        out = float(str(value).strip().removesuffix("%"))
    except ValueError:
        return None
    return out if math.isfinite(out) else None


_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_QUANTITY_UNITS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def quantity(value: Any) -> float | None:
    """A Kubernetes quantity ("32", "500m", "2k", 0.8) as a number; None when not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    return float(match[1]) * _QUANTITY_UNITS[match[2]]
