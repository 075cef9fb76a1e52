"""Every example and seed YAML loads into the fleet it means, and the notes say what was kept.

The normalized fleet of each seed is compared with a golden file under tests/data/golden/.
Those files are written once by hand and reviewed by eye against the seed:

    VFLEET_UPDATE_GOLDEN=1 pytest tests/test_spec_import.py -k golden   # writes, then fails
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from golden import check_golden
from vfleet.fleetspec.load import load
from vfleet.fleetspec.models import Fleet
from vfleet.fleetspec.source import SpecError

ROOT = Path(__file__).parent.parent
SEEDS = ROOT / "examples" / "seeds"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
GOLDEN = Path(__file__).parent / "data" / "golden"

# Files holding only Kubernetes objects, and the fleet file each belongs with.
OBJECT_ONLY = {
    "000-pv.yaml": "000-embedding.yaml",
    "001-elastic-claim.yaml": "001-deployment.yaml",
    "001-service-ingress.yaml": "001-deployment.yaml",
}
FLEET_FILES = sorted(p.name for p in SEEDS.glob("*.yaml") if p.name not in OBJECT_ONLY)
# name of the golden file -> the files loaded together
GOLDEN_CASES: dict[str, list[Path]] = {
    **{Path(name).stem: [SEEDS / name] for name in FLEET_FILES},
    "quickstart": [QUICKSTART],
    "000-embedding+000-pv": [SEEDS / "000-embedding.yaml", SEEDS / "000-pv.yaml"],
    "001-deployment+objects": [
        SEEDS / "001-deployment.yaml",
        SEEDS / "001-elastic-claim.yaml",
        SEEDS / "001-service-ingress.yaml",
    ],
}


def normalized(fleet: Fleet) -> dict[str, Any]:
    return fleet.model_dump(by_alias=True, exclude_defaults=True, mode="json")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- every file loads --------------------------------------------------------------------------


def test_the_seed_directory_holds_what_these_tests_expect() -> None:
    names = {p.name for p in SEEDS.glob("*.yaml")}
    assert set(OBJECT_ONLY) <= names
    assert set(OBJECT_ONLY.values()) <= names
    assert len(FLEET_FILES) >= 12, FLEET_FILES


@pytest.mark.parametrize("name", FLEET_FILES)
def test_every_seed_fleet_file_loads(name: str) -> None:
    loaded = load([SEEDS / name])
    assert loaded.fleet.models
    assert loaded.fleet.imported_from in ("vllm-stack", "tke", "t9k", "kubernetes-manifests")
    for note in loaded.notes:
        assert note.startswith(("note: ", "warning: ")), note
        assert str(SEEDS / name) in note, note


def test_quickstart_loads_as_a_native_fleet() -> None:
    loaded = load([QUICKSTART])
    fleet = loaded.fleet
    assert loaded.notes == []
    assert fleet.imported_from is None
    assert fleet.name == "quickstart"
    assert fleet.engine == "sim"
    assert [(m.name, m.replicas, m.gpu, m.task) for m in fleet.models] == [
        ("chat", 2, 0.3, "generate"),
        ("embed", 4, 0.1, "embed"),
    ]
    assert fleet.router.model_policies == {"chat": "prefix"}


@pytest.mark.parametrize(("objects", "fleet_file"), sorted(OBJECT_ONLY.items()))
def test_object_only_files_load_together_with_their_fleet(objects: str, fleet_file: str) -> None:
    alone = load([SEEDS / fleet_file]).fleet
    both = load([SEEDS / fleet_file, SEEDS / objects])
    added = both.fleet.kubernetes.extra_objects[len(alone.kubernetes.extra_objects) :]
    assert added, both.fleet.kubernetes
    assert all("kind" in o and "apiVersion" in o for o in added)
    assert both.fleet.models == alone.models
    assert both.fleet.name == alone.name  # the first file names the fleet


@pytest.mark.parametrize("objects", sorted(OBJECT_ONLY))
def test_object_only_file_alone_is_a_clear_error(objects: str) -> None:
    with pytest.raises(SpecError) as info:
        load([SEEDS / objects])
    err = info.value
    assert err.file == str(SEEDS / objects)
    assert "no models here" in err.message
    assert "-f fleet.yaml -f objects.yaml" in err.message
    assert str(err).startswith(f"{SEEDS / objects}: ")


def test_object_only_error_names_the_kinds_found() -> None:
    with pytest.raises(SpecError, match=r"only Kubernetes objects \(Ingress, Service\)"):
        load([SEEDS / "001-service-ingress.yaml"])


def test_pv_next_to_the_embedding_values_is_kept_as_an_extra_object() -> None:
    fleet = load([SEEDS / "000-embedding.yaml", SEEDS / "000-pv.yaml"]).fleet
    (pv,) = fleet.kubernetes.extra_objects
    assert pv["kind"] == "PersistentVolume"
    assert pv["metadata"]["labels"] == {"model": "Qwen3-Embedding-0.6B"}
    # The values' claim selects that PV by label.
    assert fleet.models[0].storage is not None
    assert fleet.models[0].storage.match_labels == pv["metadata"]["labels"]


def test_the_order_of_files_does_not_matter_for_object_files() -> None:
    a = load([SEEDS / "000-embedding.yaml", SEEDS / "000-pv.yaml"]).fleet
    b = load([SEEDS / "000-pv.yaml", SEEDS / "000-embedding.yaml"]).fleet
    assert normalized(a) == normalized(b)


# -- golden normalized specs -------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_normalized_spec(case: str) -> None:
    data = normalized(load(GOLDEN_CASES[case]).fleet)
    check_golden(GOLDEN / f"{case}.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def test_spec_check_json_prints_the_golden_spec() -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vfleet",
            "spec",
            "check",
            "--json",
            str(SEEDS / "000-embedding.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data.pop("apiVersion"), data.pop("kind")) == ("vfleet/v1", "Fleet")
    assert data == json.loads((GOLDEN / "000-embedding.json").read_text())
    # stderr: the HAMi warning (gpuMemoryUtilization under a 20% slice), then the summary
    warning, ok = res.stderr.splitlines()
    assert warning.startswith(f"warning: {SEEDS / '000-embedding.yaml'}:23: "), warning
    assert ok == "ok: 1 model(s), 4 replica(s), read as vllm-stack"


def test_every_golden_file_has_a_case() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(GOLDEN_CASES)


# -- what the seeds mean -----------------------------------------------------------------------


def test_seed_000_four_small_embedding_replicas() -> None:
    (m,) = load([SEEDS / "000-embedding.yaml"]).fleet.models
    assert m.name == "qwen3embed"
    assert m.replicas == 4
    assert m.gpu == 0.2
    assert m.gpu_share_pct == 20
    assert m.gpus_needed == 0
    assert m.vllm.gpu_memory_utilization == 0.15
    assert m.task == "embed"
    assert m.served_names == ("Qwen3-Embedding-0.6B",)
    assert m.source.kind == "hf" and m.source.id == "Qwen/Qwen3-Embedding-0.6B"
    assert m.vllm.max_model_len == 8192
    assert m.storage is not None
    assert m.storage.match_labels == {"model": "Qwen3-Embedding-0.6B"}
    assert m.storage.size == "50Gi"
    assert (m.cpu, m.memory) == ("6", "16Gi")
    # vLLM-version-specific flags stay as written; the command builder translates them.
    assert m.vllm.extra_args == ("--disable-log-requests",)


def test_seed_001_deployment_reads_the_vllm_container() -> None:
    (m,) = load([SEEDS / "001-deployment.yaml"]).fleet.models
    assert m.name == "vllm-qwen3-235b"
    assert m.served_names == ("qwen3-235b",)
    assert (m.source.kind, m.source.id, m.source.path) == (
        "pvc",
        "vllm-model-pvc",
        "Qwen/Qwen3-235B-A22B-Instruct-2507",
    )
    assert m.gpu == 8
    assert m.vllm.tensor_parallel_size == 8
    assert m.gpus_needed == 8
    assert m.vllm.gpu_memory_utilization == 0.9
    assert "--port" not in m.vllm.extra_args
    assert m.kubernetes.namespace == "ai-serving"
    assert m.kubernetes.pod_labels == {"app": "vllm-qwen3-235b"}
    assert [v["name"] for v in m.kubernetes.volumes] == ["model-storage"]


def test_seed_004_minimal_values_serve_under_the_model_url() -> None:
    (m,) = load([SEEDS / "004-values-01-minimal-example.yaml"]).fleet.models
    assert m.name == "opt125m"
    assert m.served_names == ("facebook/opt-125m",)
    assert m.source.kind == "hf" and m.source.id == "facebook/opt-125m"
    assert m.replicas == 1
    assert m.gpu == 1


@pytest.mark.parametrize(
    ("name", "tp", "gpu"),
    [
        ("003-t9k-llama-3.3-70b-tp4.yaml", 4, 4),
        ("003-t9k-qwen2.5-72b-bnb.yaml", 2, 2),
        ("003-t9k-qwq-32b-gguf.yaml", 2, 2),
        ("003-t9k-bge-m3.yaml", 1, 1),
    ],
)
def test_t9k_tensor_parallel_comes_from_extra_args(name: str, tp: int, gpu: int) -> None:
    (m,) = load([SEEDS / name]).fleet.models
    assert m.vllm.tensor_parallel_size == tp
    assert m.gpu == gpu
    assert m.gpus_needed == gpu
    assert not any(a.startswith("--tensor-parallel-size") for a in m.vllm.extra_args)


def test_t9k_llama_extra_args_all_lifted() -> None:
    (m,) = load([SEEDS / "003-t9k-llama-3.3-70b-tp4.yaml"]).fleet.models
    v = m.vllm
    assert (v.gpu_memory_utilization, v.max_model_len, v.max_num_seqs) == (0.95, 8192, 64)
    assert v.enforce_eager is True
    assert v.extra_args == ()


def test_t9k_tools_and_bnb_extra_args() -> None:
    (tools,) = load([SEEDS / "003-t9k-mistral-7b-tools.yaml"]).fleet.models
    assert tools.vllm.tool_calling.enabled is True
    assert tools.vllm.tool_calling.parser == "mistral"
    assert tools.vllm.chat_template == "examples/tool_chat_template_mistral.jinja"
    (bnb,) = load([SEEDS / "003-t9k-qwen2.5-72b-bnb.yaml"]).fleet.models
    assert bnb.vllm.quantization == "bitsandbytes"
    assert bnb.vllm.extra_args == ("--load-format=bitsandbytes",)


def test_t9k_pvc_source_and_datacube_source() -> None:
    (pvc,) = load([SEEDS / "003-t9k-bge-m3.yaml"]).fleet.models
    assert (pvc.source.kind, pvc.source.id, pvc.source.path) == ("pvc", "llm", "bge-m3/")
    assert pvc.served_names == ("bge-m3",)
    assert pvc.pooling  # an embedding model by its name
    (hf,) = load([SEEDS / "003-t9k-qwen2.5-7b-instruct-hf.yaml"]).fleet.models
    assert (hf.source.kind, hf.source.id) == ("hf", "Qwen/Qwen2.5-7B-Instruct")
    assert hf.source.endpoint == "https://hf-mirror.com"
    assert hf.autoscaling is not None
    assert (hf.autoscaling.min_replicas, hf.autoscaling.max_replicas) == (1, 3)
    assert hf.autoscaling.metric == "concurrency"
    assert hf.autoscaling.target == 32


def test_tke_pasted_form_equals_the_indented_form() -> None:
    indented = load([SEEDS / "002-tke-e5-mistral.yaml"])
    pasted = load([SEEDS / "002-tke-e5-mistral-as-pasted.yaml"])
    a, b = normalized(indented.fleet), normalized(pasted.fleet)
    # The fleet is named after the file; everything else is the same.
    assert a.pop("name") == "002-tke-e5-mistral"
    assert b.pop("name") == "002-tke-e5-mistral-as-pasted"
    assert a == b
    assert indented.notes == []
    (note,) = pasted.notes
    assert note.startswith(f"note: {SEEDS / '002-tke-e5-mistral-as-pasted.yaml'}:")
    assert "without indentation" in note


def test_tke_values_mean_what_the_chart_runs() -> None:
    fleet = load([SEEDS / "002-tke-e5-mistral.yaml"]).fleet
    (m,) = fleet.models
    assert m.served_names == ("intfloat/e5-mistral-7b-instruct",)
    assert (m.source.kind, m.source.id, m.source.path) == (
        "pvc",
        "ai-model",
        "intfloat/e5-mistral-7b-instruct",
    )
    assert (m.vllm.max_model_len, m.vllm.max_num_seqs, m.vllm.tensor_parallel_size) == (
        2048,
        32,
        1,
    )
    assert m.gpu == 1
    # "--cuda-graph-sizes 1 2 4 ..." is one item in the chart's list: argv words here.
    assert m.vllm.extra_args == (
        "--disable-log-requests",
        "--cuda-graph-sizes",
        *["1", "2", "4", "8", "16", "24", "32"],
    )
    assert [(e.name, e.value) for e in m.env] == [("VLLM_WORKER_MULTIPROC_METHOD", "spawn")]
    assert fleet.router.kubernetes == {"servicePort": 60000, "serviceType": "LoadBalancer"}
    assert fleet.router.api_keys == ()  # apiKey: "" means none


TKE_FULL = """\
model:
  name: "Qwen/Qwen3-8B"
  pvc:
    enabled: false
    name: ""
    path: ""
  local:
    enabled: true
    path: "/data0/Qwen3-8B"
server:
  replicas: 2
  lwsGroupSize: 1
  image: "vllm/vllm-openai:v0.11.1"
  apiKey: "sk-123"
  resources:
    requests:
      cpu: 4
      memory: 32Gi
      nvidia.com/gpu: 2
    limits:
      cpu: 8
      memory: 64Gi
      nvidia.com/gpu: 2
  args:
    tpSize: 2
    ppSize: 1
    epEnabled: false
    maxModelLen: 4096
    maxBatchSize: 16
  extraArgs:
  - --enable-prefix-caching
  - --cuda-graph-sizes 8
  env:
ENV
  service:
    enabled: true
    type: ClusterIP
    port: 8000
labels:
  team: search
podAnnotations:
  note: hello
"""
ENV_ITEMS = '  - name: A\n    value: "1"\n  - name: B\n    value: "two"\n'


@pytest.mark.parametrize("n_env", [1, 2])
def test_tke_values_that_lost_their_indentation_read_like_the_indented_ones(
    tmp_path: Path, n_env: int
) -> None:
    env = "".join(ENV_ITEMS.splitlines(keepends=True)[: 2 * n_env])
    text = TKE_FULL.replace("ENV\n", env)
    indented = load([write(tmp_path, "indented.yaml", text)])
    flat_text = "".join(line.lstrip(" ") for line in text.splitlines(keepends=True))
    flat = load([write(tmp_path, "flat.yaml", flat_text)])
    a, b = normalized(indented.fleet), normalized(flat.fleet)
    assert (a.pop("name"), b.pop("name")) == ("indented", "flat")
    assert a == b
    (m,) = indented.fleet.models
    assert (m.source.kind, m.source.id) == ("local", "/data0/Qwen3-8B")
    assert (m.replicas, m.gpu, m.vllm.tensor_parallel_size) == (2, 2, 2)
    assert [e.name for e in m.env] == ["A", "B"][:n_env]
    assert indented.fleet.router.api_keys == ("sk-123",)


def test_errors_in_the_pasted_tke_form_point_at_the_pasted_line(tmp_path: Path) -> None:
    text = (SEEDS / "002-tke-e5-mistral-as-pasted.yaml").read_text()
    lines = text.splitlines()
    at = lines.index("maxModelLen: 2048")
    lines[at] = "maxModelLen: -5"
    bad = write(tmp_path, "pasted.yaml", "\n".join(lines) + "\n")
    with pytest.raises(SpecError) as info:
        load([bad])
    assert info.value.line == at + 1
    assert "server.args.maxModelLen" in info.value.at


# -- notes and warnings ------------------------------------------------------------------------

VLLM_STACK = """\
servingEngineSpec:
  modelSpec:
  - name: "a"
    modelURL: "org/a"
    fancyKey: 3
  - name: "b"
    enabled: false
    modelURL: "org/b"
  mysteryEngineKey: on
routerSpec:
  routingLogic: kvaware
topLevelOddity:
  x: 1
"""


def test_vllm_stack_unknown_keys_warned_with_file_and_line_and_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "values.yaml", VLLM_STACK)
    loaded = load([path])
    notes = loaded.notes
    assert (
        f"warning: {path}:5: servingEngineSpec.modelSpec[0].fancyKey: "
        "unknown key, kept for Kubernetes as given"
    ) in notes
    assert any(
        n.startswith(f"warning: {path}:9: servingEngineSpec.mysteryEngineKey:") for n in notes
    )
    assert any(n.startswith(f"warning: {path}:12: topLevelOddity:") for n in notes)
    fleet = loaded.fleet
    assert fleet.models[0].kubernetes.chart_values["fancyKey"] == 3
    assert fleet.kubernetes.chart_values["servingEngineSpec"]["mysteryEngineKey"] is True
    assert fleet.kubernetes.chart_values["topLevelOddity"] == {"x": 1}


def test_vllm_stack_disabled_model_is_skipped_with_a_note(tmp_path: Path) -> None:
    path = write(tmp_path, "values.yaml", VLLM_STACK)
    loaded = load([path])
    assert [m.name for m in loaded.fleet.models] == ["a"]
    assert (
        f"note: {path}:6: servingEngineSpec.modelSpec[1]: model 'b' has enabled: false; skipped"
    ) in loaded.notes


def test_vllm_stack_kvaware_routing_is_the_kv_policy(tmp_path: Path) -> None:
    """kvaware routes by the engines' KV events, as vfleet's kv policy does; no note needed."""
    path = write(tmp_path, "values.yaml", VLLM_STACK)
    loaded = load([path])
    assert loaded.fleet.router.policy == "kv"
    assert not [n for n in loaded.notes if "routingLogic" in n]


def test_vllm_stack_unknown_routing_logic_warns_and_keeps_the_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "values.yaml",
        "servingEngineSpec:\n  modelSpec:\n  - name: a\n    modelURL: org/a\n"
        "routerSpec:\n  routingLogic: telepathy\n",
    )
    loaded = load([path])
    assert loaded.fleet.router.policy == "least_load"
    (note,) = loaded.notes
    assert note.startswith(f"warning: {path}:6: routerSpec.routingLogic:")
    assert "'telepathy'" in note


def test_t9k_unknown_server_key_warned_and_left_out(tmp_path: Path) -> None:
    """A key of T9k's chart that vfleet does not read means nothing to vfleet's chart."""
    text = (SEEDS / "003-t9k-bge-m3.yaml").read_text()
    text = text.replace("  model:\n", "  gpuFlavour: h100\n  model:\n", 1)
    path = write(tmp_path, "t9k.yaml", text)
    loaded = load([path])
    line = text.splitlines().index("  gpuFlavour: h100") + 1
    assert (
        f"warning: {path}:{line}: server.gpuFlavour: unknown key, not read by vfleet; left out"
    ) in loaded.notes
    assert "gpuFlavour" not in json.dumps(normalized(loaded.fleet))


def test_native_fleet_with_another_api_version_warns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "fleet.yaml",
        "apiVersion: vfleet/v9\nkind: Fleet\nmodels:\n  - name: m\n    source: org/m\n",
    )
    loaded = load([path])
    (note,) = loaded.notes
    assert note.startswith(f"warning: {path}:1: apiVersion:")
    assert loaded.fleet.name == "fleet"  # from the file name


def test_native_extra_args_are_lifted_into_typed_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "fleet.yaml",
        "models:\n  - name: m\n    source: org/m\n    vllm:\n      maxModelLen: 1024\n"
        "      extraArgs: [-tp, '2', --max-model-len=4096, --port, '9']\n",
    )
    loaded = load([path])
    (m,) = loaded.fleet.models
    assert m.vllm.tensor_parallel_size == 2
    assert m.vllm.max_model_len == 4096  # the argument wins, as vLLM reads the last one
    assert m.vllm.extra_args == ()
    assert any("maxModelLen is 1024 but the arguments say 4096" in n for n in loaded.notes)
    assert any("--port 9 dropped" in n for n in loaded.notes)


def test_deployment_notes_name_dropped_flags_and_kept_objects() -> None:
    path = SEEDS / "001-deployment.yaml"
    notes = load([path]).notes
    args = f"note: {path}:38: spec.template.spec.containers[0].args:"
    assert any(n.startswith(f"{args} --port 8000 dropped") for n in notes)
    assert any("init container 'download-model' kept for Kubernetes" in n for n in notes)
    assert any("PersistentVolumeClaim 'vllm-model-pvc' kept as is" in n for n in notes)


# -- autoscaling from every format --------------------------------------------------------------

SEED_003 = SEEDS / "003-t9k-qwen2.5-7b-instruct-hf.yaml"
KNATIVE_SEED = """\
      autoscaling.knative.dev/metric: "concurrency"
      autoscaling.knative.dev/target: "32"
"""


def t9k_variant(tmp_path: Path, annotations: str, lo: int = 1) -> Path:
    text = SEED_003.read_text()
    assert KNATIVE_SEED in text and "    minReplicas: 1\n" in text
    text = text.replace(KNATIVE_SEED, annotations).replace(
        "    minReplicas: 1\n", f"    minReplicas: {lo}\n"
    )
    return write(tmp_path, "t9k.yaml", text)


def test_seed_003_reads_the_knative_metric_and_target() -> None:
    loaded = load([SEED_003])
    (m,) = loaded.fleet.models
    assert m.autoscaling is not None
    a = m.autoscaling
    assert (a.min_replicas, a.max_replicas, a.metric, a.target) == (1, 3, "concurrency", 32)
    # every annotation is read; the only note is that T9k's initializer has no part to play
    (note,) = loaded.notes
    line = SEED_003.read_text().splitlines().index("initializer:") + 1
    assert note.startswith(f"note: {SEED_003}:{line}: initializer: T9k's initializer"), note


def test_t9k_scale_to_zero_with_every_knative_annotation(tmp_path: Path) -> None:
    path = t9k_variant(
        tmp_path,
        '      autoscaling.knative.dev/metric: "concurrency"\n'
        '      autoscaling.knative.dev/target: "16"\n'
        '      autoscaling.knative.dev/window: "1m30s"\n'
        '      autoscaling.knative.dev/panic-window-percentage: "10.0"\n'
        '      autoscaling.knative.dev/panic-threshold-percentage: "300"\n'
        '      autoscaling.knative.dev/scale-to-zero-pod-retention-period: "45s"\n'
        '      autoscaling.knative.dev/scale-down-delay: "2m"\n'
        '      autoscaling.knative.dev/max-scale-up-rate: "4"\n'
        '      autoscaling.knative.dev/max-scale-down-rate: "3"\n',
        lo=0,
    )
    loaded = load([path])
    (m,) = loaded.fleet.models
    a = m.autoscaling
    assert a is not None
    assert (a.min_replicas, a.max_replicas, a.metric, a.target) == (0, 3, "concurrency", 16)
    assert (a.stable_window_s, a.panic_window_s, a.panic_threshold) == (90, 9, 3)
    assert (a.scale_to_zero_grace_s, a.scale_down_delay_s) == (45, 120)
    assert (a.max_scale_up_rate, a.max_scale_down_rate) == (4, 3)
    assert m.replicas == 1  # what runs before the first decision
    assert [n for n in loaded.notes if ": initializer: " not in n] == []
    auto = normalized(loaded.fleet)["models"][0]["autoscaling"]
    assert auto == {
        "minReplicas": 0,
        "maxReplicas": 3,
        "target": 16.0,
        "stableWindowS": 90.0,
        "panicWindowS": 9.0,
        "panicThreshold": 3.0,
        "scaleDownDelayS": 120.0,
        "scaleToZeroGraceS": 45.0,
        "maxScaleUpRate": 4.0,
        "maxScaleDownRate": 3.0,
    }


def test_t9k_rps_metric(tmp_path: Path) -> None:
    path = t9k_variant(
        tmp_path,
        '      autoscaling.knative.dev/metric: "rps"\n      autoscaling.knative.dev/target: "10"\n',
    )
    (m,) = load([path]).fleet.models
    assert m.autoscaling is not None
    assert (m.autoscaling.metric, m.autoscaling.target) == ("rps", 10)


def test_t9k_annotations_vfleet_does_not_read_are_noted(tmp_path: Path) -> None:
    path = t9k_variant(
        tmp_path,
        '      autoscaling.knative.dev/metric: "cpu"\n'
        '      autoscaling.knative.dev/initial-scale: "2"\n',
    )
    loaded = load([path])
    assert loaded.fleet.models[0].autoscaling is not None
    assert loaded.fleet.models[0].autoscaling.metric == "concurrency"
    text = "\n".join(loaded.notes)
    assert "metric 'cpu' has no vfleet equivalent; scaling on concurrency" in text
    assert "autoscaling.knative.dev/initial-scale: annotation not read by vfleet" in text


VLLM_STACK_KEDA = """\
servingEngineSpec:
  modelSpec:
  - name: chat
    modelURL: org/chat
    keda:
      enabled: true
      minReplicaCount: MIN
      maxReplicaCount: 4
      cooldownPeriod: 120
      advanced:
        horizontalPodAutoscalerConfig:
          behavior:
            scaleDown:
              stabilizationWindowSeconds: 90
      triggers:
      - type: prometheus
        metadata:
          query: sum(vllm:num_requests_waiting)
          threshold: "5"
"""


@pytest.mark.parametrize("lo", [0, 1])
def test_vllm_stack_keda_bounds_cooldown_and_scale_down_window(tmp_path: Path, lo: int) -> None:
    path = write(tmp_path, "values.yaml", VLLM_STACK_KEDA.replace("MIN", str(lo)))
    (m,) = load([path]).fleet.models
    a = m.autoscaling
    assert a is not None
    assert (a.min_replicas, a.max_replicas, a.metric, a.target) == (lo, 4, "waiting", 5)
    assert a.scale_down_delay_s == 90
    # cooldownPeriod is KEDA's wait before scaling to zero: it means nothing above zero.
    assert a.scale_to_zero_grace_s == (120 if lo == 0 else 30)
    assert (
        m.kubernetes.chart_values["keda"]["cooldownPeriod"] == 120
    )  # the chart still gets KEDA's values


DEPLOYMENT = (SEEDS / "001-deployment.yaml").read_text().split("\n---\n")[0]
HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: qwen-hpa
  namespace: ai-serving
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: vllm-qwen3-235b
  minReplicas: 2
  maxReplicas: 6
  metrics:
METRICS
"""
PODS_METRIC = """\
  - type: Pods
    pods:
      metric:
        name: NAME
      target:
        type: AverageValue
        averageValue: VALUE
"""
CPU_METRIC = """\
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 80
"""


def hpa(metrics: str) -> str:
    return HPA.replace("METRICS\n", metrics)


def pods(name: str, value: str) -> str:
    return PODS_METRIC.replace("NAME", name).replace("VALUE", value)


@pytest.mark.parametrize(
    ("name", "value", "metric", "target"),
    [
        ("vllm:num_requests_waiting", '"5"', "waiting", 5),
        ("vllm:num_requests_running", "32", "concurrency", 32),
        ("vllm:kv_cache_usage_perc", "800m", "kv_cache", 0.8),
        ("vllm:gpu_cache_usage_perc", '"0.7"', "kv_cache", 0.7),
    ],
)
@pytest.mark.parametrize("hpa_first", [False, True])
def test_manifests_hpa_becomes_the_models_autoscaling(
    tmp_path: Path, name: str, value: str, metric: str, target: float, hpa_first: bool
) -> None:
    docs = [DEPLOYMENT, hpa(pods(name, value))]
    text = "\n---\n".join(reversed(docs) if hpa_first else docs)
    path = write(tmp_path, "manifests.yaml", text)
    loaded = load([path])
    (m,) = loaded.fleet.models
    a = m.autoscaling
    assert a is not None
    assert (a.min_replicas, a.max_replicas, a.metric, a.target) == (2, 6, metric, target)
    assert a.scale_down_delay_s == 300  # the HPA's default stabilization window
    assert not loaded.fleet.kubernetes.extra_objects  # vfleet's chart scales it now
    assert any(
        "HorizontalPodAutoscaler 'qwen-hpa' becomes the autoscaling of vllm-qwen3-235b "
        f"(2..6 on {metric})" in n
        for n in loaded.notes
    )


def test_manifests_hpa_on_cpu_only_is_kept_for_kubernetes(tmp_path: Path) -> None:
    path = write(tmp_path, "manifests.yaml", f"{DEPLOYMENT}\n---\n{hpa(CPU_METRIC)}")
    loaded = load([path])
    (m,) = loaded.fleet.models
    assert m.autoscaling is None
    (kept,) = loaded.fleet.kubernetes.extra_objects
    assert kept["kind"] == "HorizontalPodAutoscaler"
    assert any(
        "HorizontalPodAutoscaler 'qwen-hpa' scales on cpu, which vfleet does not read; "
        "kept as is for Kubernetes" in n
        for n in loaded.notes
    )


def test_manifests_hpa_mixing_cpu_and_a_vllm_metric(tmp_path: Path) -> None:
    metrics = CPU_METRIC + pods("vllm:num_requests_waiting", "3")
    text = f"{DEPLOYMENT}\n---\n{hpa(metrics)}".replace(
        "  minReplicas: 2\n",
        "  minReplicas: 2\n  behavior: {scaleDown: {stabilizationWindowSeconds: 30}}\n",
    )
    loaded = load([write(tmp_path, "manifests.yaml", text)])
    (m,) = loaded.fleet.models
    assert m.autoscaling is not None
    assert (m.autoscaling.metric, m.autoscaling.target) == ("waiting", 3)
    assert m.autoscaling.scale_down_delay_s == 30
    assert any("metric cpu not carried over: vfleet does not read it" in n for n in loaded.notes)


def test_manifests_hpa_of_another_workload_or_v1_is_kept(tmp_path: Path) -> None:
    other = hpa(pods("vllm:num_requests_waiting", "3")).replace(
        "name: vllm-qwen3-235b", "name: somebody-else"
    )
    v1 = (
        "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: v1}\n"
        "spec:\n  scaleTargetRef: {kind: Deployment, name: vllm-qwen3-235b}\n"
        "  maxReplicas: 3\n  targetCPUUtilizationPercentage: 50\n"
    )
    path = write(tmp_path, "manifests.yaml", f"{DEPLOYMENT}\n---\n{other}\n---\n{v1}")
    loaded = load([path])
    assert loaded.fleet.models[0].autoscaling is None
    kept = loaded.fleet.kubernetes.extra_objects
    assert [o["metadata"]["name"] for o in kept] == ["qwen-hpa", "v1"]


def test_manifests_hpa_with_a_bad_target_names_the_metric(tmp_path: Path) -> None:
    text = f"{DEPLOYMENT}\n---\n{hpa(pods('vllm:num_requests_waiting', 'lots'))}"
    path = write(tmp_path, "manifests.yaml", text)
    with pytest.raises(SpecError) as info:
        load([path])
    assert info.value.at == "spec.metrics[0]"
    assert "target 'lots' is not a quantity" in info.value.message


NATIVE_ELASTIC = """\
models:
  - name: chat
    source: org/chat
    autoscaling:
      minReplicas: 0
      maxReplicas: 4
      metric: rps
      target: 5
      stableWindowS: 30
      panicWindowS: 3
      panicThreshold: 3
      scaleDownDelayS: 60
      scaleToZeroGraceS: 120
      maxScaleUpRate: 2
      maxScaleDownRate: 4
      ttftP90S: 1.5
      kvUsageTarget: 0.85
    hold: {timeoutS: 60, maxQueued: 50}
"""


def test_spec_check_prints_the_new_autoscaling_and_hold_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet.yaml", NATIVE_ELASTIC)
    res = subprocess.run(
        [sys.executable, "-m", "vfleet", "spec", "check", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    (m,) = json.loads(res.stdout)["models"]
    assert m["hold"] == {"timeoutS": 60.0, "maxQueued": 50}
    assert m["autoscaling"] == {
        "minReplicas": 0,
        "maxReplicas": 4,
        "metric": "rps",
        "target": 5.0,
        "stableWindowS": 30.0,
        "panicWindowS": 3.0,
        "panicThreshold": 3.0,
        "scaleDownDelayS": 60.0,
        "scaleToZeroGraceS": 120.0,
        "maxScaleUpRate": 2.0,
        "maxScaleDownRate": 4.0,
        "ttftP90S": 1.5,
        "kvUsageTarget": 0.85,
    }


def test_spec_schema_shows_the_new_fields() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "vfleet", "spec", "schema"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    defs = json.loads(res.stdout)["$defs"]
    auto = defs["Autoscaling"]["properties"]
    for key in (
        "stableWindowS",
        "panicWindowS",
        "panicThreshold",
        "scaleDownDelayS",
        "scaleToZeroGraceS",
        "maxScaleUpRate",
        "maxScaleDownRate",
        "ttftP90S",
        "kvUsageTarget",
    ):
        assert key in auto, key
    assert "rps" in auto["metric"]["enum"]
    assert set(defs["Hold"]["properties"]) == {"timeoutS", "maxQueued"}
    assert "hold" in defs["Model"]["properties"]
