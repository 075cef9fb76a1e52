"""Golden output of `vfleet k8s render` for seed 000 (four embedding replicas sharing one GPU,
from a vllm-stack values file and a labelled PersistentVolume), and what in it matters, checked
on a fresh render. After an intended change run once with VFLEET_UPDATE_GOLDEN=1 (it writes the
file and fails), read the diff, and re-run without it.
"""

from __future__ import annotations

from typing import Any

import yaml
from click.testing import CliRunner

from golden import check_golden
from test_chart_render import GOLDEN, SEEDS
from vfleet.cli import main

GOLDEN_FILE = GOLDEN / "000-embedding.yaml"
ARGS = [
    "k8s",
    "render",
    "-f",
    str(SEEDS / "000-pv.yaml"),
    "-f",
    str(SEEDS / "000-embedding.yaml"),
    "--release",
    "vllm",
    "--namespace",
    "llm",
]


def _render() -> str:
    result = CliRunner().invoke(main, ARGS)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_seed_000_matches_the_golden_file() -> None:
    check_golden(GOLDEN_FILE, _render())


def _objects() -> list[dict[str, Any]]:
    # A fresh render, not the golden file: this test must hold even while the file is stale.
    return [d for d in yaml.safe_load_all(_render()) if d]


def test_seed_000_what_matters() -> None:
    objects = _objects()
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    deploy = by["Deployment", "vllm-qwen3embed-deployment-vllm"]
    assert deploy["spec"]["replicas"] == 4
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]
    engine = pod["spec"]["containers"][0]
    share = {"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": 20, "nvidia.com/gpucores": 20}
    assert engine["resources"]["limits"] == share
    assert engine["resources"]["requests"] == {"cpu": "6", "memory": "16Gi", **share}
    argv = engine["command"]
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen3-Embedding-0.6B"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.15"  # explicit: kept
    assert argv[argv.index("--served-model-name") + 1] == "Qwen3-Embedding-0.6B"
    assert argv[argv.index("--runner") :][:4] == ["--runner", "pooling", "--convert", "embed"]
    assert "--disable-log-requests" not in argv and "--task" not in argv
    assert pod["metadata"]["annotations"]["vfleet.io/models"] == "Qwen3-Embedding-0.6B"
    assert {"name": "CUDA_VISIBLE_DEVICES", "value": "0"} in engine["env"]
    assert "runtimeClassName" not in pod["spec"]  # runtimeClassName: "" in the values
    pvc = by["PersistentVolumeClaim", "vllm-qwen3embed-storage-claim"]
    assert pvc["spec"]["selector"] == {"matchLabels": {"model": "Qwen3-Embedding-0.6B"}}
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    pv = by["PersistentVolume", "test-vllm-pv"]
    assert pv["metadata"]["labels"] == {"model": "Qwen3-Embedding-0.6B"}
    volumes = pod["spec"]["volumes"]
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]},
    } in volumes
    service = by["Service", "vllm-router-service"]  # what the seed port-forwards to
    assert service["spec"]["ports"][0]["port"] == 80
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "Deployment",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "Pod",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
