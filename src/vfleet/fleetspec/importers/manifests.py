"""Hand-written Kubernetes manifests (a Deployment running `vllm serve`) onto the fleet spec.

Workloads whose container runs vLLM become models; a HorizontalPodAutoscaler of one of them
becomes that model's autoscaling (importers/hpa.py); every other object (PVC, PV, Service,
Ingress, ...) is kept as is under `kubernetes.extraObjects` for the chart to apply alongside.
"""

from __future__ import annotations

import shlex
from typing import Any

from vfleet.fleetspec.draft import Draft
from vfleet.fleetspec.importers import hpa
from vfleet.fleetspec.importers.common import env_list, mapping, put_args, sequence, slug
from vfleet.fleetspec.models import parse_source_uri

WORKLOADS = {"Deployment", "StatefulSet"}


def detect(docs: list[Any]) -> bool:
    return bool(docs) and all(
        isinstance(d, dict) and "kind" in d and "apiVersion" in d for d in docs
    )


def vllm_argv(container: dict[str, Any]) -> list[str] | None:
    """The words after `vllm serve` / the api_server module, or None if it does not run vLLM."""
    words = [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]
    if len(words) >= 2 and words[0] in ("bash", "sh", "/bin/sh", "/bin/bash") and "-c" in words:
        script = " ".join(words[words.index("-c") + 1 :]).replace("\\\n", " ")
        words = shlex.split(script)
    for i, word in enumerate(words):
        if word.endswith("vllm") and i + 1 < len(words) and words[i + 1] == "serve":
            return words[i + 2 :]
        if word == "vllm.entrypoints.openai.api_server":
            return words[i + 1 :]
    return None


def build(draft: Draft, docs: list[Any]) -> None:
    extra: dict[int, Any] = {}
    workloads: dict[tuple[str, str], tuple[int, str]] = {}  # (kind, name) -> (model, namespace)
    scalers: list[tuple[int, dict[str, Any]]] = []
    for docno, obj in enumerate(docs):
        draft.docno = docno
        container = _vllm_container(obj)
        if container is not None:
            n = len(workloads)
            _model(draft, obj, container, ("models", n))
            meta = obj.get("metadata") or {}
            workloads[(obj["kind"], str(meta.get("name")))] = (n, str(meta.get("namespace") or ""))
        elif obj.get("kind") == "HorizontalPodAutoscaler" and hpa.target_ref(obj):
            scalers.append((docno, obj))
        else:
            extra[docno] = obj
            _kept(draft, obj)
    for docno, obj in scalers:
        draft.docno = docno
        if not _autoscaler(draft, obj, workloads):
            extra[docno] = obj
    draft.docno = 0
    if extra:
        draft.put(("kubernetes", "extraObjects"), [extra[i] for i in sorted(extra)])


def _kept(draft: Draft, obj: dict[str, Any]) -> None:
    kind = obj.get("kind")
    draft.note((), f"{kind} {obj.get('metadata', {}).get('name', '')!r} kept as is for Kubernetes")


def _autoscaler(
    draft: Draft, obj: dict[str, Any], workloads: dict[tuple[str, str], tuple[int, str]]
) -> bool:
    """Apply an HPA to the model it scales; False when it stays a Kubernetes object."""
    ref = hpa.target_ref(obj)
    found = workloads.get(ref) if ref else None
    namespace = str((obj.get("metadata") or {}).get("namespace") or "")
    if found is None or (namespace and found[1] and namespace != found[1]):
        _kept(draft, obj)
        return False
    name = str(draft.data["models"][found[0]]["name"])
    return hpa.apply(draft, obj, ("models", found[0]), name)


def _vllm_container(obj: Any) -> tuple[int, dict[str, Any]] | None:
    if not isinstance(obj, dict) or obj.get("kind") not in WORKLOADS:
        return None
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for i, c in enumerate(pod.get("containers") or []):
        if isinstance(c, dict) and vllm_argv(c) is not None:
            return i, c
    return None


def _model(
    draft: Draft, obj: dict[str, Any], found: tuple[int, dict[str, Any]], at: tuple[Any, ...]
) -> None:
    index, container = found
    meta = mapping(draft, obj.get("metadata"), ("metadata",))
    spec = mapping(draft, obj.get("spec"), ("spec",))
    pod = spec.get("template", {}).get("spec", {})
    csrc: tuple[Any, ...] = ("spec", "template", "spec", "containers", index)
    draft.put((*at, "name"), slug(str(meta.get("name") or "model")), ("metadata", "name"))
    draft.put((*at, "replicas"), spec.get("replicas", 1), ("spec", "replicas"))
    if container.get("image"):
        draft.put((*at, "image"), str(container["image"]), (*csrc, "image"))
    argv = vllm_argv(container) or []
    model_ref = argv[0] if argv and not argv[0].startswith("-") else None
    rest = argv[1:] if model_ref else argv
    put_args(draft, at, rest, (*csrc, "args"))
    prior = _prior_source(draft, at)
    model_ref = model_ref or prior.get("id")
    if not model_ref:
        raise draft.doc.error((*csrc, "args"), "vllm runs without a model", draft.docno)
    source = _source(str(model_ref), container, pod)
    if prior.get("revision"):
        source["revision"] = prior["revision"]
    draft.put((*at, "source"), source, (*csrc, "args"))
    if not _prior(draft, at, "servedNames"):
        draft.put((*at, "servedNames"), [str(model_ref)], (*csrc, "args"))
    for part in ("limits", "requests"):
        res = mapping(draft, container.get("resources", {}).get(part), (*csrc, "resources", part))
        if res.get("nvidia.com/gpu") is not None:
            draft.put((*at, "gpu"), res["nvidia.com/gpu"], (*csrc, "resources", part))
        for key in ("cpu", "memory"):
            if res.get(key) is not None:
                draft.put((*at, key), str(res[key]), (*csrc, "resources", part, key))
    if container.get("env"):
        draft.put((*at, "env"), env_list(draft, container["env"], (*csrc, "env")), (*csrc, "env"))
    kube = (*at, "kubernetes")
    for key in ("initContainers", "volumes", "nodeSelector", "tolerations"):
        if pod.get(key):
            draft.put((*kube, key), pod[key], ("spec", "template", "spec", key))
    if meta.get("namespace"):
        draft.put((*kube, "namespace"), meta["namespace"], ("metadata", "namespace"))
    labels = spec.get("template", {}).get("metadata", {}).get("labels")
    if labels:  # the file's own Services and Ingresses select the pods by these
        draft.put((*kube, "podLabels"), labels, ("spec", "template", "metadata", "labels"))
    for i, init in enumerate(sequence(draft, pod.get("initContainers"), ())):
        draft.note(
            ("spec", "template", "spec", "initContainers", i),
            f"init container {init.get('name')!r} kept for Kubernetes; locally the "
            "weights are read from the model source",
        )


def _prior(draft: Draft, at: tuple[Any, ...], key: str) -> Any:
    """What the arguments already said about this model (--model, --served-model-name)."""
    models = draft.data.get("models") or []
    model = models[at[1]] if len(models) > at[1] else {}
    return model.get(key) if isinstance(model, dict) else None


def _prior_source(draft: Draft, at: tuple[Any, ...]) -> dict[str, Any]:
    source = _prior(draft, at, "source")
    return source if isinstance(source, dict) else {}


def _source(ref: str, container: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """A path under a mounted PVC becomes `pvc://claim/sub/path`; anything else as written."""
    volumes = {v.get("name"): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
    for mount in container.get("volumeMounts") or []:
        path = str(mount.get("mountPath", "")).rstrip("/")
        vol = volumes.get(mount.get("name"), {})
        if path and (ref == path or ref.startswith(path + "/")):
            rel = "/".join(p for p in (mount.get("subPath"), ref[len(path) + 1 :]) if p)
            if "persistentVolumeClaim" in vol:
                return {"kind": "pvc", "id": vol["persistentVolumeClaim"]["claimName"], "path": rel}
            if "hostPath" in vol:
                host = str(vol["hostPath"]["path"]).rstrip("/")
                return {"kind": "local", "id": f"{host}/{rel}" if rel else host}
    return parse_source_uri(ref)
