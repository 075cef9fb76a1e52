"""HorizontalPodAutoscaler objects onto the autoscaling of the model whose workload they scale.

An HPA scaling on a vLLM metric vfleet reads (requests running or waiting, KV cache usage)
becomes the model's `autoscaling` and is not applied as is: vfleet's chart scales the model
itself. An HPA scaling only on CPU or memory is kept for Kubernetes unchanged, with a note.
"""

from __future__ import annotations

from typing import Any

from vfleet.fleetspec.draft import Draft
from vfleet.fleetspec.importers.common import mapping, quantity, sequence

# A metric name containing the first word scales on the vfleet metric after it.
METRIC_WORDS = (
    ("waiting", "waiting"),
    ("kv", "kv_cache"),
    ("cache_usage", "kv_cache"),
    ("running", "concurrency"),
    ("concurrency", "concurrency"),
)
SECTIONS = {
    "Pods": "pods",
    "Object": "object",
    "External": "external",
    "Resource": "resource",
    "ContainerResource": "containerResource",
}
HPA_SCALE_DOWN_DELAY_S = 300  # the HPA's default scale-down stabilization window


def target_ref(hpa: dict[str, Any]) -> tuple[str, str] | None:
    """The (kind, name) of the workload the HPA scales."""
    ref = (hpa.get("spec") or {}).get("scaleTargetRef")
    if not isinstance(ref, dict) or not ref.get("kind") or not ref.get("name"):
        return None
    return str(ref["kind"]), str(ref["name"])


def apply(draft: Draft, hpa: dict[str, Any], at: tuple[Any, ...], model: str) -> bool:
    """Set the autoscaling of the model at `at` from `hpa`; False when vfleet reads none of its
    metrics (the caller keeps the object for Kubernetes)."""
    name = str((hpa.get("metadata") or {}).get("name") or "")
    spec = mapping(draft, hpa.get("spec"), ("spec",))
    metrics = _metrics(draft, spec)
    read = [(path, m, target) for path, m, target, _ in metrics if m is not None]
    if not read:
        what = ", ".join(sorted({raw for *_, raw in metrics})) or "cpu (the default)"
        draft.note(
            ("spec",),
            f"HorizontalPodAutoscaler {name!r} scales on {what}, which vfleet does not read; "
            "kept as is for Kubernetes",
        )
        return False
    where, metric, target = read[0]
    auto: dict[str, Any] = {"minReplicas": spec.get("minReplicas", 1), "metric": metric}
    if spec.get("maxReplicas") is not None:
        auto["maxReplicas"] = spec["maxReplicas"]
    if target is not None:
        auto["target"] = target
    auto["scaleDownDelayS"] = _scale_down_delay(spec)
    draft.put((*at, "autoscaling"), auto, ("spec",))
    draft.origins[(*at, "autoscaling", "target")] = where
    for path, m, _, raw in metrics:
        if path != where:
            why = "vfleet scales on the first metric it reads" if m else "vfleet does not read it"
            draft.note(path, f"metric {raw} not carried over: {why}")
    hi = auto.get("maxReplicas", "unbounded")
    draft.note(
        ("spec", "scaleTargetRef"),
        f"HorizontalPodAutoscaler {name!r} becomes the autoscaling of {model} "
        f"({auto['minReplicas']}..{hi} on {metric})",
    )
    return True


Metric = tuple[tuple[str | int, ...], str | None, float | None, str]


def _metrics(draft: Draft, spec: dict[str, Any]) -> list[Metric]:
    """(where, vfleet metric or None, per-replica target, the metric as written)."""
    out: list[Metric] = []
    if spec.get("targetCPUUtilizationPercentage") is not None:  # autoscaling/v1
        out.append((("spec", "targetCPUUtilizationPercentage"), None, None, "cpu"))
    for i, item in enumerate(sequence(draft, spec.get("metrics"), ("spec", "metrics"))):
        at = ("spec", "metrics", i)
        entry = mapping(draft, item, at)
        section = mapping(draft, entry.get(SECTIONS.get(str(entry.get("type")), "")), at)
        if entry.get("type") in ("Resource", "ContainerResource"):
            out.append((at, None, None, str(section.get("name") or "a resource")))
            continue
        raw = _metric_name(section)
        metric = next((m for word, m in METRIC_WORDS if word in raw.lower()), None)
        out.append((at, metric, _target(draft, section, at), raw or "without a name"))
    return out


def _metric_name(section: dict[str, Any]) -> str:
    inner = section.get("metric")
    if isinstance(inner, dict) and inner.get("name"):  # autoscaling/v2, v2beta2
        return str(inner["name"])
    return str(section.get("metricName") or "")  # autoscaling/v2beta1


def _target(draft: Draft, section: dict[str, Any], at: tuple[str | int, ...]) -> float | None:
    target = section.get("target")
    target = target if isinstance(target, dict) else {}
    for value in (
        target.get("averageValue"),
        target.get("value"),
        section.get("targetAverageValue"),
        section.get("targetValue"),
    ):
        if value is not None:
            number = quantity(value)
            if number is None:
                raise draft.doc.error(at, f"target {value!r} is not a quantity", draft.docno)
            return number
    return None


def _scale_down_delay(spec: dict[str, Any]) -> Any:
    down = ((spec.get("behavior") or {}).get("scaleDown")) or {}
    window = down.get("stabilizationWindowSeconds") if isinstance(down, dict) else None
    return HPA_SCALE_DOWN_DELAY_S if window is None else window
