"""The fleets of the multi-GPU check (scripts/gpu/fleets, issue 17) as `vfleet up --dry-run`
places them on GPUs 0,1 and as `vfleet k8s render` asks Kubernetes for them: the same GPUs on
both sides (whole GPUs for tensor parallelism, HAMi shares for fractional replicas), and
NCCL_NVLS_ENABLE=0 in every engine's environment. The fleet files are made concrete by the
check's own helper (scripts/gpu/multi_gpu_check.py spec), as the GPU script does it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_vfleet
from vfleet.engines.rulefile import load_rules

ROOT = Path(__file__).resolve().parents[1]
FLEETS = ROOT / "scripts" / "gpu" / "fleets"
HELPER = ROOT / "scripts" / "gpu" / "multi_gpu_check.py"
HEADROOM = load_rules().headroom_pct
GPU, GPUMEM, GPUCORES = "nvidia.com/gpu", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores"

pytestmark = pytest.mark.timeout(120)


def concrete(tmp_path: Path, fleet: str, *flags: str) -> Path:
    """The fleet file with model directories that exist, as multi_gpu_check.sh writes it."""
    for name in ("chat", "embed"):
        (tmp_path / "models" / name).mkdir(parents=True, exist_ok=True)
    models = tmp_path / "models"
    paths = ("--chat", str(models / "chat"), "--embed", str(models / "embed"))
    out = subprocess.run(
        [sys.executable, str(HELPER), "spec", str(FLEETS / f"{fleet}.yaml"), *flags, *paths],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    path = tmp_path / f"{fleet}{'-1gpu' if flags else ''}.yaml"
    path.write_text(out.stdout)
    return path


def env_for(tmp_path: Path) -> dict[str, str]:
    # no vLLM here (a dry run needs none); state stays in the test's directory
    return {**os.environ, "VFLEET_STATE_DIR": str(tmp_path / "state")}


def dry_run(tmp_path: Path, spec: Path, gpus: str) -> dict[str, Any]:
    args = ("up", "-f", str(spec), "--engine", "vllm", "--gpus", gpus, "--port", "0")
    done = run_vfleet(*args, "--dry-run", env=env_for(tmp_path))
    assert done.returncode == 0, done.stderr
    plan: dict[str, Any] = json.loads(done.stdout)
    return plan


def rendered_engines(tmp_path: Path, spec: Path) -> dict[str, dict[str, Any]]:
    """model -> its engine Deployment, from `vfleet k8s render`."""
    done = run_vfleet("k8s", "render", "-f", str(spec), env=env_for(tmp_path), timeout_s=60)
    assert done.returncode == 0, done.stderr
    out = {}
    for obj in yaml.safe_load_all(done.stdout):
        labels = (obj or {}).get("metadata", {}).get("labels", {})
        if (
            obj
            and obj["kind"] == "Deployment"
            and labels.get("app.kubernetes.io/component") == ("engine")
        ):
            out[labels["model"]] = obj
    return out


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (engine,) = deployment["spec"]["template"]["spec"]["containers"]
    return engine


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def plan_asks(plan: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """model -> (replicas, whole GPUs each, share % each) as the local plan placed them."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in plan["engines"]:
        rows[e["model"]].append(e)
    out = {}
    for model, engines in rows.items():
        kinds = {
            (len(e["devices"]), 0) if e["share_pct"] == 100 else (0, e["share_pct"])
            for e in engines
        }
        assert len(kinds) == 1, f"{model}: replicas placed unalike {kinds}"
        whole, pct = kinds.pop()
        out[model] = (len(engines), whole, pct)
    return out


def render_asks(engines: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """model -> (replicas, whole GPUs each, share % each) as the chart asks Kubernetes."""
    out = {}
    for model, dep in engines.items():
        res = container(dep)["resources"]
        lim = res["limits"]
        gpu_requests = {k: v for k, v in res["requests"].items() if k.startswith("nvidia.com/")}
        assert gpu_requests == lim, model  # extended resources: requests equal limits
        if GPUMEM in lim:  # HAMi: one device, a slice of its memory and compute
            assert lim[GPU] == 1 and lim[GPUCORES] == lim[GPUMEM], lim
            out[model] = (dep["spec"]["replicas"], 0, lim[GPUMEM])
        else:
            out[model] = (dep["spec"]["replicas"], lim.get(GPU, 0), 0)
    return out


def check_env(plan: dict[str, Any], engines: dict[str, dict[str, Any]]) -> None:
    for e in plan["engines"]:
        assert e["env"]["NCCL_NVLS_ENABLE"] == "0", e["key"]
        assert e["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, e["devices"])), e["key"]
    for model, dep in engines.items():
        env = {v["name"]: v.get("value") for v in container(dep).get("env", [])}
        assert env.get("NCCL_NVLS_ENABLE") == "0", model


def test_tensor_parallel_fleet_asks_for_two_whole_gpus_on_both_sides(tmp_path: Path) -> None:
    spec = concrete(tmp_path, "tp2")
    plan = dry_run(tmp_path, spec, "0,1")
    (engine,) = plan["engines"]
    assert (engine["devices"], engine["share_pct"], engine["gpu"]) == ([0, 1], 100, "0,1")
    assert flag(engine["argv"], "--tensor-parallel-size") == "2"
    assert engine["memory"] is None  # the whole devices: vLLM's own default
    rendered = rendered_engines(tmp_path, spec)
    assert plan_asks(plan) == render_asks(rendered) == {"chat-tp2": (1, 2, 0)}
    assert flag(container(rendered["chat-tp2"])["command"], "--tensor-parallel-size") == "2"
    check_env(plan, rendered)


def test_mixed_fleet_packs_two_shares_per_gpu_and_renders_the_same_hami_shares(
    tmp_path: Path,
) -> None:
    spec = concrete(tmp_path, "mixed")
    plan = dry_run(tmp_path, spec, "0,1")
    where = {e["key"]: e["devices"] for e in plan["engines"]}
    assert where["chat-0"] != where["chat-1"]  # one chat replica per GPU
    per_gpu = Counter(d for e in plan["engines"] if e["model"] == "embed" for d in e["devices"])
    assert per_gpu == {0: 2, 1: 2}  # the four embedding replicas, two on each GPU
    for gpu in (0, 1):
        on = [e for e in plan["engines"] if gpu in e["devices"]]
        assert sum(e["share_pct"] for e in on) == 100
        assert sum(e["memory"] for e in on) <= 1.0
    rendered = rendered_engines(tmp_path, spec)
    assert plan_asks(plan) == render_asks(rendered) == {"chat": (2, 0, 80), "embed": (4, 0, 10)}
    # The same memory on both sides: locally the engine sees the whole device and gets its
    # share of it; under HAMi it sees only its slice and gets the headroom of that.
    for e in plan["engines"]:
        k8s = float(flag(container(rendered[e["model"]])["command"], "--gpu-memory-utilization"))
        assert k8s == HEADROOM / 100
        assert e["memory"] == e["share_pct"] * HEADROOM // 100 / 100
    check_env(plan, rendered)


def test_single_gpu_variant_plans_onto_one_gpu(tmp_path: Path) -> None:
    tp1 = dry_run(tmp_path, concrete(tmp_path, "tp2", "--single-gpu"), "0")
    (engine,) = tp1["engines"]
    assert (engine["devices"], engine["share_pct"]) == ([0], 100)
    assert flag(engine["argv"], "--tensor-parallel-size") in (None, "1")
    mixed = dry_run(tmp_path, concrete(tmp_path, "mixed", "--single-gpu"), "0")
    placed = {e["key"]: (e["devices"], e["share_pct"]) for e in mixed["engines"]}
    assert placed == {"chat-0": ([0], 80), "embed-0": ([0], 10), "embed-1": ([0], 10)}
    assert all(e["env"]["NCCL_NVLS_ENABLE"] == "0" for e in mixed["engines"])


def test_two_gpu_fleets_do_not_fit_one_gpu(tmp_path: Path) -> None:
    for fleet in ("tp2", "mixed"):
        args = ("up", "-f", str(concrete(tmp_path, fleet)), "--engine", "vllm", "--gpus", "0")
        done = run_vfleet(*args, "--dry-run", env=env_for(tmp_path))
        assert done.returncode == 1
        assert "do not fit on 1 GPU(s) [0]" in done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_dry_run_starts_nothing_and_masks_secrets(tmp_path: Path) -> None:
    doc = yaml.safe_load(concrete(tmp_path, "mixed").read_text())
    doc["models"][0]["env"]["HF_TOKEN"] = "hf_secret_value"
    doc["models"][0]["vllm"]["extraArgs"] = ["--api-key", "sk-engine-secret"]
    spec = tmp_path / "secret.yaml"
    spec.write_text(yaml.safe_dump(doc))
    done = run_vfleet("up", "-f", str(spec), "--gpus", "0,1", "--dry-run", env=env_for(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "hf_secret_value" not in done.stdout and "sk-engine-secret" not in done.stdout
    chat = json.loads(done.stdout)["engines"][0]
    assert chat["env"]["HF_TOKEN"] == "***"
    assert flag(chat["argv"], "--api-key") == "***"
    # nothing started: no run directory state, no supervisor
    assert not list((tmp_path / "state").rglob("state.json"))
