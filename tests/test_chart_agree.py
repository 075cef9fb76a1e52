"""The chart and the Python side agree, with expectations built from the typed fleet spec and
never from the chart's output:

- every engine's `vllm serve` line in the rendered Deployment (or LeaderWorkerSet leader) is
  `vfleet.engines.vllm.serve_command` for the same model, for every example and seed, with each
  model on vLLM and each way of sharing a GPU (HAMi, time-slicing, none); the model path, the
  vLLM version and the share's memory are worked out here from the spec and the engine rules;
- vllm-stack values given straight to Helm render the same flags as serve_command builds for
  the fleet the importer reads from them;
- the router's flags carry `vfleet.engines.router.router_options`, what `vfleet up` writes
  into its router's config file;
- the engine rules are one file: a changed rewrite and share-to-memory rule in a copy of the
  chart change both a real `vfleet up`'s engine command and the chart's render, and so do
  renamed port, served-name, revision, LoRA and tool-calling flags.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from test_chart_render import CASES, CHART, NAMESPACE, RAW, RELEASE, Case, fleet_case, raw_case
from test_local_up import leftovers, read_state, reap
from vfleet.engines.router import router_options
from vfleet.engines.rulefile import load_rules
from vfleet.engines.rules import EngineRules, Version, parse, parse_version
from vfleet.engines.vllm import serve_command
from vfleet.fleetspec.load import load
from vfleet.fleetspec.models import Fleet, Model
from vfleet.kube import render as helm
from vfleet.kube.values import chart_values, split_image

RULES = load_rules(CHART)
CHART_DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
DEFAULT_VERSION = CHART_DEFAULTS["servingEngineSpec"]["vllmVersion"]
SHARING = ("hami", "timeslicing", "none")


# -- reading the render ------------------------------------------------------------------------


def engine_container(case: Case, model: str) -> dict[str, Any]:
    for obj in case.rendered.objects:
        labels = obj["metadata"].get("labels") or {}
        if labels.get("model") != model or labels.get("app.kubernetes.io/component") != "engine":
            continue
        if obj["kind"] == "Deployment":
            return obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]
        if obj["kind"] == "LeaderWorkerSet":
            leader = obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
            return leader["spec"]["containers"][0]  # type: ignore[no-any-return]
    raise AssertionError(f"no engine for {model} in {case.name}")


def engine_argv(container: dict[str, Any]) -> list[str]:
    """vllm serve ... as the chart renders it; a LeaderWorkerSet leader's Ray wrapper removed."""
    cmd = list(container["command"])
    if cmd[:2] == ["sh", "-c"]:
        cmd = cmd[cmd.index("vllm") :]
        assert cmd[-2:] == ["--distributed-executor-backend", "ray"]
        cmd = cmd[:-2]
    return cmd


def model_spec(values: dict[str, Any], name: str) -> dict[str, Any]:
    specs = values["servingEngineSpec"]["modelSpec"]
    return next(s for s in specs if s["name"] == name)  # type: ignore[no-any-return]


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


# -- expectations from the typed spec ----------------------------------------------------------


def image_version(model: Model) -> Version | None:
    """The image tag's vLLM version (vllm/vllm-openai:v0.9.2), else the chart's default."""
    tag = split_image(model.image)[1] if model.image else ""
    found = re.match(r"v?(\d+\.\d+(\.\d+)?)", tag)
    return parse_version(found.group(1) if found else DEFAULT_VERSION)


def download_mode(model: Model, spec: dict[str, Any]) -> str:
    """Who fetches the weights: as the chart's values and download docs say."""
    mode = str((spec.get("download") or {}).get("mode", "auto"))
    if mode != "auto":
        return mode
    kind = model.source.kind
    if kind in ("pvc", "local"):
        return "none"
    return "engine" if kind in ("hf", "modelscope") else "job-or-init"


def model_ref(model: Model, spec: dict[str, Any]) -> str:
    """The path or id vLLM opens: the download's directory under /data, a PVC's path under
    /data, else the source's id."""
    if download_mode(model, spec) in ("job", "init", "job-or-init"):
        sub = str((spec.get("download") or {}).get("dir") or f"models/{model.name}")
        return "/data/" + sub.strip("/")
    if model.source.kind == "pvc":
        return ("/data/" + model.source.path.strip("/")).rstrip("/")
    return model.source.id


def share_memory(model: Model, sharing: str, r: EngineRules = RULES) -> float | None:
    if not model.gpu_share_pct or sharing == "none":
        return None  # a whole GPU (sharing off too): vLLM's own default
    return r.share_memory(model.gpu_share_pct, sliced=sharing == "hami")


def expected_argv(
    model: Model, spec: dict[str, Any], sharing: str, r: EngineRules = RULES
) -> list[str]:
    if download_mode(model, spec) != "engine":  # the download fetched that revision instead
        source = model.source.model_copy(update={"revision": None})
        model = model.model_copy(update={"source": source})
    ref = model_ref(model, spec)
    gmu = share_memory(model, sharing, r)
    return serve_command(
        model, ref, "0.0.0.0", 8000, image_version(model), gmu, engine_rules=r
    ).argv


def on_vllm(fleet: Fleet) -> Fleet:
    """The fleet with every model on vLLM (the quickstart runs on the simulator)."""
    models = tuple(m.model_copy(update={"engine": None}) for m in fleet.models)
    return fleet.model_copy(update={"engine": "vllm", "models": models})


@functools.cache
def vllm_case(name: str, sharing: str) -> Case:
    fleet = on_vllm(load(CASES[name]).fleet)
    values = chart_values(fleet, engine_rules=RULES).values
    values["servingEngineSpec"].setdefault("gpuSharing", {})["mode"] = sharing
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    return Case(name, fleet, values, rendered)


# -- the serve lines ---------------------------------------------------------------------------


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("name", sorted(CASES))
def test_chart_serve_line_is_serve_command(name: str, sharing: str) -> None:
    case = vllm_case(name, sharing)
    assert case.fleet is not None
    compared = 0
    for model in case.fleet.models:
        argv = engine_argv(engine_container(case, model.name))
        want = expected_argv(model, model_spec(case.values, model.name), sharing)
        assert argv == want, model.name
        assert argv[:2] == ["vllm", "serve"] and "--served-model-name" in argv
        compared += 1
    assert compared == len(case.fleet.models) >= 1


def test_quickstart_shares_get_the_rules_memory() -> None:
    """The quickstart's 30% and 10% shares on vLLM: HAMi gives vLLM 90% of the slice it sees,
    time-slicing (as `vfleet up`) 90% of the share of the whole device; the numbers are written
    out here, so a changed rule fails a test instead of passing on both sides unnoticed."""
    for sharing, chat, embed in (("hami", "0.9", "0.9"), ("timeslicing", "0.27", "0.09")):
        case = vllm_case("quickstart", sharing)
        for model, want in (("chat", chat), ("embed", embed)):
            argv = engine_argv(engine_container(case, model))
            assert argv[argv.index("--gpu-memory-utilization") + 1] == want, (sharing, model)
    none = engine_argv(engine_container(vllm_case("quickstart", "none"), "chat"))
    assert "--gpu-memory-utilization" not in none
    chat = engine_argv(engine_container(vllm_case("quickstart", "hami"), "chat"))
    assert chat[chat.index("--max-model-len") + 1] == "8192"
    assert chat[chat.index("--runner") + 1] == "generate"


# features-values uses chart-only keys (a `source` mapping) that no importer reads; its lines are
# pinned by the golden render and test_old_flags_follow_the_image_version.
IMPORTABLE_RAW = sorted(n for n in RAW if not n.startswith("features"))


@pytest.mark.parametrize("name", IMPORTABLE_RAW)
def test_vllm_stack_values_render_serve_command_flags(name: str) -> None:
    """Values given straight to Helm (no vfleet in between) give the flags serve_command builds
    for what the importer reads from the same file; the order may differ (the chart keeps a
    hand-written flag where it was, Python writes a typed one in its place)."""
    raw = raw_case(name)
    fleet = load([RAW[name]]).fleet
    sharing = str((raw.values["servingEngineSpec"].get("gpuSharing") or {}).get("mode", "hami"))
    compared = 0
    for model in fleet.models:
        if fleet.engine_of(model) != "vllm":
            continue
        argv = engine_argv(engine_container(raw, model.name))
        want = expected_argv(model, model_spec(raw.values, model.name), sharing)
        assert flags(argv) == flags(want), model.name
        compared += 1
    assert compared >= 1


@pytest.mark.parametrize("name", IMPORTABLE_RAW)
def test_vllm_stack_values_render_alike_directly_and_imported(name: str) -> None:
    raw, imported = raw_case(name), fleet_case(name)
    assert imported.fleet is not None
    assert imported.fleet.models
    for model in imported.fleet.models:
        a, b = engine_container(raw, model.name), engine_container(imported, model.name)
        assert flags(engine_argv(a)) == flags(engine_argv(b))
        assert a["resources"] == b["resources"]
        assert a.get("env") == b.get("env")
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
    i = chat.index("--cudagraph-capture-sizes")
    assert chat[i : i + 4] == ["--cudagraph-capture-sizes", "1", "2", "4"]
    assert "--task" not in chat and chat[chat.index("--runner") + 1] == "generate"
    embed = engine_argv(engine_container(raw, "s3-embed"))
    assert embed[embed.index("--max-cudagraph-capture-size") + 1] == "8"
    assert embed[embed.index("--convert") + 1] == "embed"
    seed = engine_argv(engine_container(raw_case("000-embedding"), "qwen3embed"))
    assert "--disable-log-requests" not in seed and "--task" not in seed


# -- GPUs, names, the router -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_gpus_and_served_names(name: str) -> None:
    case = fleet_case(name)
    assert case.fleet is not None
    assert case.fleet.models
    for model in case.fleet.models:
        container = engine_container(case, model.name)
        limits = container["resources"].get("limits", {})
        if case.fleet.engine_of(model) == "sim":
            assert not [k for k in limits if "nvidia" in k]
            assert container["command"][:2] == ["vfleet", "sim"]
        elif model.gpu_share_pct:
            pct = model.gpu_share_pct
            hami = {"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": pct}
            assert hami.items() <= limits.items()
            assert limits["nvidia.com/gpucores"] == pct
        elif model.gpus_needed:
            gpus = sum(v for k, v in limits.items() if k == "nvidia.com/gpu")
            assert gpus * _pods(case, model) == model.gpus_needed
        requests = container["resources"]["requests"]
        assert {k: v for k, v in limits.items() if "nvidia" in k}.items() <= requests.items()
        served = [*model.served_names, *model.vllm.lora.modules]
        pod = _pod_meta(case, model.name)
        assert pod["annotations"]["vfleet.io/models"].split(",") == served


@pytest.mark.parametrize("gpu", [0.1, 0.25, 0.5, 1, 2, 4, 16, 1.5, 2.5, 3.75])
def test_gpu_requests_the_spec_refuses_the_chart_refuses(gpu: float) -> None:
    """Values given straight to Helm meet the same GPU rule as the fleet spec: a share of one
    GPU, or whole GPUs. (The spec also wants a share in whole percent; the chart rounds.)"""
    try:
        Model.model_validate({"name": "m", "source": "org/m", "gpu": gpu})
        spec_ok = True
    except ValidationError as exc:
        spec_ok = False
        assert "must be a whole number of GPUs" in str(exc)
    values = {
        "servingEngineSpec": {"modelSpec": [{"name": "m", "modelURL": "org/m", "requestGPU": gpu}]}
    }
    try:
        helm.render(values, release=RELEASE, namespace=NAMESPACE)
        chart_ok = True
    except helm.KubeError as exc:
        chart_ok = False
        assert "must be a whole number of GPUs" in str(exc)
    assert spec_ok == chart_ok == (gpu < 1 or gpu == int(gpu))


def test_timeslicing_asks_for_the_shared_resource() -> None:
    case = vllm_case("quickstart", "timeslicing")
    for model in ("chat", "embed"):
        limits = engine_container(case, model)["resources"]["limits"]
        assert limits == {"nvidia.com/gpu.shared": 1}


def router_args(case: Case) -> dict[str, list[str]]:
    router = case.one("Deployment", f"{RELEASE}-deployment-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    out: dict[str, list[str]] = {}
    for flag, value in zip(args, [*args[1:], ""], strict=True):
        if flag.startswith("--") and not value.startswith("--"):
            out.setdefault(flag, []).append(value)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_router_flags_are_the_spec_router_options(name: str) -> None:
    case = fleet_case(name)
    assert case.fleet is not None
    opts = router_options(case.fleet)
    args = router_args(case)
    assert args["--policy"] == [opts["policy"]]
    pairs = sorted(p.split("=", 1) for p in args.get("--model-policy", []))
    assert pairs == sorted([k, v] for k, v in opts.get("model_policies", {}).items())
    for flag, key in (
        ("--rate-limit", "rate_limit_per_minute"),
        ("--token-limit", "token_limit_per_minute"),
        ("--workers", "workers"),
    ):
        assert [float(v) for v in args.get(flag, [])] == ([opts[key]] if key in opts else [])
    # never an API key on a command line: the chart gives it to the router from a Secret
    words = {word for values in args.values() for word in values}
    assert not set(opts.get("api_keys", ())) & words


def test_quickstart_router_routes_chat_by_prefix() -> None:
    opts = router_options(fleet_case("quickstart").fleet)  # type: ignore[arg-type]
    assert opts == {"policy": "least_load", "model_policies": {"Qwen/Qwen3-0.6B": "prefix"}}
    assert router_args(fleet_case("quickstart"))["--model-policy"] == ["Qwen/Qwen3-0.6B=prefix"]


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
                lwt = obj["spec"]["leaderWorkerTemplate"]
                return lwt["leaderTemplate"]["metadata"]  # type: ignore[no-any-return]
    raise AssertionError(model)


# -- one rules file for both -------------------------------------------------------------------

FLEET = """\
name: rules
models:
  - name: chat
    source: hf://org/chat
    gpu: 0.5
    vllm:
      extraArgs: ["--cuda-graph-sizes", "1", "2", "4", "--disable-log-requests", "--seed", "7"]
"""
NEW_FLAG = "--capture-sizes-from-the-rules-file"
FAKE_VLLM = """\
#!/bin/sh
# A stand-in for vLLM: tells its version, records how `vfleet up` started it, then fails
# (the test needs the command line, not a server).
if [ "$1" = "--version" ]; then echo 0.26.0; exit 0; fi
printf '%s\\n' "$0" "$@" > {record}
exit 3
"""


def edited_chart(tmp_path: Path) -> tuple[Path, EngineRules]:
    """A copy of the chart whose rules rename --cuda-graph-sizes to NEW_FLAG and leave vLLM
    80% (not 90%) of a GPU share."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    path = chart / "files" / "engine-rules.yaml"
    text = path.read_text(encoding="utf-8")
    for old, new in (
        ('to: "--cudagraph-capture-sizes"', f'to: "{NEW_FLAG}"'),
        ("headroomPercent: 90", "headroomPercent: 80"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return chart, parse(yaml.safe_load(text))


@pytest.mark.timeout(120)
def test_changing_the_rules_file_changes_vfleet_up_and_the_chart(tmp_path: Path) -> None:
    chart, edited = edited_chart(tmp_path)
    spec = tmp_path / "fleet.yaml"
    spec.write_text(FLEET, encoding="utf-8")
    fleet = load([spec]).fleet
    (model,) = fleet.models

    # vfleet up, for real, with the edited chart named by VFLEET_CHART and a stand-in vLLM
    bin_dir, record = tmp_path / "bin", tmp_path / "vllm-argv.txt"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(record=record), encoding="utf-8")
    fake.chmod(0o755)
    env = {**os.environ, "VFLEET_CHART": str(chart), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    up = [sys.executable, "-m", "vfleet", "up", "-f", str(spec), "--gpus", "0"]
    try:
        res = subprocess.run(
            [*up, "--port", "0", "--grace", "5", "--run-dir", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        assert res.returncode != 0 and "exited with code 3" in res.stderr, res.stderr
        assert leftovers(run_dir, read_state(run_dir)) == []
    finally:
        reap(run_dir)
    local = record.read_text(encoding="utf-8").splitlines()
    port = int(local[local.index("--port") + 1])
    want = serve_command(
        model, "org/chat", "127.0.0.1", port, (0, 26, 0), 0.4, (str(fake),), engine_rules=edited
    )
    assert local == want.argv
    assert local[local.index(NEW_FLAG) + 1 :][:3] == ["1", "2", "4"]
    assert local[local.index("--gpu-memory-utilization") + 1] == "0.4"
    assert "--cudagraph-capture-sizes" not in local and "--disable-log-requests" not in local

    # the chart, from the same edited copy
    values = chart_values(fleet, engine_rules=edited).values
    values["servingEngineSpec"]["gpuSharing"] = {"mode": "timeslicing"}
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE, chart=chart)
    case = Case("edited", fleet, values, rendered)
    argv = engine_argv(engine_container(case, "chat"))
    assert argv == expected_argv(model, model_spec(values, "chat"), "timeslicing", edited)
    assert argv[argv.index(NEW_FLAG) + 1 :][:3] == ["1", "2", "4"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.4"
    values["servingEngineSpec"]["gpuSharing"] = {"mode": "hami"}
    hami = helm.render(values, release=RELEASE, namespace=NAMESPACE, chart=chart)
    argv = engine_argv(engine_container(Case("hami", fleet, values, hami), "chat"))
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.8"

    # and the chart as shipped still renames the flag the old way
    shipped = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    argv = engine_argv(engine_container(Case("shipped", fleet, values, shipped), "chat"))
    assert "--cudagraph-capture-sizes" in argv and NEW_FLAG not in argv


FEATURES = """\
name: features
models:
  - name: chat
    source: hf://org/chat@v2
    vllm:
      lora: {enabled: true, maxLoras: 2, maxLoraRank: 16, modules: {sql: /data/sql}}
      toolCalling: {enabled: true, parser: hermes}
"""
# flags the rules file names, each renamed in a copy of the chart
RENAMED = {
    "--port": "--port-from-the-rules-file",
    "--served-model-name": "--names-from-the-rules-file",
    "--revision": "--revision-from-the-rules-file",
    "--enable-lora": "--lora-from-the-rules-file",
    "--max-lora-rank": "--rank-from-the-rules-file",
    "--lora-modules": "--adapters-from-the-rules-file",
    "--enable-auto-tool-choice": "--tools-from-the-rules-file",
    "--tool-call-parser": "--parser-from-the-rules-file",
}


def test_renamed_model_lora_and_tool_flags_change_serve_command_and_the_chart(
    tmp_path: Path,
) -> None:
    """The port, served-name, revision, LoRA and tool-calling flags are the rules file's:
    renamed in a copy of the chart, serve_command and that chart's render both write the new
    names."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    path = chart / "files" / "engine-rules.yaml"
    text = path.read_text(encoding="utf-8")
    for old, new in RENAMED.items():
        assert text.count(f'"{old}"') == 1, old
        text = text.replace(f'"{old}"', f'"{new}"')
    path.write_text(text, encoding="utf-8")
    edited = parse(yaml.safe_load(text))
    spec = tmp_path / "fleet.yaml"
    spec.write_text(FEATURES, encoding="utf-8")
    fleet = load([spec]).fleet
    (model,) = fleet.models

    python = serve_command(model, "org/chat", "0.0.0.0", 8000, (0, 26, 0), engine_rules=edited)
    values = chart_values(fleet, engine_rules=edited).values
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE, chart=chart)
    chart_argv = engine_argv(engine_container(Case("renamed", fleet, values, rendered), "chat"))
    assert chart_argv == expected_argv(model, model_spec(values, "chat"), "hami", edited)
    for argv in (python.argv, chart_argv):
        assert not set(RENAMED) & set(argv), argv
        assert argv[argv.index("--port-from-the-rules-file") + 1] == "8000"
        i = argv.index("--names-from-the-rules-file")
        assert argv[i : i + 4] == [
            "--names-from-the-rules-file",
            "chat",
            "--revision-from-the-rules-file",
            "v2",
        ]
        i = argv.index("--lora-from-the-rules-file")
        assert argv[i:] == [
            "--lora-from-the-rules-file",
            "--max-loras",
            "2",
            "--rank-from-the-rules-file",
            "16",
            "--adapters-from-the-rules-file",
            "sql=/data/sql",
            "--tools-from-the-rules-file",
            "--parser-from-the-rules-file",
            "hermes",
        ]

    # the shipped chart, from the same values, still writes vLLM's names
    shipped = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    argv = engine_argv(engine_container(Case("shipped", fleet, values, shipped), "chat"))
    assert set(RENAMED) <= set(argv)
    assert argv == expected_argv(model, model_spec(values, "chat"), "hami")
