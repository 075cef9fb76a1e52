"""A `Fleet` as values of the vfleet Helm chart (`charts/vfleet`). Pure.

The chart's values are vllm-stack's (`servingEngineSpec.modelSpec[]`, `routerSpec`, ...) plus
vfleet keys, so every model becomes one `modelSpec` entry. Only the typed `Fleet` is read, never
the format a file was written in: the importers already turned what each format means into
typed fields. Engine settings become typed keys (`vllmConfig.maxModelLen`, `requestGPU`, ...),
named by the engine rules the caller loaded (the chart's files/engine-rules.yaml, the table the
chart reads them back with), so the chart builds the same `vllm serve` line as
`vfleet.engines.vllm.serve_command`; the typed Kubernetes settings (`Model.kubernetes`,
`Fleet.kubernetes`) become the chart keys that carry them, and their `chartValues` are merged in
as written.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vfleet.engines.router import kv_event_models
from vfleet.engines.rules import EngineRules, Setting
from vfleet.engines.sim import sim_command
from vfleet.fleetspec.models import (
    Autoscaling,
    EngineSettings,
    Fleet,
    Model,
    ModelKubernetes,
    RouterSpec,
    Source,
    chat_template_is_local,
)

_STARTUP_DEFAULT_S = 900.0
CHAT_TEMPLATE_CONFIGMAP = "chatTemplateConfigMap"  # modelSpec key: a chat template's text


@dataclass(frozen=True)
class ChartValues:
    values: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def chart_values(
    fleet: Fleet, *, engine_rules: EngineRules, chat_templates: Mapping[str, str] | None = None
) -> ChartValues:
    """The chart values that deploy `fleet`; `engine_rules` are the rules of the chart they are
    for (`vfleet.engines.rulefile.load_rules`); `chat_templates`: model name -> the text of its
    chat template file, shipped in the chart's ConfigMap (`shipped_chat_templates`). What a
    file's format meant, and what of it was left out, the importers already said in their
    notes; `notes` is empty."""
    notes: list[str] = []
    texts = chat_templates or {}
    models = [_model(fleet, m, engine_rules, texts.get(m.name)) for m in fleet.models]
    engine_spec: dict[str, Any] = {"modelSpec": models}
    values: dict[str, Any] = {
        "servingEngineSpec": engine_spec,
        "routerSpec": _router(fleet, fleet.router),
    }
    if fleet.router.api_keys:
        # the router reads VFLEET_API_KEYS as a comma-separated list
        engine_spec["vllmApiKey"] = ",".join(fleet.router.api_keys)
    extra = copy.deepcopy(fleet.kubernetes.chart_values)
    engine_extra = extra.pop("servingEngineSpec", None)
    if isinstance(engine_extra, dict):
        for key, value in engine_extra.items():
            if key == "vllmApiKey" and isinstance(value, str):
                continue  # a key clients send is router.apiKeys, set above
            engine_spec.setdefault(key, value)
    values = deep_merge(values, extra)
    if fleet.kubernetes.extra_objects:
        values["extraObjects"] = [copy.deepcopy(o) for o in fleet.kubernetes.extra_objects]
    return ChartValues(values, notes)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` onto a copy of `base`: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _model(fleet: Fleet, m: Model, r: EngineRules, template: str | None) -> dict[str, Any]:
    engine = fleet.engine_of(m)
    kube = m.kubernetes
    spec: dict[str, Any] = {"name": m.name}
    if engine != "vllm":
        spec["engine"] = engine
    spec["modelURL"] = m.source.id if m.source.kind == "hf" else m.source.uri
    spec["source"] = source_values(m.source, host_path=kube.host_path)
    spec["servedModelNames"] = list(m.served_names)
    spec["replicaCount"] = m.replicas
    spec["requestGPU"] = gpu_request(m)
    if m.cpu is not None:
        spec["requestCPU"] = m.cpu
    if m.memory is not None:
        spec["requestMemory"] = m.memory
    if m.image:
        repo, tag = split_image(m.image)
        spec["repository"] = repo
        if tag:
            spec["tag"] = tag
    spec.update(_engine(m.vllm, r))
    if template is not None:
        # the chart mounts it at /templates/NAME (NAME: the file's) and passes that path
        spec[CHAT_TEMPLATE_CONFIGMAP] = template
    if m.task != "auto":
        spec.setdefault("vllmConfig", {})["task"] = m.task
    if m.env:
        spec["env"] = [e.model_dump(by_alias=True, exclude_none=True) for e in m.env]
    if m.startup_timeout_s != _STARTUP_DEFAULT_S:
        spec["startupTimeoutS"] = m.startup_timeout_s
    if engine == "sim":
        spec["download"] = {"mode": "none"}
        # its KV-event publisher as the chart's own for vLLM (the chart reads the port back)
        kv = m.name in kv_event_models(fleet, r.kv_events.policies)
        k = r.kv_events
        config = k.config(k.tcp(k.port), k.tcp(k.replay_port(k.port))) if kv else None
        spec["command"] = sim_command(
            m, m.source.id, "0.0.0.0", 8000, executable=("vfleet",), kv_events_config=config
        )
    else:
        spec.update(_storage(m))
    if kube.download is not None:
        # over the sim's "none": a file that asks for a download gets it
        download = kube.download.model_dump(by_alias=True, exclude_none=True)
        spec["download"] = deep_merge(spec.get("download", {}), download)
    extra = copy.deepcopy(kube.chart_values)
    if m.autoscaling is not None and "keda" not in extra:  # a KEDA block scales it as written
        spec["autoscaling"] = autoscaling_values(m.autoscaling)
    hold = {
        key: getattr(m.hold, name)
        for name, key in _HOLD_KEYS.items()
        if name in m.hold.model_fields_set
    }
    if hold:
        spec["hold"] = hold
    spec.update(kubernetes_values(kube))
    cfg_extra = extra.pop("vllmConfig", None)
    if isinstance(cfg_extra, dict):
        spec.setdefault("vllmConfig", {}).update(cfg_extra)
    return deep_merge(spec, extra)


def kubernetes_values(k: ModelKubernetes) -> dict[str, Any]:
    """The typed Kubernetes settings of a model as the modelSpec keys that carry them."""
    out: dict[str, Any] = {}
    if k.lws_group_size > 1:
        out["lwsGroupSize"] = k.lws_group_size
    for name, key in _KUBERNETES_KEYS.items():
        value = getattr(k, name)
        if value:
            out[key] = copy.deepcopy(list(value) if isinstance(value, tuple) else value)
    return out


def autoscaling_values(a: Autoscaling) -> dict[str, Any]:
    """modelSpec[].autoscaling: the bounds and metric, and the Knative-style settings a file
    wrote that KEDA or the HPA can carry out (the chart maps them to cooldownPeriod and HPA
    behavior). Settings left at their defaults are left to the chart's defaults; the panic
    window and threshold, TTFT and KV targets have no KEDA or HPA equivalent (vfleet up only)."""
    out: dict[str, Any] = {"minReplicas": a.min_replicas, "metric": a.metric, "target": a.target}
    if a.max_replicas is not None:
        out["maxReplicas"] = a.max_replicas
    for name, key in _AUTOSCALING_KEYS.items():
        if name in a.model_fields_set:
            out[key] = getattr(a, name)
    return out


_AUTOSCALING_KEYS = {
    "stable_window_s": "stableWindowS",
    "scale_down_delay_s": "scaleDownDelayS",
    "scale_to_zero_grace_s": "scaleToZeroGraceS",
    "max_scale_up_rate": "maxScaleUpRate",
    "max_scale_down_rate": "maxScaleDownRate",
}
_HOLD_KEYS = {"timeout_s": "timeoutS", "max_queued": "maxQueued"}
# ModelKubernetes field -> modelSpec key, in the order the keys are written
_KUBERNETES_KEYS = {
    "image_pull_policy": "imagePullPolicy",
    "image_pull_secret": "imagePullSecret",
    "init_containers": "extraInitContainers",
    "volumes": "extraVolumes",
    "volume_mounts": "extraVolumeMounts",
    "security_context": "containerSecurityContext",
    "node_selector": "nodeSelector",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "labels": "labels",
    "pod_labels": "podLabels",
    "annotations": "annotations",
    "pod_annotations": "podAnnotations",
}


def gpu_request(m: Model) -> float | int:
    """What one replica asks for: whole GPUs (tensor x pipeline parallel at least) or a share."""
    if m.gpus_needed >= 1:
        return m.gpus_needed
    return m.gpu if m.gpu_share_pct else 0


def split_image(image: str) -> tuple[str, str]:
    """`repo/name:tag` -> (`repo/name`, `tag`); a registry port is not a tag."""
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail:
        return head, tail
    return image, ""


def node_path_problems(fleet: Fleet) -> list[tuple[tuple[Any, ...], str]]:
    """(fleet field, message) for every local source the chart would mount as a hostPath
    volume from a path that means nothing on a node.

    A relative path (or `~`) in a spec names a directory on the machine that reads the spec
    (`vfleet up`), but a hostPath is looked up on whichever node the pod lands on, and the API
    server rejects a relative one. Resolving it here would write this machine's directory into
    the manifest, a path the nodes do not have, and the pod would wait on a failed mount far from
    the cause; so it is an error that says what to write instead."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for i, m in enumerate(fleet.models):
        src = m.source
        if src.kind != "local" or not m.kubernetes.host_path or src.id.startswith("/"):
            continue
        what = "starts with ~, which no node expands" if src.id.startswith("~") else "is relative"
        out.append(
            (
                ("models", i, "source"),
                f"local path {src.id!r} {what}; on Kubernetes a local source is a directory on "
                "the node (a hostPath volume), so write its absolute path there (e.g. "
                "/mnt/models/chat), or set kubernetes.hostPath: false when the path is inside "
                "the engine's image",
            )
        )
    return out


def shipped_chat_templates(fleet: Fleet) -> list[int]:
    """The models (indexes into `fleet`, its paths as written) whose chat template file a
    Kubernetes render reads and ships in the chart's `chatTemplateConfigMap` (vllm-stack's key).

    A template written as `./…`, `../…` or `~…` names a file on the machine that reads the spec
    (`vfleet up` reads it from the spec file's directory) and nothing in the pod, where vLLM
    would stop at start-up on a file it cannot open; shipped, the same spec serves the same
    template both ways. An absolute path stays as written (a file in the image, such as vLLM's
    /vllm-workspace/examples/, or on a mounted volume), as do a bare name (vLLM's own to open),
    an inline template, and a model whose chartValues carry their own chatTemplateConfigMap."""
    return [
        i
        for i, m in enumerate(fleet.models)
        if m.vllm.chat_template is not None
        and chat_template_is_local(m.vllm.chat_template)
        and not m.vllm.chat_template.startswith("/")
        and CHAT_TEMPLATE_CONFIGMAP not in m.kubernetes.chart_values
    ]


def source_values(src: Source, host_path: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": src.kind, "id": src.id}
    if src.path:
        out["path"] = src.path
    for key in ("revision", "endpoint", "secret"):
        value = getattr(src, key)
        if value:
            out[key] = value
    if src.include:
        out["include"] = list(src.include)
    if src.kind == "local" and host_path:
        out["hostPath"] = True  # a directory on the node, mounted as a hostPath volume
    return out


def _engine(s: EngineSettings, r: EngineRules) -> dict[str, Any]:
    """The model's vLLM settings under the chart keys the rules name: `vllmConfig` keys, and
    the modelSpec entry's own (vllm-stack's chatTemplate, enableLoRA, enableTool, ...). Unset
    values, and those at the rules' default, are left to the chart."""
    cfg: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for setting in r.settings:
        value = getattr(s, setting.field)
        if _written(setting, value):
            (own if setting.place == "modelSpec" else cfg)[setting.key] = value
    for setting in r.lora.settings:
        value = getattr(s.lora, setting.field)
        if _written(setting, value):
            cfg[setting.key] = value
    if s.lora.modules:
        cfg[r.lora.modules.key] = dict(s.lora.modules)
    if s.extra_args:
        cfg["extraArgs"] = list(s.extra_args)
    if s.lora.enabled or s.lora.modules:
        own[r.lora.enable.key] = True
    if s.tool_calling.enabled:
        own[r.tools.enable.key] = True
    if s.tool_calling.parser:
        own[r.tools.parser.key] = s.tool_calling.parser
    return {"vllmConfig": cfg, **own} if cfg else own


def _written(setting: Setting, value: Any) -> bool:
    """Whether a value is worth a key: the chart writes no flag for it otherwise."""
    if value is None or (setting.type == "flag" and not value):
        return False
    return setting.default is None or value != setting.default


def _storage(m: Model) -> dict[str, Any]:
    st = m.storage
    if st is None:
        return {}
    out: dict[str, Any] = {}
    if st.existing_claim:
        out["pvcExistingClaimName"] = st.existing_claim
    elif st.size and m.source.kind != "pvc":
        out["pvcStorage"] = st.size
    if st.storage_class is not None:
        out["storageClass"] = st.storage_class
    if tuple(st.access_modes) != ("ReadWriteOnce",):
        out["pvcAccessMode"] = list(st.access_modes)
    if st.match_labels:
        out["pvcMatchLabels"] = dict(st.match_labels)
    return out


def namespace_of(fleet: Fleet) -> str | None:
    """The namespace the input files name (a manifest's metadata.namespace), if any."""
    return next((m.kubernetes.namespace for m in fleet.models if m.kubernetes.namespace), None)


def _router(fleet: Fleet, r: RouterSpec) -> dict[str, Any]:
    """routerSpec: the router settings `vfleet up` gives its router too (one function for
    both), the replica count, and the Kubernetes keys an importer kept."""
    from vfleet.engines.router import chart_router_values

    settings = chart_router_values(fleet)
    out: dict[str, Any] = {"policy": settings.pop("policy"), "replicaCount": r.replicas}
    return deep_merge({**out, **settings}, r.kubernetes)
