"""`vfleet.kube.values` (fleet -> chart values, pure) and the `vfleet k8s` commands: what each
input format becomes, that the values depend only on the typed fleet (never on the format it was
read from), and that every problem ends in one line with exit status 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from test_chart_render import CASES, CHART, NAMESPACE, RELEASE, SEEDS, fleet_case, raw_case
from vfleet.cli import main
from vfleet.engines.rulefile import load_rules
from vfleet.fleetspec.load import load
from vfleet.kube import render as helm
from vfleet.kube.commands import default_release
from vfleet.kube.values import chart_values, deep_merge, gpu_request, namespace_of, split_image


def _fleet(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "fleet.yaml"
    path.write_text(text, encoding="utf-8")
    return load([path]).fleet


def _engine(case: Any) -> dict[str, Any]:
    """The (first) engine Deployment's pod spec."""
    deploys = [d for d in case.kind("Deployment") if d["metadata"]["labels"].get("model")]
    return deploys[0]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _render(values: dict[str, Any]) -> helm.Rendered:
    return helm.render(values, release=RELEASE, namespace=NAMESPACE)


def test_split_image() -> None:
    assert split_image("vllm/vllm-openai:v0.10.1") == ("vllm/vllm-openai", "v0.10.1")
    assert split_image("registry:5000/team/vllm") == ("registry:5000/team/vllm", "")
    assert split_image("registry:5000/team/vllm:latest") == ("registry:5000/team/vllm", "latest")


def test_gpu_request_is_whole_gpus_or_a_share(tmp_path: Path) -> None:
    fleet = _fleet(
        tmp_path,
        """
models:
  - {name: tp, source: a/b, gpu: 1, vllm: {tensorParallelSize: 4}}
  - {name: share, source: a/c, gpu: 0.2}
  - {name: cpu, source: a/d, gpu: 0}
""",
    )
    assert [gpu_request(m) for m in fleet.models] == [4, 0.2, 0]


def test_deep_merge_keeps_both_sides() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [2], "e": 3}}) == {"a": {"b": 1, "c": [2], "e": 3}, "d": 1}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


def test_default_release_needs_a_leading_letter() -> None:
    assert default_release("quickstart") == "quickstart"
    assert default_release("000-embedding") == "vfleet"


def test_t9k_datacube_is_a_download_job_into_the_sub_path() -> None:
    case = fleet_case("003-t9k-qwen2.5-7b-instruct-hf")
    spec = case.values["servingEngineSpec"]["modelSpec"][0]
    assert spec["download"] == {"mode": "job", "dir": "Qwen2.5-7B-Instruct"}
    job = case.kind("Job")[0]
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd == [
        "vfleet",
        "download",
        "hf://Qwen/Qwen2.5-7B-Instruct",
        "--to",
        "/data/Qwen2.5-7B-Instruct",
        "--endpoint",
        "https://hf-mirror.com",
    ]
    pod = _engine(case)
    assert pod["initContainers"][0]["command"][-2:] == ["--wait-all", "1"]
    assert pod["containers"][0]["command"][2] == "/data/Qwen2.5-7B-Instruct"
    scaled = case.kind("ScaledObject")[0]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 3)
    notes = load(CASES["003-t9k-qwen2.5-7b-instruct-hf"]).notes
    assert any(": initializer: T9k's initializer" in n for n in notes), notes


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_depend_only_on_the_typed_fleet(tmp_path: Path, name: str) -> None:
    """The fleet `vfleet spec check` prints, read back as a fleet file, deploys the same: what
    each format meant is in typed fields, so the renderer needs no format of its own."""
    fleet = load(CASES[name]).fleet
    data = fleet.model_dump(by_alias=True, exclude_unset=True, mode="json")
    data.pop("importedFrom", None)
    again = _fleet(tmp_path, yaml.safe_dump(data, sort_keys=False))
    assert again.imported_from is None
    rules = load_rules(CHART)
    assert (
        chart_values(again, engine_rules=rules).values
        == chart_values(fleet, engine_rules=rules).values
    )


def test_typed_kubernetes_settings_become_chart_keys(tmp_path: Path) -> None:
    fleet = _fleet(
        tmp_path,
        """
models:
  - name: big
    source: /srv/models/big
    kubernetes:
      namespace: team-a
      labels: {team: a}
      podLabels: {tier: gpu}
      annotations: {note: x}
      podAnnotations: {scrape: "true"}
      nodeSelector: {gpu: h100}
      tolerations: [{key: gpu, operator: Exists}]
      affinity: {nodeAffinity: {}}
      volumes: [{name: shm, emptyDir: {medium: Memory}}]
      volumeMounts: [{name: shm, mountPath: /dev/shm}]
      initContainers: [{name: warm, image: busybox}]
      securityContext: {runAsUser: 1000}
      imagePullPolicy: Always
      imagePullSecret: regcred
      lwsGroupSize: 2
      download: {mode: init, dir: big}
      chartValues: {shmSize: 20Gi, vllmConfig: {v0: 1}}
  - name: image-path
    source: /models/baked-in
    kubernetes: {hostPath: false}
""",
    )
    values = chart_values(fleet, engine_rules=load_rules(CHART)).values
    big, baked = values["servingEngineSpec"]["modelSpec"]
    expected = {
        "labels": {"team": "a"},
        "podLabels": {"tier": "gpu"},
        "annotations": {"note": "x"},
        "podAnnotations": {"scrape": "true"},
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}},
        "extraVolumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
        "extraVolumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
        "extraInitContainers": [{"name": "warm", "image": "busybox"}],
        "containerSecurityContext": {"runAsUser": 1000},
        "imagePullPolicy": "Always",
        "imagePullSecret": "regcred",
        "lwsGroupSize": 2,
        "download": {"mode": "init", "dir": "big"},
        "shmSize": "20Gi",
    }
    assert {k: big[k] for k in expected} == expected
    assert big["vllmConfig"] == {"v0": 1}
    assert big["source"]["hostPath"] is True  # a directory on the node
    assert "hostPath" not in baked["source"]  # a path the container has
    assert namespace_of(fleet) == "team-a"


def test_vllm_stack_local_model_url_is_a_path_in_the_container(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("servingEngineSpec:\n  modelSpec:\n  - {name: a, modelURL: /models/a}\n")
    fleet = load([path]).fleet
    assert fleet.models[0].kubernetes.host_path is False
    spec = chart_values(fleet, engine_rules=load_rules(CHART)).values["servingEngineSpec"]
    spec = spec["modelSpec"][0]
    assert spec["source"] == {"kind": "local", "id": "/models/a"}


def test_tke_labels_go_on_the_workload_and_the_pods(tmp_path: Path) -> None:
    text = (SEEDS / "002-tke-e5-mistral.yaml").read_text(encoding="utf-8")
    text = text.replace("labels: {}", "labels: {team: search}").replace(
        "lwsGroupSize: 1", "lwsGroupSize: 2"
    )
    path = tmp_path / "tke.yaml"
    path.write_text(text, encoding="utf-8")
    values = chart_values(load([path]).fleet, engine_rules=load_rules(CHART)).values
    spec = values["servingEngineSpec"]["modelSpec"][0]
    assert spec["labels"] == spec["podLabels"] == {"team": "search"}
    assert (spec["lwsGroupSize"], spec["imagePullPolicy"]) == (2, "IfNotPresent")


def test_t9k_existing_claim_serves_the_sub_path() -> None:
    case = fleet_case("003-t9k-qwq-32b-gguf")
    pod = _engine(case)
    assert pod["containers"][0]["command"][2] == "/data/QwQ-32B-GGUF/qwq-32b-q5_k_m.gguf"
    assert pod["volumes"][0] == {"name": "model", "persistentVolumeClaim": {"claimName": "llm"}}
    assert not case.kind("PersistentVolumeClaim") and not case.kind("Job")


def test_tke_values_keep_their_service_and_version() -> None:
    case = fleet_case("002-tke-e5-mistral")
    svc = case.one("Service", f"{RELEASE}-router-service")["spec"]
    assert svc["type"] == "LoadBalancer" and svc["ports"][0]["port"] == 60000
    engine = _engine(case)["containers"][0]
    assert engine["image"] == "ccr.ccs.tencentyun.com/tke-ai-playbook/vllm-openai:v0.10.1-20250801"
    assert engine["command"][2] == "/data/intfloat/e5-mistral-7b-instruct"


def test_manifests_keep_their_init_container_and_objects() -> None:
    case = fleet_case("001-deployment+objects")
    pod = _engine(case)
    assert [c["name"] for c in pod["initContainers"]] == ["download-model"]
    assert pod["containers"][0]["command"][2] == "/data/Qwen/Qwen3-235B-A22B-Instruct-2507"
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 8
    kinds = {
        o["kind"] for o in case.rendered.objects if o["metadata"].get("namespace") == "ai-serving"
    }
    assert kinds == {"PersistentVolumeClaim", "Service", "Ingress"}


def test_api_keys_policies_and_limits(tmp_path: Path) -> None:
    case = fleet_case("features-fleet")
    assert case.values["servingEngineSpec"]["vllmApiKey"] == "sk-a,sk-b"
    secret = case.one("Secret", f"{RELEASE}-secrets")
    assert set(secret["data"]) == {"vllmApiKey"}
    router = case.one("Deployment", f"{RELEASE}-deployment-router")["spec"]["template"]["spec"]
    env = router["containers"][0]["env"]
    ref = {"secretKeyRef": {"name": f"{RELEASE}-secrets", "key": "vllmApiKey"}}
    assert {"name": "VFLEET_API_KEYS", "valueFrom": ref} in env
    args = router["containers"][0]["args"]
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--model-policy"]
    assert pairs == ["Qwen/Qwen3-8B=prefix", "qwen=prefix"]
    assert args[args.index("--token-limit") + 1] == "100000"


def test_scale_to_zero_and_unbounded() -> None:
    case = fleet_case("features-fleet")
    scaled = case.one("ScaledObject", f"{RELEASE}-chat-scaledobject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 1000)
    assert [t["type"] for t in scaled["triggers"]] == ["external-push"]  # the router wakes it
    meta = scaled["triggers"][0]["metadata"]
    expected = ("Qwen/Qwen3-8B,qwen,sql", "concurrency", "16")
    assert (meta["models"], meta["metric"], meta["target"]) == expected
    assert scaled["cooldownPeriod"] == 90  # scaleToZeroGraceS
    deploy = case.one("Deployment", f"{RELEASE}-chat-deployment-vllm")
    assert "replicas" not in deploy["spec"]  # the ScaledObject owns it


def test_min_equal_max_is_a_fixed_size() -> None:
    case = fleet_case("003-t9k-deepseek-r1-distill-qwen-7b")
    assert not case.kind("ScaledObject")
    assert case.kind("Deployment")[0]["spec"]["replicas"] == 1


def test_features_values_objects() -> None:
    case = raw_case("features-values")
    lws = case.one("LeaderWorkerSet", f"{RELEASE}-big-lws-vllm")["spec"]
    assert lws["leaderWorkerTemplate"]["size"] == 2
    job = case.kind("Job")
    big = next(j for j in job if j["metadata"]["labels"]["model"] == "big")["spec"]
    assert (big["completions"], big["parallelism"], big["completionMode"]) == (3, 3, "Indexed")
    env = big["template"]["spec"]["containers"][0]["env"]
    assert {"name": "JOB_COMPLETION_TOTAL", "value": "3"} in env
    anti = big["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert (
        anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"]
        == "kubernetes.io/hostname"
    )
    s3 = case.one("Deployment", f"{RELEASE}-s3-embed-deployment-vllm")["spec"]["template"]["spec"]
    init = s3["initContainers"][0]
    assert init["command"][:3] == ["vfleet", "download", "s3://models/bge-m3"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "model", "emptyDir": {}} in s3["volumes"]
    chat = case.one("Deployment", f"{RELEASE}-chat-deployment-vllm")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in chat["containers"][0]["env"]}
    assert env["VLLM_USE_MODELSCOPE"]["value"] == "True"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "hf_token_chat"
    argv = chat["containers"][0]["command"]
    assert argv[argv.index("--chat-template") + 1] == "/templates/tool.jinja"
    assert argv[argv.index("--revision") + 1] == "v1.0.0"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.45"  # 0.9 x 50%, time-slicing
    assert case.one("HorizontalPodAutoscaler", f"{RELEASE}-chat-hpa")["spec"]["maxReplicas"] == 4
    assert {o["metadata"]["name"] for o in case.kind("ServiceMonitor")} == {
        f"{RELEASE}-engine-servicemonitor",
        f"{RELEASE}-router-servicemonitor",
    }
    pdbs = {o["metadata"]["name"] for o in case.kind("PodDisruptionBudget")}
    assert f"{RELEASE}-git-model-pdb-vllm" not in pdbs and f"{RELEASE}-big-pdb-vllm" in pdbs
    dash = case.one("ConfigMap", f"{RELEASE}-grafana-vfleet")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert yaml.safe_load(dash["data"]["vfleet.json"])["title"] == "vfleet"
    assert case.one("ConfigMap", f"{RELEASE}-extra")["data"] == {"hello": "world"}
    ingress = case.one("Ingress", f"{RELEASE}-ingress-router")["spec"]
    assert (
        ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        == f"{RELEASE}-router-service"
    )
    assert "Not used by vfleet" not in case.rendered.notes


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"modelSpec": [{"name": "a", "modelURL": "x", "requestGPU": 1.5}]},
            "whole number of GPUs",
        ),
        (
            {"modelSpec": [{"name": "a", "modelURL": "s3://b/m"}], "download": {"mode": "engine"}},
            "vLLM cannot fetch s3://b/m itself",
        ),
        (
            {"modelSpec": [{"name": "a", "modelURL": "x", "download": {"mode": "job"}}]},
            "needs a shared volume",
        ),
        ({"modelSpec": [{"name": "a", "modelURL": "x", "requestGPU": 9}]}, "do not split evenly"),
        (
            {
                "modelSpec": [
                    {
                        "name": "a",
                        "modelURL": "x",
                        "pvcStorage": "1Gi",
                        "download": {"mode": "job", "shards": 2},
                    }
                ]
            },
            "ReadWriteMany",
        ),
        (
            {
                "modelSpec": [
                    {
                        "name": "a",
                        "modelURL": "x",
                        "autoscaling": {"minReplicas": 0, "provider": "hpa"},
                    }
                ]
            },
            "needs autoscaling.provider keda",
        ),
        ({"modelSpec": [{"name": "A_b", "modelURL": "x"}]}, "does not match pattern"),
    ],
)
def test_chart_refuses_what_cannot_work(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.KubeError) as err:
        _render({"servingEngineSpec": values})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_render_to_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "k8s",
        "render",
        "-f",
        str(SEEDS / "000-pv.yaml"),
        "-f",
        str(SEEDS / "000-embedding.yaml"),
        "-o",
        str(out),
        "--set",
        "routerSpec.replicaCount=3",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files[0] == "01-serviceaccount-vfleet-router-service-account.yaml"
    assert files[-1] == "10-pod-vfleet-test-router.yaml"
    assert "09-deployment-vfleet-qwen3embed-deployment-vllm.yaml" in files
    router = yaml.safe_load((out / next(f for f in files if "deployment-router" in f)).read_text())
    assert router["spec"]["replicas"] == 3 and router["metadata"]["namespace"] == "default"
    assert f"wrote {len(files)} objects" in result.stderr
    assert "PersistentVolume 'test-vllm-pv' kept as is" in result.stderr


def test_render_uses_the_namespace_the_manifests_name() -> None:
    result = CliRunner().invoke(main, ["k8s", "render", "-f", str(SEEDS / "001-deployment.yaml")])
    assert result.exit_code == 0, result.output
    ns = {d["metadata"].get("namespace") for d in yaml.safe_load_all(result.stdout) if d}
    assert ns == {"ai-serving"}


def test_values_only(tmp_path: Path) -> None:
    args = ["k8s", "render", "-f", str(SEEDS / "000-embedding.yaml"), "--values-only"]
    result = CliRunner().invoke(main, args)
    values = yaml.safe_load(result.stdout)
    assert values["servingEngineSpec"]["modelSpec"][0]["requestGPU"] == 0.2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "-f", "nope.yaml"], "nope.yaml: no such file"),
        (["render", "-f", str(SEEDS / "000-pv.yaml")], "no models here"),
        (
            [
                "render",
                "-f",
                str(SEEDS / "000-embedding.yaml"),
                "--set",
                "servingEngineSpec.download.mode=bogus",
            ],
            "value must be one of",
        ),
        (["render", "-f", str(SEEDS / "000-embedding.yaml"), "--release", "Bad_Name"], "Bad_Name"),
        (
            ["render", "-f", str(SEEDS / "000-embedding.yaml"), "--chart", "/nonexistent"],
            "not a Helm chart",
        ),
    ],
)
def test_errors_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["k8s", *args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["status", "vllm", "-n", "llm"],
        ["uninstall", "vllm"],
        ["install", "-f", str(SEEDS / "000-embedding.yaml")],
        ["upgrade", "-f", str(SEEDS / "000-embedding.yaml"), "--wait"],
    ],
)
def test_cluster_commands_without_a_cluster(tmp_path: Path, args: list[str]) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    result = CliRunner().invoke(main, ["k8s", *args, "--kubeconfig", str(config)])
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: kubernetes cluster unreachable"), result.stderr
