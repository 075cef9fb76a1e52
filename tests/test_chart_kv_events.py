"""KV-cache events on Kubernetes: the chart turns on vLLM's publisher for the engines of
generating models whose router policy is `kv`, says where it is (pod annotation and a named
container port) and lets only the router reach it; the router's discovery reads that back.

Rendered with the real Helm SDK, validated against Kubernetes' strict schemas, and compared
with the command line Python builds (`serve_command(..., kv_events_config=...)`), so `vfleet up`
and the chart write the same flag from engine-rules.yaml.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml

from test_chart_agree import engine_argv, engine_container, image_version, model_ref, model_spec
from test_chart_render import CHART, NAMESPACE, RELEASE, Case
from test_chart_validate import VERSIONS, _builtin, _errors, _pod_templates, _validator
from vfleet.engines.router import kv_event_models
from vfleet.engines.rulefile import load_rules
from vfleet.engines.rules import RulesError, data_parallel_size, parse
from vfleet.engines.vllm import serve_command
from vfleet.fleetspec.load import load
from vfleet.kube import render as helm
from vfleet.kube.values import chart_values
from vfleet.router.kubepods import PodRules, pod_endpoint

RULES = load_rules(CHART)
KV = RULES.kv_events
ANNOTATION = "vfleet.io/kv-events-port"
RANKS = "vfleet.io/kv-events-ranks"
HAND_WRITTEN = '{"enable_kv_cache_events":true,"endpoint":"tcp://*:6000"}'

FLEET = f"""\
name: kvfleet
router:
  policy: kv
  modelPolicies: {{plain: least_load}}
models:
  - name: chat
    servedNames: [Qwen/Qwen3-8B, qwen]
    source: hf://Qwen/Qwen3-8B
    gpu: 1
    vllm:
      extraArgs: ["--max-num-seqs", "64", "--kv-events-config", {json.dumps(HAND_WRITTEN)}]
  - name: big
    source: hf://Qwen/Qwen2.5-72B-Instruct
    gpu: 16
    vllm: {{tensorParallelSize: 8, pipelineParallelSize: 2}}
  - name: embed
    source: hf://BAAI/bge-m3
    task: embed
    gpu: 0.25
  - name: plain
    source: hf://org/plain
    gpu: 1
  - name: toy
    engine: sim
    source: hf://org/toy
  - name: wide
    source: hf://org/wide
    gpu: 2
    vllm:
      extraArgs: ["--data-parallel-size", "2"]
"""
PUBLISHING = ("chat", "big", "toy", "wide")
SILENT = ("embed", "plain")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    path = tmp_path_factory.mktemp("kv") / "kv-fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    fleet = load([path]).fleet
    values = chart_values(fleet, engine_rules=RULES).values
    values["servingEngineSpec"]["networkPolicy"] = {"enabled": True}
    return Case("kv", fleet, values, helm.render(values, release=RELEASE, namespace=NAMESPACE))


def pod_template(case: Case, model: str) -> dict[str, Any]:
    """The serving pod template of a model (a LeaderWorkerSet's leader)."""
    for obj in case.rendered.objects:
        labels = obj["metadata"].get("labels") or {}
        if labels.get("model") != model or labels.get("app.kubernetes.io/component") != "engine":
            continue
        if obj["kind"] == "Deployment":
            return obj["spec"]["template"]  # type: ignore[no-any-return]
        if obj["kind"] == "LeaderWorkerSet":
            return obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]  # type: ignore[no-any-return]
    raise AssertionError(f"no engine pod for {model}")


def kv_config(argv: list[str]) -> dict[str, Any]:
    assert argv.count(KV.flag) == 1, argv
    assert argv[-2] == KV.flag, "the flag goes last"
    return json.loads(argv[-1])  # type: ignore[no-any-return]


def test_the_python_side_picks_the_same_models(case: Case) -> None:
    assert case.fleet is not None
    assert kv_event_models(case.fleet, KV.policies) == frozenset(PUBLISHING)


def test_publishing_engines_bind_the_rules_port_and_say_so(case: Case) -> None:
    for model in PUBLISHING:
        pod = pod_template(case, model)
        container = pod["spec"]["containers"][0]
        argv = engine_argv(container) if model != "toy" else container["command"]
        assert kv_config(argv) == {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{KV.port}",
            "replay_endpoint": f"tcp://*:{KV.port + 100}",  # where the router looks for it
        }, model
        annotations = pod["metadata"]["annotations"]
        assert annotations[ANNOTATION] == str(KV.port)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        want = {"http": 8000, "kv-events": KV.port, "kv-replay": KV.replay_port(KV.port)}
        if model == "wide":  # two data-parallel ranks: vLLM binds rank 1's sockets one up
            want |= {"kv-events-1": KV.port + 1, "kv-replay-1": KV.port + 101}
            assert annotations[RANKS] == "2"
        else:
            assert RANKS not in annotations
        assert ports == want, model


@pytest.mark.parametrize(
    ("args", "ranks"),
    [
        ([], 1),
        (["--data-parallel-size", "4"], 4),
        (["-dp", "3", "--max-num-seqs", "8"], 3),
        (["--data-parallel-size=2"], 2),
        (["--data_parallel_size", "5"], 5),
        (["--data-parallel-size", "2", "-dp", "6"], 6),  # the last one, as vLLM's parser
        (["--data-parallel-size", "x"], 1),
        (["--data-parallel-size"], 1),
        (["--data-parallel-size-local", "2"], 1),
    ],
)
def test_the_data_parallel_size_is_read_from_the_flags(args: list[str], ranks: int) -> None:
    assert data_parallel_size(args) == ranks
    publishers, replays = KV.ports(KV.port, ranks)
    assert list(publishers) == [KV.port + r for r in range(ranks)]
    assert list(replays) == [KV.port + 100 + r for r in range(ranks)]


def test_the_chart_reads_the_data_parallel_size_as_python_does() -> None:
    """Each spelling rendered by Helm gives the pod the ports `KV.ports` says."""
    for args in (["-dp", "3"], ["--data-parallel-size=4"], ["--data-parallel-size", "x"]):
        values: dict[str, Any] = {
            "servingEngineSpec": {
                "modelSpec": [
                    {
                        "name": "m",
                        "modelURL": "org/m",
                        "requestGPU": 1,
                        "vllmConfig": {"extraArgs": args},
                    }
                ]
            },
            "routerSpec": {"policy": "kv"},
        }
        rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE)
        pod = pod_template(Case("dp", None, values, rendered), "m")
        ports = {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]} - {8000}
        publishers, replays = KV.ports(KV.port, data_parallel_size(args))
        assert ports == {*publishers, *replays}, args


def test_other_engines_publish_nothing(case: Case) -> None:
    for model in SILENT:
        pod = pod_template(case, model)
        container = pod["spec"]["containers"][0]
        assert KV.flag not in engine_argv(container)
        assert ANNOTATION not in pod["metadata"]["annotations"]
        assert [p["name"] for p in container["ports"]] == ["http"]


def test_lws_workers_carry_no_kv_port(case: Case) -> None:
    (lws,) = case.kind("LeaderWorkerSet")
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    assert ANNOTATION not in worker["metadata"]["annotations"]
    assert "ports" not in worker["spec"]["containers"][0]


def test_chart_line_is_serve_command_with_the_kv_port(case: Case) -> None:
    """The hand-written config in chat's extraArgs is replaced on both sides alike."""
    assert case.fleet is not None
    for model in case.fleet.models:
        if case.fleet.engine_of(model) != "vllm":
            continue
        argv = engine_argv(engine_container(case, model.name))
        spec = model_spec(case.values, model.name)
        publishes = model.name in PUBLISHING
        config = KV.config(KV.tcp(KV.port), KV.tcp(KV.replay_port(KV.port))) if publishes else None
        gmu = RULES.share_memory(model.gpu_share_pct, sliced=True) if model.gpu_share_pct else None
        want = serve_command(
            model,
            model_ref(model, spec),
            "0.0.0.0",
            8000,
            image_version(model),
            gmu,
            engine_rules=RULES,
            kv_events_config=config,
        )
        assert argv == want.argv, model.name
        assert HAND_WRITTEN not in argv
        if model.name == "chat":
            assert want.notices == [f"{KV.flag} replaced: the router reads this engine's KV events"]


def test_router_discovery_finds_the_publisher(case: Case) -> None:
    """A running pod made from the rendered template, as the API server would list it."""
    for model, ip in (("chat", "10.1.2.3"), ("plain", "10.1.2.4"), ("big", "fd00::7")):
        pod = copy.deepcopy(pod_template(case, model))
        pod["metadata"].update({"namespace": NAMESPACE, "name": f"{model}-0"})
        pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        ep = pod_endpoint(pod, PodRules())
        assert ep is not None
        host = f"[{ip}]" if ":" in ip else ip
        assert ep.url == f"http://{host}:8000"
        assert ep.kv_events == (None if model in SILENT else f"tcp://{host}:{KV.port}")


def test_only_the_router_reaches_the_publishers(case: Case) -> None:
    (policy,) = case.kind("NetworkPolicy")
    router_rule, *others = policy["spec"]["ingress"]
    assert router_rule["ports"] == [
        {"port": "http", "protocol": "TCP"},
        {"port": "kv-events", "protocol": "TCP"},
        {"port": "kv-replay", "protocol": "TCP"},
        {"port": "kv-events-1", "protocol": "TCP"},  # wide's rank 1
        {"port": "kv-replay-1", "protocol": "TCP"},
    ]
    components = router_rule["from"][0]["podSelector"]["matchLabels"]
    assert components["app.kubernetes.io/component"] == "router"
    for rule in others:  # the LeaderWorkerSet's own pods: any port, among themselves
        assert "ports" not in rule


def test_router_runs_the_kv_policy(case: Case) -> None:
    router = case.one("Deployment", f"{RELEASE}-deployment-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--policy") + 1] == "kv"
    policies = [args[i + 1] for i, a in enumerate(args) if a == "--model-policy"]
    assert policies == ["plain=least_load"]


def test_every_object_is_valid_kubernetes(case: Case) -> None:
    objects = [o for o in case.rendered.objects if _builtin(o)]
    objects += [t for o in case.kind("LeaderWorkerSet") for t in _pod_templates(o)]
    assert len(objects) > 5
    for version in VERSIONS:
        for obj in objects:
            validator = _validator(version, obj["kind"], obj["apiVersion"])
            assert validator is not None, f"{obj['kind']} unknown in {version}"
            errors = _errors(validator, obj)
            assert not errors, f"{version} {obj['kind']} {obj['metadata']['name']}: {errors}"


def test_vllm_stack_kvaware_values_given_to_helm() -> None:
    """vllm-stack's routingLogic kvaware straight to Helm: the kv policy, and its engines
    publish; a policy of vfleet's own wins over routingLogic and turns them off again."""
    values: dict[str, Any] = yaml.safe_load(
        """
        servingEngineSpec:
          modelSpec:
            - {name: opt, modelURL: facebook/opt-125m, requestGPU: 1}
        routerSpec:
          routingLogic: kvaware
        """
    )
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    case = Case("kvaware", None, values, rendered)
    router = case.one("Deployment", f"{RELEASE}-deployment-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--policy") + 1] == "kv"
    pod = pod_template(case, "opt")
    assert kv_config(engine_argv(pod["spec"]["containers"][0]))["endpoint"] == "tcp://*:5557"
    values["routerSpec"]["policy"] = "prefix"
    rendered = helm.render(values, release=RELEASE, namespace=NAMESPACE)
    pod = pod_template(Case("prefix", None, values, rendered), "opt")
    assert KV.flag not in engine_argv(pod["spec"]["containers"][0])
    assert ANNOTATION not in pod["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (65436, "1-65435 (its replay socket takes port + 100)"),
        (65535, "1-65435"),
        ("5557", "1-65435"),
        (None, ""),
    ],
)
def test_the_rules_file_checks_the_kv_events_port(port: Any, message: str) -> None:
    raw = yaml.safe_load((CHART / "files" / "engine-rules.yaml").read_text(encoding="utf-8"))
    if port is None:
        del raw["kvEvents"]
        message = "missing key 'kvEvents'"
    else:
        raw["kvEvents"]["port"] = port
    with pytest.raises(RulesError, match=re.escape(message)):
        parse(raw, "rules")
