"""A `Fleet` as values of the vfleet Helm chart (`charts/vfleet`). Pure.

The chart's values are vllm-stack's (`servingEngineSpec.modelSpec[]`, `routerSpec`, ...) plus
vfleet keys, so every model becomes one `modelSpec` entry whatever format it was read from:
vfleet fleet files, vllm-stack, TKE and T9k values, Kubernetes manifests. The typed fields are
written as typed keys (`vllmConfig.maxModelLen`, `requestGPU`, ...), so the chart builds the same
`vllm serve` line as `vfleet.engines.vllm.serve_command`; keys an importer kept for Kubernetes
(`Model.kubernetes`, `Fleet.kubernetes`) are put back where the chart reads them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from vfleet.engines.sim import sim_command
from vfleet.fleetspec.models import Autoscaling, EngineSettings, Fleet, Model, RouterSpec, Source

# T9k's DataCube fetches the weights into the model's volume before the server starts: that is
# the chart's download Job.
_JOB_FORMATS = {"t9k"}
_STARTUP_DEFAULT_S = 900.0


@dataclass(frozen=True)
class ChartValues:
    values: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def chart_values(fleet: Fleet) -> ChartValues:
    """The chart values that deploy `fleet`, and notes on what was adapted or left out."""
    notes: list[str] = []
    fmt = fleet.imported_from or "vfleet"
    engine_spec: dict[str, Any] = {
        "modelSpec": [_model(fleet, m, fmt, notes) for m in fleet.models]
    }
    values: dict[str, Any] = {
        "servingEngineSpec": engine_spec,
        "routerSpec": _router(fleet, fleet.router),
    }
    if fleet.router.api_keys:
        # the router reads VFLEET_API_KEYS as a comma-separated list
        engine_spec["vllmApiKey"] = ",".join(fleet.router.api_keys)
    kube = copy.deepcopy(fleet.kubernetes)
    engine_extra = kube.pop("servingEngineSpec", None)
    if isinstance(engine_extra, dict):
        for key, value in engine_extra.items():
            if key == "vllmApiKey" and isinstance(value, str):
                continue  # already the router's key (the importer read it)
            engine_spec.setdefault(key, value)
    return ChartValues(deep_merge(values, kube), notes)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` onto a copy of `base`: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _model(fleet: Fleet, m: Model, fmt: str, notes: list[str]) -> dict[str, Any]:
    engine = fleet.engine_of(m)
    spec: dict[str, Any] = {"name": m.name}
    if engine != "vllm":
        spec["engine"] = engine
    spec["modelURL"] = m.source.id if m.source.kind == "hf" else m.source.uri
    spec["source"] = source_values(m.source, hostpath=fmt != "vllm-stack")
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
    spec.update(_engine(m.vllm))
    if m.task != "auto":
        spec.setdefault("vllmConfig", {})["task"] = m.task
    if m.env:
        spec["env"] = [e.model_dump(by_alias=True, exclude_none=True) for e in m.env]
    if m.startup_timeout_s != _STARTUP_DEFAULT_S:
        spec["startupTimeoutS"] = m.startup_timeout_s
    if engine == "sim":
        spec["download"] = {"mode": "none"}
        spec["command"] = sim_command(m, m.source.id, "0.0.0.0", 8000, executable=("vfleet",))
    else:
        spec.update(_storage(m))
        if fmt in _JOB_FORMATS and m.source.kind in ("hf", "git", "s3"):
            spec["download"] = {"mode": "job"}
            if m.storage and m.storage.sub_path:
                spec["download"]["dir"] = m.storage.sub_path.strip("/")
    kube = _model_kubernetes(m, fmt, notes)
    if m.autoscaling is not None and "keda" not in kube:
        spec["autoscaling"] = autoscaling_values(m.autoscaling)
    hold = {key: getattr(m.hold, name) for name, key in _HOLD_KEYS.items()
            if name in m.hold.model_fields_set}  # fmt: skip
    if hold:
        spec["hold"] = hold
    cfg_extra = kube.pop("vllmConfig", None)
    if isinstance(cfg_extra, dict):
        spec.setdefault("vllmConfig", {}).update(cfg_extra)
    return deep_merge(spec, kube)


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


def source_values(src: Source, hostpath: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": src.kind, "id": src.id}
    if src.path:
        out["path"] = src.path
    for key in ("revision", "endpoint", "secret"):
        value = getattr(src, key)
        if value:
            out[key] = value
    if src.include:
        out["include"] = list(src.include)
    if src.kind == "local" and hostpath:
        out["hostPath"] = True  # a directory on the node (TKE model.local, hostPath volumes)
    return out


def _engine(s: EngineSettings) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for key, value in (
        ("maxModelLen", s.max_model_len),
        ("gpuMemoryUtilization", s.gpu_memory_utilization),
        ("maxNumSeqs", s.max_num_seqs),
        ("maxNumBatchedTokens", s.max_num_batched_tokens),
        ("quantization", s.quantization),
        ("dtype", s.dtype),
        ("enablePrefixCaching", s.enable_prefix_caching),
        ("enableChunkedPrefill", s.enable_chunked_prefill),
        ("maxLoras", s.lora.max_loras),
        ("maxLoraRank", s.lora.max_lora_rank),
    ):
        if value is not None:
            cfg[key] = value
    if s.tensor_parallel_size > 1:
        cfg["tensorParallelSize"] = s.tensor_parallel_size
    if s.pipeline_parallel_size > 1:
        cfg["pipelineParallelSize"] = s.pipeline_parallel_size
    if s.enforce_eager:
        cfg["enforceEager"] = True
    if s.trust_remote_code:
        cfg["trustRemoteCode"] = True
    if s.lora.modules:
        cfg["loraModules"] = dict(s.lora.modules)
    if s.extra_args:
        cfg["extraArgs"] = list(s.extra_args)
    out: dict[str, Any] = {"vllmConfig": cfg} if cfg else {}
    if s.chat_template:
        out["chatTemplate"] = s.chat_template
    if s.lora.enabled or s.lora.modules:
        out["enableLoRA"] = True
    if s.tool_calling.enabled:
        out["enableTool"] = True
    if s.tool_calling.parser:
        out["toolCallParser"] = s.tool_calling.parser
    return out


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


def _model_kubernetes(m: Model, fmt: str, notes: list[str]) -> dict[str, Any]:
    """The Kubernetes-only keys an importer kept, as modelSpec keys."""
    kube = copy.deepcopy(m.kubernetes)
    if fmt == "tke":
        return _tke(m, kube)
    if fmt == "t9k":
        return _t9k(m, kube, notes)
    if fmt == "kubernetes-manifests":
        return _manifests(kube)
    return kube  # vfleet and vllm-stack: modelSpec keys as written


def _tke(m: Model, kube: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = kube.get("server") or {}
    if int(server.get("lwsGroupSize") or 1) > 1:
        out["lwsGroupSize"] = int(server["lwsGroupSize"])
    for key in ("imagePullPolicy", "nodeSelector", "tolerations"):
        if server.get(key):
            out[key] = server[key]
    if kube.get("labels"):
        out["labels"] = kube["labels"]
        out["podLabels"] = kube["labels"]
    if kube.get("podAnnotations"):
        out["podAnnotations"] = kube["podAnnotations"]
    return out


def _t9k(m: Model, kube: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = kube.get("server") or {}
    volumes = list(server.get("extraVolumes") or []) + list(server.get("extraVolume") or [])
    if volumes:
        out["extraVolumes"] = volumes
    if server.get("extraVolumeMounts"):
        out["extraVolumeMounts"] = server["extraVolumeMounts"]
    if server.get("securityContext"):
        out["containerSecurityContext"] = server["securityContext"]
    if server.get("nodeSelector"):
        out["nodeSelector"] = server["nodeSelector"]
    if "initializer" in kube:
        notes.append(
            f"{m.name}: T9k's initializer (a kubectl image that waits for the DataCube) is not "
            "needed: engine pods wait for the download Job's markers"
        )
    return out


def _manifests(kube: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kube.get("initContainers"):
        out["extraInitContainers"] = kube["initContainers"]
    if kube.get("volumes"):
        out["extraVolumes"] = kube["volumes"]
    for key in ("nodeSelector", "tolerations", "podLabels"):
        if kube.get(key):
            out[key] = kube[key]
    return out


def namespace_of(fleet: Fleet) -> str | None:
    """The namespace the input files name (a manifest's metadata.namespace), if any."""
    for m in fleet.models:
        ns = m.kubernetes.get("namespace")
        if isinstance(ns, str) and ns:
            return ns
    return None


def _router(fleet: Fleet, r: RouterSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"policy": r.policy, "replicaCount": r.replicas}
    if r.model_policies:
        by_name = {m.name: m.served_names for m in fleet.models}
        policies: dict[str, str] = {}
        for name, policy in r.model_policies.items():
            for served in by_name.get(name, (name,)):
                policies[served] = policy
        out["modelPolicies"] = policies
    if r.rate_limit_per_minute:
        out["rateLimitPerMinute"] = r.rate_limit_per_minute
    if r.token_limit_per_minute:
        out["tokenLimitPerMinute"] = r.token_limit_per_minute
    if r.workers > 1:
        out["workers"] = r.workers
    return deep_merge(out, r.kubernetes)
