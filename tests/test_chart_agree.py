"""The chart and the Python side agree: the `vllm serve` line the chart renders is the one
`vfleet.engines.vllm.serve_command` builds for the same model (as `vfleet up` runs it), GPU
shares become the same memory fraction as the local packer gives, served names reach the
router's annotation, and a vllm-stack file renders the same engines whether Helm reads it
directly or `vfleet k8s render` imports it first.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from test_chart_render import CASES, RAW, Case, fleet_case, raw_case
from vfleet.engines.vllm import parse_version, serve_command
from vfleet.fleetspec.models import Model
from vfleet.kube.values import split_image
from vfleet.local.packer import derived_memory

DEFAULT_VERSION = "0.26.0"


def engine_container(case: Case, model: str) -> dict[str, Any]:
    for obj in case.rendered.objects:
        labels = obj["metadata"].get("labels") or {}
        if labels.get("model") != model or labels.get("app.kubernetes.io/component") != "engine":
            continue
        if obj["kind"] == "Deployment":
            return obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]
        if obj["kind"] == "LeaderWorkerSet":
            return obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]  # type: ignore[no-any-return]
    raise AssertionError(f"no engine for {model} in {case.name}")


def engine_argv(container: dict[str, Any]) -> list[str]:
    """vllm serve ... as the chart renders it; a LeaderWorkerSet leader's Ray wrapper removed."""
    cmd = list(container["command"])
    if cmd[:2] == ["sh", "-c"]:
        cmd = cmd[cmd.index("vllm") :]
        assert cmd[-2:] == ["--distributed-executor-backend", "ray"]
        cmd = cmd[:-2]
    return cmd


def image_version(model: Model) -> str:
    _, tag = split_image(model.image or "")
    found = re.match(r"^v?(\d+\.\d+(\.\d+)?)", tag)
    return found.group(1) if found else DEFAULT_VERSION


def expected_argv(model: Model, ref: str, gmu: float | None) -> list[str]:
    if ref != model.source.id:  # downloaded into the volume: the revision went to the download
        model = model.model_copy(
            update={"source": model.source.model_copy(update={"revision": None})}
        )
    version = parse_version(image_version(model))
    return serve_command(model, ref, "0.0.0.0", 8000, version, gmu).argv


def vllm_models(case: Case) -> list[Model]:
    assert case.fleet is not None
    return [m for m in case.fleet.models if case.fleet.engine_of(m) == "vllm"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_chart_serve_line_is_serve_command(name: str) -> None:
    case = fleet_case(name)
    for model in vllm_models(case):
        argv = engine_argv(engine_container(case, model.name))
        gmu = 0.9 if model.gpu_share_pct else None  # HAMi: 0.9 of the slice the engine sees
        assert argv == expected_argv(model, argv[2], gmu), model.name


@pytest.mark.parametrize("name", ["features-fleet", "quickstart"])
def test_timeslicing_shares_get_the_local_packers_memory(name: str) -> None:
    case = fleet_case(name, (("servingEngineSpec.gpuSharing.mode", "timeslicing"),))
    shared = [m for m in vllm_models(case) if m.gpu_share_pct and not m.vllm.gpu_memory_utilization]
    for model in shared:
        container = engine_container(case, model.name)
        argv = engine_argv(container)
        assert argv == expected_argv(model, argv[2], derived_memory(model.gpu_share_pct))
        assert container["resources"]["limits"] == {"nvidia.com/gpu.shared": 1}
    assert shared or name == "quickstart"


@pytest.mark.parametrize("name", sorted(CASES))
def test_gpus_and_served_names(name: str) -> None:
    case = fleet_case(name)
    assert case.fleet is not None
    for model in case.fleet.models:
        container = engine_container(case, model.name)
        limits = container["resources"].get("limits", {})
        if case.fleet.engine_of(model) == "sim":
            assert not [k for k in limits if "nvidia" in k]
            assert container["command"][:2] == ["vfleet", "sim"]
            continue
        if model.gpu_share_pct:
            pct = model.gpu_share_pct
            assert limits == {**limits, "nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": pct,
                              "nvidia.com/gpucores": pct}  # fmt: skip
        elif model.gpus_needed:
            assert (
                sum(v for k, v in limits.items() if k == "nvidia.com/gpu") * _pods(case, model)
                == model.gpus_needed
            )
        requests = container["resources"]["requests"]
        assert {k: v for k, v in limits.items() if "nvidia" in k}.items() <= requests.items()
        served = [*model.served_names, *model.vllm.lora.modules]
        pod = _pod_meta(case, model.name)
        assert pod["annotations"]["vfleet.io/models"].split(",") == served


def _pods(case: Case, model: Model) -> int:
    lws = [
        o for o in case.kind("LeaderWorkerSet") if o["metadata"]["labels"]["model"] == model.name
    ]
    return lws[0]["spec"]["leaderWorkerTemplate"]["size"] if lws else 1  # type: ignore[no-any-return]


def _pod_meta(case: Case, model: str) -> dict[str, Any]:
    for obj in case.rendered.objects:
        if (obj["metadata"].get("labels") or {}).get("model") == model:
            if obj["kind"] == "Deployment":
                return obj["spec"]["template"]["metadata"]  # type: ignore[no-any-return]
            if obj["kind"] == "LeaderWorkerSet":
                return obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]  # type: ignore[no-any-return]
    raise AssertionError(model)


def flags(argv: list[str]) -> tuple[str, dict[str, tuple[str, ...]]]:
    """The model argument and every flag's values, order aside (vLLM reads them so)."""
    out: dict[str, tuple[str, ...]] = {}
    flag = ""
    for word in argv[3:]:
        if word.startswith("--"):
            flag, _, inline = word.partition("=")
            out[flag] = (inline,) if inline else ()
        else:
            out[flag] = (*out[flag], word)
    return argv[2], out


@pytest.mark.parametrize("name", sorted(n for n in RAW if not n.startswith("features")))
def test_vllm_stack_values_render_alike_directly_and_imported(name: str) -> None:
    raw, imported = raw_case(name), fleet_case(name)
    assert imported.fleet is not None
    for model in imported.fleet.models:
        a, b = engine_container(raw, model.name), engine_container(imported, model.name)
        assert flags(engine_argv(a)) == flags(engine_argv(b))
        assert a["resources"] == b["resources"]
        assert a["env"] == b["env"] if "env" in a or "env" in b else True
        assert (
            _pod_meta(raw, model.name)["annotations"]
            == _pod_meta(imported, model.name)["annotations"]
        )
    for kind in ("PersistentVolumeClaim", "Service"):
        assert [o["spec"] for o in raw.kind(kind)] == [o["spec"] for o in imported.kind(kind)]


def test_old_flags_follow_the_image_version() -> None:
    """TKE's image is vLLM 0.10.1: --task becomes --runner/--convert, but --disable-log-requests
    and --cuda-graph-sizes still exist there; on a current image they are rewritten."""
    old = engine_argv(engine_container(fleet_case("002-tke-e5-mistral"), "e5-mistral-7b-instruct"))
    assert "--disable-log-requests" in old and "--cuda-graph-sizes" in old
    new = engine_argv(engine_container(fleet_case("features-fleet"), "big"))  # image v0.9.2
    assert "--disable-log-requests" in new and "--runner" not in new
    raw = raw_case("features-values")
    chat = engine_argv(engine_container(raw, "chat"))
    assert chat[chat.index("--cudagraph-capture-sizes") :][:4] == [
        "--cudagraph-capture-sizes",
        "1",
        "2",
        "4",
    ]
    assert "--task" not in chat and chat[chat.index("--runner") + 1] == "generate"
    embed = engine_argv(engine_container(raw, "s3-embed"))
    assert embed[embed.index("--max-cudagraph-capture-size") + 1] == "8"
    assert embed[embed.index("--convert") + 1] == "embed"
    seed = engine_argv(engine_container(raw_case("000-embedding"), "qwen3embed"))
    assert "--disable-log-requests" not in seed and "--task" not in seed
