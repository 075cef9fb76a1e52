"""Which Kubernetes pods serve traffic, and the pod table a list+watch keeps: pure functions.

Owns the rules that turn a pod object (decoded JSON, as the API server sends it) into an
endpoint the router may use, and the bookkeeping of the list+watch protocol: a full list
replaces the table outright, so nothing missed while a watch was down can survive it; a watch
event updates one pod; every event and bookmark moves the resourceVersion a watch resumes from;
an ERROR event (410 Gone and the rest) asks the caller to list again. No I/O, no clock:
`kubewatch` owns the connection and the timing.

A pod serves when it is Running, its Ready condition is True, it has a pod IP and it is not
being deleted (a deletionTimestamp means it is shutting down: vLLM finishes what it has, but
new requests must go elsewhere).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vfleet.router.kvwire import MAX_RANKS

MODELS_ANNOTATION = "vfleet.io/models"  # comma-separated served names; any characters
PORT_ANNOTATION = "vfleet.io/port"  # the engine's port, when it is not the `http` container port
PORT_NAME = "http"  # a container port with this name is the engine's port
# The port of the engine's KV-cache event publisher (vLLM --kv-events-config, bound on all
# addresses): the router subscribes to tcp://POD_IP:PORT. No annotation: no events.
KV_EVENTS_ANNOTATION = "vfleet.io/kv-events-port"
# How many data-parallel ranks publish (rank r at that port + r); absent: one.
KV_RANKS_ANNOTATION = "vfleet.io/kv-events-ranks"


@dataclass(frozen=True, slots=True)
class PodRules:
    """How pods name their port and models (the Helm chart and the router flags agree on these)."""

    port: int = 8000  # engine port when the pod names none
    model_label: str = "vfleet.io/model"  # label whose value is the one model the pod serves


@dataclass(frozen=True, slots=True)
class PodEndpoint:
    """A serving pod as the router's registry sees it."""

    name: str  # namespace/name, for logs
    url: str  # http://podIP:port
    models: tuple[str, ...]  # empty: learn them from the engine's /v1/models
    kv_events: str | None = None  # tcp://podIP:port of its KV-event publisher, if it has one
    kv_ranks: int = 1  # its data-parallel ranks, each publishing at that port + rank


@dataclass(frozen=True, slots=True)
class PodTable:
    """The serving pods a list+watch knows, and where the watch resumes."""

    pods: Mapping[str, PodEndpoint]  # by pod key (uid); serving pods only
    version: str  # the collection's resourceVersion: opaque, compared for equality only


@dataclass(frozen=True, slots=True)
class WatchError:
    """An ERROR event: the watch cannot go on, the caller must list again."""

    code: int  # 410 when the resourceVersion is too old (history compacted)
    reason: str
    message: str


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def pod_key(pod: Mapping[str, Any]) -> str:
    """The uid (a pod recreated under the same name is another pod), else namespace/name."""
    meta = _dict(pod.get("metadata"))
    uid = meta.get("uid")
    if isinstance(uid, str) and uid:
        return uid
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def is_serving(pod: Mapping[str, Any]) -> bool:
    meta = _dict(pod.get("metadata"))
    status = _dict(pod.get("status"))
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    if not isinstance(status.get("podIP"), str) or not status["podIP"]:
        return False
    conditions = status.get("conditions")
    return isinstance(conditions, list) and any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )


def _valid_port(value: Any) -> int | None:
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def pod_port(pod: Mapping[str, Any], default: int) -> int:
    """The `vfleet.io/port` annotation, else the container port named `http`, else `default`."""
    annotations = _dict(_dict(pod.get("metadata")).get("annotations"))
    port = _valid_port(annotations.get(PORT_ANNOTATION))
    if port is not None:
        return port
    containers = _dict(pod.get("spec")).get("containers")
    for container in containers if isinstance(containers, list) else ():
        ports = _dict(container).get("ports")
        for p in ports if isinstance(ports, list) else ():
            if _dict(p).get("name") == PORT_NAME:
                port = _valid_port(p.get("containerPort"))
                if port is not None:
                    return port
    return default


def pod_models(pod: Mapping[str, Any], label: str) -> tuple[str, ...]:
    """The `vfleet.io/models` annotation, else the model label; empty: ask the engine.

    Label values cannot hold `/`, so names like `Qwen/Qwen3-8B` need the annotation.
    """
    meta = _dict(pod.get("metadata"))
    listed = _dict(meta.get("annotations")).get(MODELS_ANNOTATION)
    if isinstance(listed, str) and listed.strip():
        return tuple(dict.fromkeys(m.strip() for m in listed.split(",") if m.strip()))
    value = _dict(meta.get("labels")).get(label)
    return (value,) if isinstance(value, str) and value else ()


def pod_kv_events(pod: Mapping[str, Any], host: str) -> str | None:
    """tcp://HOST:PORT from the `vfleet.io/kv-events-port` annotation; None without a valid one."""
    annotations = _dict(_dict(pod.get("metadata")).get("annotations"))
    port = _valid_port(annotations.get(KV_EVENTS_ANNOTATION))
    return None if port is None else f"tcp://{host}:{port}"


def pod_kv_ranks(pod: Mapping[str, Any]) -> int:
    """The `vfleet.io/kv-events-ranks` annotation; 1 when absent or not a rank count."""
    annotations = _dict(_dict(pod.get("metadata")).get("annotations"))
    text = annotations.get(KV_RANKS_ANNOTATION)
    if isinstance(text, str) and text.isdigit() and 1 <= int(text) <= MAX_RANKS:
        return int(text)
    return 1


def _host(ip: str) -> str:
    try:
        return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return ip


def pod_endpoint(pod: Mapping[str, Any], rules: PodRules) -> PodEndpoint | None:
    """The endpoint a pod offers, or None while it must get no traffic."""
    if not is_serving(pod):
        return None
    meta = _dict(pod.get("metadata"))
    ip = _dict(pod.get("status"))["podIP"]
    return PodEndpoint(
        name=f"{meta.get('namespace', '')}/{meta.get('name', '')}",
        url=f"http://{_host(ip)}:{pod_port(pod, rules.port)}",
        models=pod_models(pod, rules.model_label),
        kv_events=pod_kv_events(pod, _host(ip)),
        kv_ranks=pod_kv_ranks(pod),
    )


def from_list(items: Iterable[Mapping[str, Any]], version: str, rules: PodRules) -> PodTable:
    """The table a full list describes: it replaces whatever was known before."""
    pods: dict[str, PodEndpoint] = {}
    for pod in items:
        ep = pod_endpoint(pod, rules)
        if ep is not None:
            pods[pod_key(pod)] = ep
    return PodTable(pods, version)


def list_page(body: Any) -> tuple[list[dict[str, Any]], str, str | None]:
    """(items, resourceVersion, continue token) of one page of a PodList."""
    items = body.get("items", ()) if isinstance(body, dict) else ()
    if items is None:  # an empty list, as Go may encode it
        items = []
    if not isinstance(items, list):
        raise ValueError("the pod list is not a PodList object")
    meta = _dict(body.get("metadata"))
    version = meta.get("resourceVersion")
    if not isinstance(version, str) or not version:
        raise ValueError("the pod list has no metadata.resourceVersion")
    token = meta.get("continue")
    pods = [item for item in items if isinstance(item, dict)]
    return pods, version, token if isinstance(token, str) and token else None


def apply_event(table: PodTable, event: Any, rules: PodRules) -> PodTable | WatchError:
    """One watch event applied to the table; a WatchError when the watch must give way to a list.

    Unchanged pods keep the same `pods` mapping object, so callers can tell a change by identity.
    """
    if not isinstance(event, dict):
        return WatchError(0, "BadEvent", "a watch event that is not a JSON object")
    kind = event.get("type")
    obj = _dict(event.get("object"))
    if kind == "ERROR":
        return WatchError(
            _status_code(obj.get("code")), str(obj.get("reason", "")), str(obj.get("message", ""))
        )
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        return WatchError(0, "BadEvent", f"unknown watch event type {kind!r}")
    version = _dict(obj.get("metadata")).get("resourceVersion")
    if not isinstance(version, str) or not version:
        version = table.version
    if kind == "BOOKMARK":  # no object, only progress: where to resume
        return PodTable(table.pods, version)
    key = pod_key(obj)
    ep = None if kind == "DELETED" else pod_endpoint(obj, rules)
    if table.pods.get(key) == ep:
        return PodTable(table.pods, version)
    pods = dict(table.pods)
    if ep is None:
        del pods[key]
    else:
        pods[key] = ep
    return PodTable(pods, version)


def _status_code(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def changes(
    old: Mapping[str, PodEndpoint], new: Mapping[str, PodEndpoint]
) -> tuple[list[PodEndpoint], list[PodEndpoint]]:
    """(appeared or changed, gone) between two tables' pods, for logs."""
    added = [ep for key, ep in new.items() if old.get(key) != ep]
    gone = [ep for key, ep in old.items() if key not in new]
    return added, gone
