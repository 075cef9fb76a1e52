"""T9k vLLM app values onto the fleet spec.

The weights come from a PVC (`server.model.volume.existingClaim` + `subPath`) or are fetched by a
DataCube (`datacube.source`: huggingface, git or s3) into that volume. Autoscaling follows
Knative: minReplicas empty is 1, 0 scales to zero; maxReplicas empty or 0 is unbounded; the
`autoscaling.knative.dev/*` annotations set the metric, target, windows, delays and rates.
"""

from __future__ import annotations

from typing import Any

from vfleet.fleetspec.draft import Draft
from vfleet.fleetspec.importers.common import (
    duration_s,
    env_list,
    mapping,
    number,
    put_args,
    sequence,
    server_resources,
    slug,
)

SERVER = {
    "image",
    "resources",
    "model",
    "autoScaling",
    "app",
    "env",
    "extraVolumeMounts",
    "extraVolume",
    "extraVolumes",
    "securityContext",
    "nodeSelector",
}


def detect(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    server = doc.get("server")
    model = server.get("model") if isinstance(server, dict) else None
    return "datacube" in doc or (isinstance(model, dict) and "deployName" in model)


def build(draft: Draft, values: dict[str, Any]) -> None:
    # Keys of another chart mean nothing to vfleet's: unknown ones are warned about, not kept.
    draft.unknown((), values, {"server", "datacube", "initializer"}, None)
    if "initializer" in values:
        draft.note(
            ("initializer",),
            "T9k's initializer (a kubectl image that waits for the DataCube) is not needed: "
            "engine pods wait for the download Job's markers",
        )
    server = mapping(draft, values.get("server"), ("server",))
    draft.unknown(("server",), server, SERVER, None)
    at: tuple[Any, ...] = ("models", 0)
    model = mapping(draft, server.get("model"), ("server", "model"))
    name = str(model.get("deployName") or "")
    if not name:
        raise draft.doc.error(("server", "model", "deployName"), "the model needs a deployName")
    draft.put((*at, "name"), slug(name), ("server", "model", "deployName"))
    draft.put((*at, "servedNames"), [name], ("server", "model", "deployName"))
    _image(draft, mapping(draft, server.get("image"), ("server", "image")), at)
    server_resources(draft, server, at)
    volume = mapping(draft, model.get("volume"), ("server", "model", "volume"))
    _source(draft, mapping(draft, values.get("datacube"), ("datacube",)), volume, at)
    _autoscaling(draft, mapping(draft, server.get("autoScaling"), ("server", "autoScaling")), at)
    app = mapping(draft, server.get("app"), ("server", "app"))
    if app.get("extraArgs"):
        put_args(draft, at, app["extraArgs"], ("server", "app", "extraArgs"))
    if server.get("env"):
        draft.put(
            (*at, "env"), env_list(draft, server["env"], ("server", "env")), ("server", "env")
        )
    _kubernetes(draft, server, (*at, "kubernetes"))


def _kubernetes(draft: Draft, server: dict[str, Any], at: tuple[Any, ...]) -> None:
    """The app's extra volumes (both spellings), mounts, security context and node selector."""
    src = ("server",)
    volumes = [
        *sequence(draft, server.get("extraVolumes"), (*src, "extraVolumes")),
        *sequence(draft, server.get("extraVolume"), (*src, "extraVolume")),
    ]
    if volumes:
        key = "extraVolumes" if server.get("extraVolumes") else "extraVolume"
        draft.put((*at, "volumes"), volumes, (*src, key))
    for key, native in (
        ("extraVolumeMounts", "volumeMounts"),
        ("securityContext", "securityContext"),
        ("nodeSelector", "nodeSelector"),
    ):
        if server.get(key):
            draft.put((*at, native), server[key], (*src, key))


def _image(draft: Draft, image: dict[str, Any], at: tuple[Any, ...]) -> None:
    if not image.get("repository"):
        return
    ref = "/".join(str(p) for p in (image.get("registry"), image["repository"]) if p)
    draft.put(
        (*at, "image"), f"{ref}:{image.get('tag') or 'latest'}", ("server", "image", "repository")
    )


def _source(
    draft: Draft, cube: dict[str, Any], volume: dict[str, Any], at: tuple[Any, ...]
) -> None:
    vsrc = ("server", "model", "volume")
    kind = cube.get("source") or ""
    storage: dict[str, Any] = {}
    for key, native in (
        ("size", "size"),
        ("storageClass", "storageClass"),
        ("accessModes", "accessModes"),
        ("existingClaim", "existingClaim"),
    ):
        if volume.get(key) not in (None, "", []):
            storage[native] = volume[key]
            draft.origins[(*at, "storage", native)] = (*vsrc, key)
    if storage:
        draft.put((*at, "storage"), storage)
    if not kind:
        claim = volume.get("existingClaim")
        if not claim:
            raise draft.doc.error(
                vsrc, "no model source: set server.model.volume.existingClaim or datacube.source"
            )
        pvc = {"kind": "pvc", "id": str(claim), "path": str(volume.get("subPath") or "")}
        draft.put((*at, "source"), pvc, (*vsrc, "existingClaim"))
        return
    csrc: tuple[Any, ...] = ("datacube",)
    env = {e["name"]: e.get("value") for e in env_list(draft, cube.get("env"), (*csrc, "env"))}
    source: dict[str, Any]
    if kind == "huggingface":
        hf = mapping(draft, cube.get("huggingface"), (*csrc, "huggingface"))
        source = {"kind": "hf", "id": str(hf.get("id") or "")}
        files = str(hf.get("files") or "").split()
        if files:
            source["include"] = files
        if hf.get("existingSecret"):
            source["secret"] = hf["existingSecret"]
        if env.get("HF_ENDPOINT"):
            source["endpoint"] = env["HF_ENDPOINT"]
        draft.put((*at, "source"), source, (*csrc, "huggingface", "id"))
    elif kind == "git":
        git = mapping(draft, cube.get("git"), (*csrc, "git"))
        source = {"kind": "git", "id": str(git.get("url") or "")}
        if git.get("ref"):
            source["revision"] = str(git["ref"])
        if git.get("existingSecret"):
            source["secret"] = git["existingSecret"]
        draft.put((*at, "source"), source, (*csrc, "git", "url"))
    elif kind == "s3":
        s3 = mapping(draft, cube.get("s3"), (*csrc, "s3"))
        source = {"kind": "s3", "id": str(s3.get("url") or "").removeprefix("s3://")}
        if s3.get("existingSecret"):
            source["secret"] = s3["existingSecret"]
        draft.put((*at, "source"), source, (*csrc, "s3", "url"))
    else:
        raise draft.doc.error(
            (*csrc, "source"),
            f"unknown DataCube source {kind!r}; use huggingface, git, s3 or leave it empty",
        )
    # The DataCube fills the volume before the server starts: a download Job on Kubernetes, into
    # the volume's sub-path.
    download: dict[str, Any] = {"mode": "job"}
    if volume.get("subPath") not in (None, "", []):
        download["dir"] = str(volume["subPath"]).strip("/")
        draft.origins[(*at, "kubernetes", "download", "dir")] = (*vsrc, "subPath")
    draft.put((*at, "kubernetes", "download"), download, (*csrc, "source"))


def _autoscaling(draft: Draft, auto: dict[str, Any], at: tuple[Any, ...]) -> None:
    src = ("server", "autoScaling")
    lo = auto.get("minReplicas")
    hi = auto.get("maxReplicas")
    lo = 1 if lo in (None, "") else lo
    hi = None if hi in (None, "", 0) else hi
    if hi is not None and hi == lo and isinstance(lo, int) and lo > 0:
        draft.put((*at, "replicas"), lo, (*src, "minReplicas"))
        return
    if not auto:
        return
    spec: dict[str, Any] = {"minReplicas": lo}
    if hi is not None:
        spec["maxReplicas"] = hi
    notes = mapping(draft, auto.get("annotations"), (*src, "annotations"))
    origins = _knative(draft, notes, (*src, "annotations"), spec)
    draft.put((*at, "autoscaling"), spec, src)
    for field, key in origins.items():
        draft.origins[(*at, "autoscaling", field)] = (*src, "annotations", key)
    draft.put((*at, "replicas"), max(lo, 1) if isinstance(lo, int) else 1, src)


KNATIVE = "autoscaling.knative.dev/"
# annotation (after the prefix; older releases spell it in camelCase) -> (field, how to read it)
KNATIVE_KEYS = {
    "window": ("stableWindowS", "duration"),
    "panic-window-percentage": ("panicWindowS", "percent"),
    "panicWindowPercentage": ("panicWindowS", "percent"),
    "panic-threshold-percentage": ("panicThreshold", "percent"),
    "panicThresholdPercentage": ("panicThreshold", "percent"),
    "scale-to-zero-pod-retention-period": ("scaleToZeroGraceS", "duration"),
    "scaleToZeroPodRetentionPeriod": ("scaleToZeroGraceS", "duration"),
    "scale-down-delay": ("scaleDownDelayS", "duration"),
    "max-scale-up-rate": ("maxScaleUpRate", "number"),
    "max-scale-down-rate": ("maxScaleDownRate", "number"),
    "target": ("target", "number"),
    "target-utilization-percentage": ("target", "percent"),
}
HOW = {"duration": "a duration (e.g. 60s, 1m30s)", "percent": "a percentage", "number": "a number"}


def _knative(
    draft: Draft, notes: dict[str, Any], src: tuple[Any, ...], spec: dict[str, Any]
) -> dict[str, str]:
    """Knative's per-revision annotations onto autoscaling fields; returns field -> key."""
    origins: dict[str, str] = {}
    read: dict[str, float] = {}
    for key, raw in notes.items():
        name = str(key).removeprefix(KNATIVE) if str(key).startswith(KNATIVE) else None
        if name == "metric":
            _metric(draft, raw, (*src, key), spec)
            origins["metric"] = key
        elif name is not None and name in KNATIVE_KEYS:
            field, how = KNATIVE_KEYS[name]
            value = duration_s(raw) if how == "duration" else number(raw)
            if value is None:
                raise draft.doc.error((*src, key), f"{raw!r} is not {HOW[how]}")
            read[name] = value
            origins[field] = key
        else:
            draft.note((*src, key), "annotation not read by vfleet; left out")
    _apply(read, spec)
    return origins


def _metric(draft: Draft, raw: Any, src: tuple[Any, ...], spec: dict[str, Any]) -> None:
    if raw in ("concurrency", "rps"):
        spec["metric"] = raw
    else:
        draft.note(src, f"metric {raw!r} has no vfleet equivalent; scaling on concurrency")


def _apply(read: dict[str, float], spec: dict[str, Any]) -> None:
    def first(*names: str) -> float | None:
        return next((read[n] for n in names if n in read), None)

    stable = read.get("window")
    if stable is not None:
        spec["stableWindowS"] = stable
    if "target" in read:
        spec["target"] = read["target"]
    utilization = read.get("target-utilization-percentage")
    if utilization is not None:
        spec["target"] = spec.get("target", 32.0) * utilization / 100
    panic_pct = first("panic-window-percentage", "panicWindowPercentage")
    if panic_pct is not None:
        spec["panicWindowS"] = round((stable or 60.0) * panic_pct / 100, 3)
    threshold = first("panic-threshold-percentage", "panicThresholdPercentage")
    if threshold is not None:
        spec["panicThreshold"] = threshold / 100
    grace = first("scale-to-zero-pod-retention-period", "scaleToZeroPodRetentionPeriod")
    if grace is not None:
        spec["scaleToZeroGraceS"] = grace
    for name, field in (
        ("scale-down-delay", "scaleDownDelayS"),
        ("max-scale-up-rate", "maxScaleUpRate"),
        ("max-scale-down-rate", "maxScaleDownRate"),
    ):
        if name in read:
            spec[field] = read[name]
