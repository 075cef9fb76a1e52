"""Tencent TKE `vllm-inference-tke` chart values onto the fleet spec.

That chart runs `vllm serve /data/model --served-model-name <model.name>` with the weights from
a PVC sub-path (`model.pvc`) or a host path (`model.local`), and renders `server.extraArgs` into a
shell line, so one item may hold several words.
"""

from __future__ import annotations

import re
from typing import Any

from vfleet.fleetspec.draft import Draft
from vfleet.fleetspec.importers.common import (
    env_list,
    mapping,
    number,
    put_args,
    server_resources,
    slug,
)
from vfleet.fleetspec.source import Path_

SERVER_MAPPED = {"replicas", "image", "apiKey", "resources", "args", "extraArgs", "env"}
SERVER_K8S = {"lwsGroupSize", "imagePullPolicy", "service", "nodeSelector", "tolerations"}
ARGS = {
    "tpSize": "tensorParallelSize",
    "ppSize": "pipelineParallelSize",
    "maxModelLen": "maxModelLen",
    "maxBatchSize": "maxNumSeqs",
}


def detect(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    model, server = doc.get("model"), doc.get("server")
    return (
        isinstance(model, dict)
        and "name" in model
        and isinstance(server, dict)
        and ("args" in server or "lwsGroupSize" in server or "pvc" in model)
    )


def flattened_text(text: str) -> bool:
    """The same test on the raw text (a flattened copy may not even parse as YAML, e.g. with
    two env entries): `model:` and `server:` open nothing and chart keys sit at column 0."""
    top = {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^([A-Za-z][\w./-]*):(.*)$", text, re.M)
    }
    return (
        top.get("model") == ""
        and top.get("server") == ""
        and any(k in top for k in ("lwsGroupSize", "tpSize", "extraArgs", "maxBatchSize"))
    )


def looks_flattened(doc: Any) -> bool:
    """The TKE values as pasted from a web page that lost the indentation: `model:` and
    `server:` are empty and their children sit at the top level."""
    return (
        isinstance(doc, dict)
        and "model" in doc
        and doc.get("model") is None
        and "server" in doc
        and doc.get("server") is None
        and any(k in doc for k in ("lwsGroupSize", "tpSize", "extraArgs"))
    )


# The chart's values tree, enough to put a pasted, unindented copy back in shape.
_ANY: dict[str, Any] = {}  # a mapping with free-form keys (resources.requests, labels)
_LIST = "list"
_ITEMS = {"name": None, "value": None, "valueFrom": None}
SCHEMA: dict[str, Any] = {
    "model": {
        "name": None,
        "pvc": {"enabled": None, "name": None, "path": None},
        "local": {"enabled": None, "path": None},
    },
    "server": {
        "replicas": None,
        "lwsGroupSize": None,
        "image": None,
        "imagePullPolicy": None,
        "apiKey": None,
        "resources": {"requests": _ANY, "limits": _ANY},
        "args": {
            "tpSize": None,
            "ppSize": None,
            "epEnabled": None,
            "maxModelLen": None,
            "maxBatchSize": None,
        },
        "extraArgs": _LIST,
        "env": [_ITEMS],
        "service": {"enabled": None, "type": None, "port": None},
    },
    "labels": _ANY,
    "podAnnotations": _ANY,
}


def renest(text: str) -> str:
    """Indent a flattened copy of the values by the chart's key tree; line numbers stay."""
    stack: list[tuple[Any, int]] = [(SCHEMA, 0)]  # (schema of an open container, child indent)
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            out.append(raw)
            continue
        if line.startswith("- "):
            while len(stack) > 1 and not isinstance(stack[-1][0], (list, str)):
                stack.pop()
            schema, indent = stack[-1]
            out.append(" " * indent + line)
            if isinstance(schema, list):  # a list of mappings: later keys continue this item
                stack.append((schema[0], indent + 2))
            continue
        key, _, value = line.partition(":")
        while len(stack) > 1 and not _holds(stack, key.strip().strip("\"'")):
            stack.pop()
        schema, indent = stack[-1]
        out.append(" " * indent + line)
        child = schema.get(key.strip(), _ANY) if isinstance(schema, dict) else None
        if not value.strip() and child is not None:
            stack.append((child, indent + 2))
    return "\n".join(out) + "\n"


def _holds(stack: list[tuple[Any, int]], key: str) -> bool:
    """Whether the innermost open container takes `key`: a named child, or a free-form mapping
    that no enclosing container claims the key for."""
    schema = stack[-1][0]
    if not isinstance(schema, dict):
        return False
    if key in schema:
        return True
    if schema is not _ANY:
        return False
    return not any(isinstance(s, dict) and key in s for s, _ in stack[:-1])


def build(draft: Draft, values: dict[str, Any]) -> None:
    # Keys of another chart mean nothing to vfleet's: unknown ones are warned about, not kept.
    draft.unknown((), values, {"model", "server", "labels", "podAnnotations"}, None)
    model = mapping(draft, values.get("model"), ("model",))
    server = mapping(draft, values.get("server"), ("server",))
    at: tuple[Any, ...] = ("models", 0)
    served = str(model["name"])
    draft.put((*at, "name"), slug(served), ("model", "name"))
    draft.put((*at, "servedNames"), [served], ("model", "name"))
    pvc = mapping(draft, model.get("pvc"), ("model", "pvc"))
    local = mapping(draft, model.get("local"), ("model", "local"))
    if pvc.get("enabled"):
        source = {"kind": "pvc", "id": str(pvc.get("name", "")), "path": str(pvc.get("path", ""))}
        draft.put((*at, "source"), source, ("model", "pvc"))
    elif local.get("enabled"):
        draft.put(
            (*at, "source"), {"kind": "local", "id": str(local.get("path", ""))}, ("model", "local")
        )
    else:
        draft.put((*at, "source"), {"kind": "hf", "id": served}, ("model", "name"))
    draft.unknown(("server",), server, SERVER_MAPPED | SERVER_K8S, None)
    if (number(server.get("lwsGroupSize")) or 1) > 1:
        draft.note(
            ("server", "lwsGroupSize"),
            "a model spanning nodes runs as a LeaderWorkerSet "
            "on Kubernetes; locally it runs on this machine's GPUs",
        )
    if "replicas" in server:
        draft.put((*at, "replicas"), server["replicas"], ("server", "replicas"))
    if server.get("image"):
        draft.put((*at, "image"), str(server["image"]), ("server", "image"))
    if server.get("apiKey"):
        draft.put(("router", "apiKeys"), [str(server["apiKey"])], ("server", "apiKey"))
    server_resources(draft, server, at)
    args = mapping(draft, server.get("args"), ("server", "args"))
    for key, native in ARGS.items():
        if args.get(key) is not None:
            draft.put((*at, "vllm", native), args[key], ("server", "args", key))
    if args.get("epEnabled"):
        put_args(draft, at, ["--enable-expert-parallel"], ("server", "args", "epEnabled"))
    if server.get("extraArgs"):
        put_args(draft, at, server["extraArgs"], ("server", "extraArgs"))
    if server.get("env"):
        env = env_list(draft, server["env"], ("server", "env"))
        draft.put((*at, "env"), env, ("server", "env"))
    _kubernetes(draft, values, server, (*at, "kubernetes"))
    if "service" in server:
        svc = mapping(draft, server["service"], ("server", "service"))
        if svc.get("port"):
            draft.put(
                ("router", "kubernetes", "servicePort"), svc["port"], ("server", "service", "port")
            )
        if svc.get("type"):
            draft.put(
                ("router", "kubernetes", "serviceType"), svc["type"], ("server", "service", "type")
            )


def _kubernetes(draft: Draft, values: dict[str, Any], server: dict[str, Any], at: Path_) -> None:
    """The chart's pod settings; its labels go on both the workload and the pods."""
    if server.get("lwsGroupSize"):
        draft.put((*at, "lwsGroupSize"), server["lwsGroupSize"], ("server", "lwsGroupSize"))
    for key in ("imagePullPolicy", "nodeSelector", "tolerations"):
        if server.get(key):
            draft.put((*at, key), server[key], ("server", key))
    if values.get("labels"):
        draft.put((*at, "labels"), values["labels"], ("labels",))
        draft.put((*at, "podLabels"), values["labels"], ("labels",))
    if values.get("podAnnotations"):
        draft.put((*at, "podAnnotations"), values["podAnnotations"], ("podAnnotations",))
