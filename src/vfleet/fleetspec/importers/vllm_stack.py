"""vLLM production-stack (`vllm-stack` chart) values onto the fleet spec.

Keys are read as that chart's templates read them. Kubernetes-only keys with a typed field go to
the model's `kubernetes` fields; the rest, unknown keys included, stay chart values as written
(`kubernetes.chartValues`), since vfleet's chart accepts vllm-stack's values.
"""

from __future__ import annotations

from typing import Any

from vfleet.fleetspec.draft import Draft
from vfleet.fleetspec.importers.common import env_list, mapping, put_args, sequence
from vfleet.fleetspec.models import parse_source_uri

ROUTING = {
    "roundrobin": "round_robin",
    "session": "session",
    "prefixaware": "prefix",
    "kvaware": "kv",
    "least_load": "least_load",
    "leastload": "least_load",
}
# modelSpec keys that only the Kubernetes renderer uses.
MODEL_K8S = {
    "annotations",
    "podAnnotations",
    "labels",
    "podLabels",
    "serviceAccountName",
    "priorityClassName",
    "runtimeClassName",
    "imagePullSecret",
    "resources",
    "limitCPU",
    "limitMemory",
    "requestGPUType",
    "requestGPUMem",
    "requestGPUMemPercentage",
    "requestGPUCores",
    "limitGPUMem",
    "limitGPUMemPercentage",
    "limitGPUCores",
    "pvcLabels",
    "pvcAnnotations",
    "extraVolumes",
    "extraVolumeMounts",
    "initContainer",
    "lmcacheConfig",
    "hf_token",
    "envFromSecret",
    "affinity",
    "nodeSelectorTerms",
    "nodeName",
    "tolerations",
    "tolerationsPolicy",
    "shmSize",
    "serviceAnnotations",
    "chatTemplateConfigMap",  # chatTemplate's text, which the chart mounts at /templates
    "keda",
    "raySpec",
    "sidecar",
}
# modelSpec keys with a typed field in the fleet's `kubernetes` (the rest go to chartValues).
MODEL_TYPED = {
    "labels": "labels",
    "podLabels": "podLabels",
    "annotations": "annotations",
    "podAnnotations": "podAnnotations",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "extraVolumes": "volumes",
    "extraVolumeMounts": "volumeMounts",
    "imagePullSecret": "imagePullSecret",
}
MODEL_MAPPED = {
    "name",
    "enabled",
    "repository",
    "tag",
    "modelURL",
    "modelRevision",
    "replicaCount",
    "requestCPU",
    "requestMemory",
    "requestGPU",
    "pvcStorage",
    "pvcAccessMode",
    "storageClass",
    "pvcMatchLabels",
    "pvcExistingClaimName",
    "vllmConfig",
    "env",
    "enableLoRA",
    "enableTool",
    "toolCallParser",
    "chatTemplate",
}
VLLM_CONFIG = {
    "enablePrefixCaching": "enablePrefixCaching",
    "enableChunkedPrefill": "enableChunkedPrefill",
    "maxModelLen": "maxModelLen",
    "dtype": "dtype",
    "tensorParallelSize": "tensorParallelSize",
    "pipelineParallelSize": "pipelineParallelSize",
    "maxNumSeqs": "maxNumSeqs",
    "maxNumBatchedTokens": "maxNumBatchedTokens",
    "gpuMemoryUtilization": "gpuMemoryUtilization",
    "quantization": "quantization",
}
VLLM_CONFIG_K8S = {"v0", "prometheusMultiprocDir", "hf_token"}
ENGINE_K8S = {
    "enableEngine",
    "labels",
    "extraPorts",
    "vllmApiKey",
    "containerPort",
    "servicePort",
    "configs",
    "strategy",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "tolerations",
    "runtimeClassName",
    "schedulerName",
    "imagePullPolicy",
    "securityContext",
    "containerSecurityContext",
    "sidecar",
    "serviceMonitor",
    "affinity",
    "nodeSelectorTerms",
}
ROUTER_K8S = {
    "enableRouter",
    "repository",
    "tag",
    "imagePullPolicy",
    "serviceAccountName",
    "hf_token",
    "securityContext",
    "containerSecurityContext",
    "extraVolumes",
    "extraVolumeMounts",
    "imagePullSecrets",
    "env",
    "autoscaling",
    "pdb",
    "priorityClassName",
    "containerPort",
    "serviceType",
    "serviceAnnotations",
    "nodePort",
    "servicePort",
    "serviceDiscovery",
    "k8sServiceDiscoveryType",
    "staticBackends",
    "staticModels",
    "prefixMinMatchLength",
    "sessionKey",
    "rootPath",
    "extraArgs",
    "extraPorts",
    "engineScrapeInterval",
    "requestStatsWindow",
    "otel",
    "strategy",
    "vllmApiKey",
    "lmcacheConfig",
    "lmcacheControllerPort",
    "resources",
    "labels",
    "podAnnotations",
    "ingress",
    "route",
    "affinity",
    "nodeSelectorTerms",
    "livenessProbe",
    "startupProbe",
    "readinessProbe",
    "serviceMonitor",
    "tolerations",
    "nodeSelector",
}
TOP_K8S = {
    "cacheserverSpec",
    "loraAdapters",
    "loraController",
    "sharedPvcStorage",
    "extraObjects",
    "grafanaDashboards",
    "nameOverride",
    "fullnameOverride",
    "global",
}


def detect(doc: Any) -> bool:
    return isinstance(doc, dict) and ("servingEngineSpec" in doc or "routerSpec" in doc)


def build(draft: Draft, values: dict[str, Any]) -> None:
    kube: dict[str, Any] = {}
    draft.unknown((), values, {"servingEngineSpec", "routerSpec"} | TOP_K8S, kube)
    kube.update({k: v for k, v in values.items() if k in TOP_K8S})
    if kube.get("extraObjects"):
        draft.put(("kubernetes", "extraObjects"), kube.pop("extraObjects"), ("extraObjects",))
    engine = mapping(draft, values.get("servingEngineSpec"), ("servingEngineSpec",))
    eng_k8s = {k: v for k, v in engine.items() if k in ENGINE_K8S}
    draft.unknown(("servingEngineSpec",), engine, ENGINE_K8S | {"modelSpec"}, eng_k8s)
    if isinstance(engine.get("vllmApiKey"), str):
        del eng_k8s["vllmApiKey"]  # a string is the key clients send: the router's apiKeys
    if eng_k8s:
        kube["servingEngineSpec"] = eng_k8s
    if isinstance(engine.get("vllmApiKey"), str) and engine["vllmApiKey"]:
        key_src = ("servingEngineSpec", "vllmApiKey")
        draft.put(("router", "apiKeys"), [engine["vllmApiKey"]], key_src)
        draft.note(key_src, "vllmApiKey is the key clients send; the vfleet router checks it")
    specs = sequence(draft, engine.get("modelSpec"), ("servingEngineSpec", "modelSpec"))
    n = 0
    for i, raw in enumerate(specs):
        src = ("servingEngineSpec", "modelSpec", i)
        spec = mapping(draft, raw, src)
        if spec.get("enabled") is False:
            draft.note(src, f"model {spec.get('name')!r} has enabled: false; skipped")
            continue
        _model(draft, spec, src, ("models", n))
        n += 1
    _router(draft, mapping(draft, values.get("routerSpec"), ("routerSpec",)))
    if kube:
        draft.put(("kubernetes", "chartValues"), kube)


def _model(draft: Draft, spec: dict[str, Any], src: tuple[Any, ...], at: tuple[Any, ...]) -> None:
    kube: dict[str, Any] = {}  # modelSpec keys for the chart as written
    for key, value in spec.items():
        if key in MODEL_TYPED and value:
            draft.put((*at, "kubernetes", MODEL_TYPED[key]), value, (*src, key))
        elif key in MODEL_K8S:
            kube[key] = value
    draft.unknown(src, spec, MODEL_K8S | MODEL_MAPPED, kube)
    for key, native in (("name", "name"), ("replicaCount", "replicas"), ("requestGPU", "gpu")):
        if key in spec:
            draft.put((*at, native), spec[key], (*src, key))
    for key, native in (("requestCPU", "cpu"), ("requestMemory", "memory")):
        if spec.get(key) is not None:
            draft.put((*at, native), str(spec[key]), (*src, key))
    if "name" not in spec:
        raise draft.doc.error(src, "a modelSpec entry needs a name", draft.docno)
    if "modelURL" not in spec:
        raise draft.doc.error(src, "a modelSpec entry needs modelURL", draft.docno)
    source = parse_source_uri(str(spec["modelURL"]))
    draft.put((*at, "source"), source, (*src, "modelURL"))
    if source["kind"] == "local":
        # `vllm serve /path` reads a path inside the container (the image or a mounted volume),
        # not a directory on the node.
        draft.put((*at, "kubernetes", "hostPath"), False, (*src, "modelURL"))
    # vllm-stack runs `vllm serve <modelURL>`: clients use modelURL unless extraArgs rename it.
    draft.put((*at, "servedNames"), [str(spec["modelURL"])], (*src, "modelURL"))
    if spec.get("modelRevision"):
        draft.put((*at, "source", "revision"), str(spec["modelRevision"]), (*src, "modelRevision"))
    if spec.get("repository"):
        image = f"{spec['repository']}:{spec.get('tag') or 'latest'}"
        draft.put((*at, "image"), image, (*src, "repository"))
    storage: dict[str, Any] = {}
    for key, field in (
        ("pvcStorage", "size"),
        ("storageClass", "storageClass"),
        ("pvcAccessMode", "accessModes"),
        ("pvcMatchLabels", "matchLabels"),
        ("pvcExistingClaimName", "existingClaim"),
    ):
        if spec.get(key) not in (None, "", {}, []):
            storage[field] = spec[key]
            draft.origins[(*at, "storage", field)] = (*src, key)
    if storage:
        draft.put((*at, "storage"), storage)
    if spec.get("enableLoRA"):
        draft.put((*at, "vllm", "lora", "enabled"), True, (*src, "enableLoRA"))
    if spec.get("enableTool"):
        draft.put((*at, "vllm", "toolCalling", "enabled"), True, (*src, "enableTool"))
    if spec.get("toolCallParser"):
        draft.put(
            (*at, "vllm", "toolCalling", "parser"), spec["toolCallParser"], (*src, "toolCallParser")
        )
    if spec.get("chatTemplate"):
        # vllm-stack mounts templates under /templates; the name is what the user wrote.
        draft.put((*at, "vllm", "chatTemplate"), spec["chatTemplate"], (*src, "chatTemplate"))
    if "env" in spec:
        draft.put((*at, "env"), env_list(draft, spec["env"], (*src, "env")), (*src, "env"))
    cfg_src = (*src, "vllmConfig")
    cfg = mapping(draft, spec.get("vllmConfig"), cfg_src)
    cfg_k8s = {k: v for k, v in cfg.items() if k in VLLM_CONFIG_K8S}
    known = set(VLLM_CONFIG) | VLLM_CONFIG_K8S | {"extraArgs", "maxLoras", "runner", "convert"}
    draft.unknown(cfg_src, cfg, known, cfg_k8s)
    if cfg_k8s:
        kube["vllmConfig"] = cfg_k8s
    for key, setting in VLLM_CONFIG.items():
        if key in cfg and cfg[key] is not None:
            value = cfg[key]
            if key == "gpuMemoryUtilization" and isinstance(value, str):
                value = float(value)
            draft.put((*at, "vllm", setting), value, (*cfg_src, key))
    if cfg.get("maxLoras") is not None:
        draft.put((*at, "vllm", "lora", "maxLoras"), cfg["maxLoras"], (*cfg_src, "maxLoras"))
    args = [a for k in ("runner", "convert") if cfg.get(k) for a in (f"--{k}", str(cfg[k]))]
    if args:
        put_args(draft, at, args, cfg_src)
    if "extraArgs" in cfg:
        put_args(draft, at, cfg["extraArgs"], (*cfg_src, "extraArgs"))
    keda = spec.get("keda")
    if isinstance(keda, dict) and keda.get("enabled"):
        _keda(draft, keda, (*src, "keda"), at)
    if kube:
        draft.put((*at, "kubernetes", "chartValues"), kube)


def _keda(draft: Draft, keda: dict[str, Any], src: tuple[Any, ...], at: tuple[Any, ...]) -> None:
    auto: dict[str, Any] = {"minReplicas": keda.get("minReplicaCount", 1)}
    if keda.get("maxReplicaCount"):
        auto["maxReplicas"] = keda["maxReplicaCount"]
    trig = keda.get("triggers")
    trig = trig[0] if isinstance(trig, list) and trig else trig
    meta = trig.get("metadata", {}) if isinstance(trig, dict) else {}
    metric = str(meta.get("metricName") or meta.get("query") or "")
    if "waiting" in metric:
        auto["metric"] = "waiting"
    elif "running" in metric:
        auto["metric"] = "concurrency"
    elif "kv_cache" in metric or "cache_usage" in metric:
        auto["metric"] = "kv_cache"
    if meta.get("threshold") is not None:
        auto["target"] = float(meta["threshold"])
    # KEDA waits cooldownPeriod seconds after the last active trigger before scaling to zero.
    if auto["minReplicas"] == 0 and keda.get("cooldownPeriod") is not None:
        auto["scaleToZeroGraceS"] = keda["cooldownPeriod"]
        draft.origins[(*at, "autoscaling", "scaleToZeroGraceS")] = (*src, "cooldownPeriod")
    delay = hpa_scale_down_delay(keda.get("advanced"))
    if delay is not None:
        auto["scaleDownDelayS"] = delay
    draft.put((*at, "autoscaling"), auto, src)


def hpa_scale_down_delay(advanced: Any) -> Any:
    """KEDA's `advanced.horizontalPodAutoscalerConfig.behavior.scaleDown`
    stabilizationWindowSeconds: the HPA's scale-down delay."""
    node = advanced
    for key in ("horizontalPodAutoscalerConfig", "behavior", "scaleDown"):
        node = node.get(key) if isinstance(node, dict) else None
    return node.get("stabilizationWindowSeconds") if isinstance(node, dict) else None


def _router(draft: Draft, spec: dict[str, Any]) -> None:
    kube = {k: v for k, v in spec.items() if k in ROUTER_K8S}
    draft.unknown(("routerSpec",), spec, ROUTER_K8S | {"routingLogic", "replicaCount"}, kube)
    if "replicaCount" in spec:
        draft.put(("router", "replicas"), spec["replicaCount"], ("routerSpec", "replicaCount"))
    logic = spec.get("routingLogic")
    if logic:
        src = ("routerSpec", "routingLogic")
        if logic not in ROUTING:
            draft.note(
                src,
                f"routing logic {logic!r} has no vfleet equivalent; using least_load",
                warning=True,
            )
        else:
            draft.put(("router", "policy"), ROUTING[logic], src)
    if kube:
        draft.put(("router", "kubernetes"), kube)
