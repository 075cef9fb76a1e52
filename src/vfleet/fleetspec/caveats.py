"""Warnings about what changes meaning, or is left out, between a user's files and what vfleet
runs (the chart on Kubernetes, or `vfleet up` on this machine).

The importers already say what they skip (their notes); this module adds what only shows when
the typed fleet is set against the files it came from: a GPU memory utilization that HAMi turns
into a fraction of a slice, `$(VAR)` placeholders nothing fills in, CPU/memory limits that become
requests, an Ingress that goes around the router, API keys kept in a Secret. Every line has one
format, `warning: FILE:LINE: message`. `caveats` is pure (documents and fleet in, lines out);
`documents` reads the files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfleet.fleetspec.importers import tke
from vfleet.fleetspec.models import Fleet, Model
from vfleet.fleetspec.source import Document, Path_, dotted, parse, read_text

PLACEHOLDER = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
GMU_KEYS = ("gpuMemoryUtilization", "gpu_memory_utilization")
GMU_FLAG = "--gpu-memory-utilization"
WORKLOADS = {"Deployment", "StatefulSet", "LeaderWorkerSet"}
API_KEY_NAME = re.compile(r"API_?KEY", re.IGNORECASE)
# A local path cannot travel to a cluster, and putting the file's content into the rendered
# objects would put keys into manifests and helm values: the chart reads it from a Secret.
TENANTS_LOCAL = (
    "a local file, not carried to Kubernetes: without a Secret the chart's router applies no "
    "keys, allowlists or budgets from it (kubectl create secret generic NAME "
    "--from-file=tenants.yaml=FILE, then router.kubernetes.tenants.secretName: NAME)"
)


@dataclass(frozen=True)
class Caveat:
    file: str
    line: int | None
    message: str
    local: bool = False  # also matters to `vfleet up` (not only to Kubernetes)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"warning: {where}: {self.message}"


def as_warning(note: str) -> str:
    """An importer note (`note: FILE:LINE: ...` or `warning: ...`) in the one warning format."""
    return "warning: " + note.removeprefix("note: ") if note.startswith("note: ") else note


def documents(files: Sequence[str | Path]) -> list[Document]:
    """The files as YAML documents with line numbers, read the way the loader reads them (TKE
    values pasted without indentation re-nested line for line)."""
    out = []
    for f in files:
        text = read_text(f)
        out.append(parse(tke.renest(text) if tke.flattened_text(text) else text, str(f)))
    return out


def caveats(
    docs: Sequence[Document], fleet: Fleet, router_service: str, notes: Sequence[str] = ()
) -> list[Caveat]:
    """Every warning for `fleet` read from `docs`; `router_service` is the chart's router
    Service name (an Ingress to anything else goes around the router); `notes` are the
    importers' (a part they already spoke about, e.g. left out, gets no second warning)."""
    out: list[Caveat] = []
    spoken = _noted_paths(notes)
    dump = fleet.model_dump_json(by_alias=True)
    env_names = {v.name for m in fleet.models for v in m.env}
    keeps_limits = any(
        k in m.kubernetes.chart_values for m in fleet.models for k in ("limitCPU", "limitMemory")
    )
    for doc in docs:
        for docno, top in enumerate(doc.docs):
            kind = top.get("kind") if isinstance(top, dict) else None
            for path, value in _walk(top, ()):
                at = _At(doc, docno, path)
                if isinstance(value, str) and not _under(doc.file, dotted(path), spoken):
                    out += _placeholders(at, value, dump, env_names)
                if not keeps_limits and _imported_limit(kind, path):
                    out += _limit(at, path, value, top)
                if path and path[-1] == "vllmApiKey" and isinstance(value, dict):
                    out.append(_secret_key(at, value))
                if path and path[-1] == "tenantsFile" and value and not _tenants_secret(fleet):
                    out.append(at.caveat(TENANTS_LOCAL))
                if (
                    isinstance(value, dict)
                    and isinstance(value.get("name"), str)
                    and API_KEY_NAME.search(value["name"])
                    and isinstance(value.get("valueFrom"), dict)
                ):
                    ref = value["valueFrom"].get("secretKeyRef") or {}
                    out.append(_secret_key(at, ref, env=value["name"]))
            if kind == "Ingress" and isinstance(top, dict):
                out += _ingress(doc, docno, top, router_service)
    for m in fleet.models:
        out += _hami(docs, fleet, m)
    return _unique(out)


def _tenants_secret(fleet: Fleet) -> bool:
    """Whether the chart's router gets a tenants file (routerSpec.tenants.secretName)."""
    tenants = fleet.router.kubernetes.get("tenants")
    return isinstance(tenants, dict) and bool(tenants.get("secretName"))


@dataclass(frozen=True)
class _At:
    doc: Document
    docno: int
    path: Path_

    def caveat(self, message: str, local: bool = False) -> Caveat:
        line = self.doc.line(self.path, self.docno)
        at = f"{dotted(self.path)}: " if self.path else ""
        return Caveat(self.doc.file, line, at + message, local)


def _noted_paths(notes: Sequence[str]) -> set[tuple[str, str]]:
    """(file, dotted path) of each importer note: `note: FILE:LINE: PATH: message`."""
    out = set()
    for note in notes:
        parts = note.split(": ", 3)
        if len(parts) == 4:
            out.add((parts[1].rsplit(":", 1)[0], parts[2]))
    return out


def _under(file: str, path: str, spoken: set[tuple[str, str]]) -> bool:
    return any(f == file and (path == p or path.startswith((p + ".", p + "["))) for f, p in spoken)


def _walk(node: Any, path: Path_) -> Iterator[tuple[Path_, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def _placeholders(at: _At, value: str, dump: str, env_names: set[str]) -> list[Caveat]:
    out = []
    for name in PLACEHOLDER.findall(value):
        if f"$({name})" not in dump:
            continue  # in a part the importer left out (and said so)
        if name in env_names:
            msg = (
                f"$({name}) is expanded by Kubernetes from the container's env; vfleet up "
                "passes it on as the literal text"
            )
        else:
            msg = (
                f"$({name}) is a placeholder nothing here defines (a platform's template "
                "variable?): it stays the literal text, on Kubernetes and with vfleet up"
            )
        out.append(at.caveat(msg, local=True))
    return out


def _imported_limit(kind: Any, path: Path_) -> bool:
    """A `resources.limits` the importers read: TKE/T9k `server.resources`, or the containers of
    a workload (other objects, and init containers, are applied as written)."""
    if len(path) < 3 or path[-2] != "limits" or path[-3] != "resources":
        return False
    if kind is None:
        return path[0] == "server"
    return kind in WORKLOADS and "containers" in path


def _limit(at: _At, path: Path_, value: Any, top: Any) -> list[Caveat]:
    what = path[-1]
    if what not in ("cpu", "memory"):
        return []
    key = {"cpu": "CPU", "memory": "Memory"}[str(what)]
    parent: Any = top
    for part in path[:-2]:
        parent = parent[part]
    requested = (parent.get("requests") or {}).get(what) if isinstance(parent, dict) else None
    if requested is not None:
        msg = (
            f"limit {value} is left out: the chart requests {requested} and sets no {what} "
            f"limit (keep one with kubernetes.chartValues.limit{key})"
        )
    else:
        msg = (
            f"limit {value} becomes a request (request{key}: {value}) with no {what} limit: "
            f"the pod may use more (keep the limit with kubernetes.chartValues.limit{key})"
        )
    return [at.caveat(msg)]


def _secret_key(at: _At, ref: dict[str, Any], env: str | None = None) -> Caveat:
    secret = ref.get("secretName") or ref.get("name") or "?"
    key = ref.get("secretKey") or ref.get("key") or "?"
    what = f"env {env}" if env else "the API key"
    return at.caveat(
        f"{what} comes from Secret {secret!r} (key {key!r}): Kubernetes applies it, but vfleet "
        "up cannot read Secrets, so locally the router checks no key unless you give one "
        "(router.apiKeys in a fleet file, or env VFLEET_API_KEYS)",
        local=True,
    )


def _ingress(doc: Document, docno: int, obj: dict[str, Any], router: str) -> list[Caveat]:
    name = (obj.get("metadata") or {}).get("name", "")
    out = []
    for path, value in _walk(obj, ()):
        if not (isinstance(value, dict) and path and path[-1] in ("service", "backend")):
            continue
        target = value.get("name") if path[-1] == "service" else value.get("serviceName")
        if not isinstance(target, str) or target == router:
            continue
        out.append(
            _At(doc, docno, path).caveat(
                f"Ingress {name!r} sends traffic to Service {target!r}, not to the vfleet "
                f"router ({router}): its requests skip routing, API keys, rate limits and "
                "metrics; point the backend at the router's Service"
            )
        )
    return out


def sharing_mode(fleet: Fleet, model: Model) -> str:
    """The chart's GPU sharing for a model's share: its gpuSharing, the engine's, else hami."""
    own = model.kubernetes.chart_values.get("gpuSharing")
    engine = fleet.kubernetes.chart_values.get("servingEngineSpec") or {}
    common = engine.get("gpuSharing") if isinstance(engine, dict) else None
    for block in (own, common):
        if isinstance(block, dict) and block.get("mode"):
            return str(block["mode"])
    return "hami"


def _hami(docs: Sequence[Document], fleet: Fleet, m: Model) -> list[Caveat]:
    gmu = m.vllm.gpu_memory_utilization
    pct = m.gpu_share_pct
    if gmu is None or not pct or sharing_mode(fleet, m) != "hami":
        return []
    share = pct / 100
    same = min(1.0, gmu / share)
    msg = (
        f"gpuMemoryUtilization {gmu:g} with a {pct}% GPU share ({m.name}): under HAMi the engine "
        f"sees only its slice, so this is {gmu * share:.0%} of the GPU's memory (vfleet up: "
        f"{gmu:.0%} of the GPU); {gmu:.0%} of the GPU on Kubernetes is {same:.2g}, or set "
        "gpuSharing.mode: timeslicing"
    )
    at = _gmu_source(docs, gmu)
    return [Caveat(at.doc.file, at.doc.line(at.path, at.docno), msg)] if at else []


def _gmu_source(docs: Sequence[Document], gmu: float) -> _At | None:
    """Where a file sets this utilization: a key, or the flag in an args list."""
    for doc in docs:
        for docno, top in enumerate(doc.docs):
            for path, value in _walk(top, ()):
                if path and path[-1] in GMU_KEYS and _number(value) == gmu:
                    return _At(doc, docno, path)
                if isinstance(value, str) and value.startswith(GMU_FLAG):
                    return _At(doc, docno, path)
    return _At(docs[0], 0, ()) if docs else None


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _unique(items: list[Caveat]) -> list[Caveat]:
    seen: set[str] = set()
    out = []
    for c in items:
        if str(c) not in seen:
            seen.add(str(c))
            out.append(c)
    return out
