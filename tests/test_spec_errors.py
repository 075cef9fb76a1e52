"""Bad specs give one clear error naming the file, the line and the field, through `load()` and
through `vfleet spec check` (one `Error:` line on stderr, non-zero exit, no traceback)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_vfleet
from vfleet.fleetspec.load import load
from vfleet.fleetspec.source import SpecError

FLEET_KEYS = (
    "autoscaling, cpu, engine, env, gpu, health, hold, image, kubernetes, memory, name, replicas, "
    "servedNames, sim, source, startupTimeoutS, storage, task, vllm"
)


@dataclass(frozen=True)
class Case:
    text: str | None  # None: the file does not exist
    line: int | None  # the line the error names
    at: str  # the field it names ("" for file-level problems)
    says: str  # a part of the message


CASES: dict[str, Case] = {
    "missing-file": Case(None, None, "", "no such file"),
    "empty-file": Case("", None, "", "the file is empty"),
    "yaml-syntax": Case(
        "name: t\nmodels:\n  - name: chat\n    source: org/m\n   gpu: [1\n",
        5,
        "",
        "invalid YAML",
    ),
    "yaml-unclosed-bracket": Case(
        "name: t\nmodels:\n  - name: chat\n    source: org/m\n    servedNames: [a, b\n",
        6,
        "",
        "invalid YAML",
    ),
    "top-level-list": Case("- a\n- b\n", 1, "", "expected a mapping at the top level, got list"),
    "unknown-key": Case(
        "name: t\nmodels:\n  - name: chat\n    source: org/m\n    gpuz: 1\n",
        5,
        "models[0].gpuz",
        f"unknown key (allowed here: {FLEET_KEYS})",
    ),
    "unknown-nested-key": Case(
        "models:\n  - name: chat\n    source: org/m\n    vllm:\n      maxModelLength: 9\n",
        5,
        "models[0].vllm.maxModelLength",
        "unknown key (allowed here: chatTemplate, dtype,",
    ),
    "unknown-env-key": Case(
        "models:\n  - name: chat\n    source: org/m\n    env:\n      - name: A\n        valu: 1\n",
        6,
        "models[0].env[0].valu",
        "unknown key (allowed here: name, value, valueFrom)",
    ),
    "chart-key-in-typed-kubernetes": Case(
        "models:\n  - name: chat\n    source: org/m\n    kubernetes:\n      extraVolumes: []\n",
        5,
        "models[0].kubernetes.extraVolumes",
        "unknown key (allowed here: affinity, annotations, chartValues, download, hostPath,",
    ),
    "bad-image-pull-policy": Case(
        "models:\n  - name: chat\n    source: org/m\n    kubernetes:\n"
        "      imagePullPolicy: Sometimes\n",
        5,
        "models[0].kubernetes.imagePullPolicy",
        "Input should be 'Always', 'IfNotPresent' or 'Never'",
    ),
    "unknown-autoscaling-key": Case(
        "models:\n  - name: chat\n    source: org/m\n    autoscaling:\n      min: 1\n",
        5,
        "models[0].autoscaling.min",
        "unknown key (allowed here: kvUsageTarget, maxReplicas, maxScaleDownRate, "
        "maxScaleUpRate, metric, minReplicas, panicThreshold, panicWindowS, scaleDownDelayS, "
        "scaleToZeroGraceS, stableWindowS, target, ttftP90S)",
    ),
    "unknown-hold-key": Case(
        "models:\n  - name: chat\n    source: org/m\n    hold:\n      timeout: 5\n",
        5,
        "models[0].hold.timeout",
        "unknown key (allowed here: maxQueued, timeoutS)",
    ),
    "hold-timeout-zero": Case(
        "models:\n  - name: chat\n    source: org/m\n    hold: {timeoutS: 0}\n",
        4,
        "models[0].hold.timeoutS",
        "greater than 0",
    ),
    "panic-window-longer-than-stable": Case(
        "models:\n  - name: chat\n    source: org/m\n    autoscaling:\n"
        "      stableWindowS: 10\n      panicWindowS: 20\n",
        4,
        "models[0].autoscaling",
        "panicWindowS (20) is longer than stableWindowS (10)",
    ),
    "kv-usage-target-above-1": Case(
        "models:\n  - name: chat\n    source: org/m\n    autoscaling:\n      kvUsageTarget: 80\n",
        5,
        "models[0].autoscaling.kvUsageTarget",
        "less than or equal to 1",
    ),
    "stable-window-zero": Case(
        "models:\n  - name: chat\n    source: org/m\n    autoscaling:\n      stableWindowS: 0\n",
        5,
        "models[0].autoscaling.stableWindowS",
        "greater than 0",
    ),
    "unknown-metric": Case(
        "models:\n  - name: chat\n    source: org/m\n    autoscaling: {metric: cpu}\n",
        4,
        "models[0].autoscaling.metric",
        "'concurrency', 'rps', 'waiting' or 'kv_cache'",
    ),
    "t9k-bad-window": Case(
        "server:\n  model:\n    deployName: m\n    volume: {existingClaim: c}\n"
        "  autoScaling:\n    minReplicas: 0\n    annotations:\n"
        "      autoscaling.knative.dev/window: soon\n",
        8,
        "server.autoScaling.annotations.autoscaling.knative.dev/window",
        "'soon' is not a duration (e.g. 60s, 1m30s)",
    ),
    "t9k-panic-threshold-below-100": Case(
        "server:\n  model:\n    deployName: m\n    volume: {existingClaim: c}\n"
        "  autoScaling:\n    minReplicas: 0\n    annotations:\n"
        "      autoscaling.knative.dev/panic-threshold-percentage: '50'\n",
        8,
        "server.autoScaling.annotations.autoscaling.knative.dev/panic-threshold-percentage "
        "(fleet field models[0].autoscaling.panicThreshold)",
        "greater than 1",
    ),
    "unknown-top-key": Case(
        "name: t\nmodel:\n  name: x\nmodels:\n  - name: chat\n    source: org/m\n",
        2,
        "model",
        "unknown key (allowed here: engine, importedFrom, kubernetes, models, name, router)",
    ),
    "unknown-engine": Case(
        "models:\n  - name: chat\n    source: org/m\n    engine: tgi\n",
        4,
        "models[0].engine",
        "'vllm' or 'sim'",
    ),
    "unknown-fleet-engine": Case(
        "engine: sglang\nmodels:\n  - name: chat\n    source: org/m\n",
        1,
        "engine",
        "'vllm' or 'sim'",
    ),
    "gpu-1.5": Case(
        "models:\n  - name: chat\n    source: org/m\n    gpu: 1.5\n",
        4,
        "models[0].gpu",
        "a GPU request above 1 must be a whole number of GPUs (got 1.5)",
    ),
    "gpu-0.125": Case(
        "models:\n  - name: chat\n    source: org/m\n    gpu: 0.125\n",
        4,
        "models[0].gpu",
        "a GPU share must be a multiple of 0.01 (got 0.125)",
    ),
    "gpu-negative": Case(
        "models:\n  - name: chat\n    source: org/m\n    gpu: -1\n",
        4,
        "models[0].gpu",
        "greater than or equal to 0",
    ),
    "gpu-text": Case(
        "models:\n  - name: chat\n    source: org/m\n    gpu: lots\n",
        4,
        "models[0].gpu",
        "lots",
    ),
    "duplicate-model-names": Case(
        "name: t\nmodels:\n  - name: chat\n    source: org/a\n  - name: chat\n    source: org/b\n",
        5,
        "models[1].name",
        "model name 'chat' is already used by models[0]",
    ),
    "max-below-min-replicas": Case(
        "models:\n  - name: chat\n    source: org/m\n    autoscaling:\n"
        "      minReplicas: 3\n      maxReplicas: 2\n",
        4,
        "models[0].autoscaling",
        "maxReplicas (2) is below minReplicas (3)",
    ),
    "bad-model-name": Case(
        "models:\n  - name: Chat_Bot\n    source: org/m\n",
        2,
        "models[0].name",
        "'Chat_Bot' is not a valid model name",
    ),
    "no-models": Case("name: t\nmodels: []\n", None, "", "no models here"),
    "missing-source": Case("models:\n  - name: chat\n", 2, "models[0].source", "required"),
    "unknown-format": Case(
        "foo: 1\nbar:\n  baz: 2\n",
        1,
        "",
        "not a format vfleet knows (top-level keys: bar, foo)",
    ),
    "vllm-stack-gpu-1.5": Case(
        "servingEngineSpec:\n  modelSpec:\n  - name: a\n    modelURL: org/a\n    requestGPU: 1.5\n",
        5,
        "servingEngineSpec.modelSpec[0].requestGPU (fleet field models[0].gpu)",
        "a GPU request above 1 must be a whole number of GPUs",
    ),
    "vllm-stack-labels-not-strings": Case(
        "servingEngineSpec:\n  modelSpec:\n  - name: a\n    modelURL: org/a\n"
        "    podLabels: {tier: 1}\n",
        5,
        "servingEngineSpec.modelSpec[0].podLabels "
        "(fleet field models[0].kubernetes.podLabels.tier)",
        "Input should be a valid string",
    ),
    "tke-image-pull-policy": Case(
        "model:\n  name: org/m\nserver:\n  args: {}\n  imagePullPolicy: Sometimes\n",
        5,
        "server.imagePullPolicy (fleet field models[0].kubernetes.imagePullPolicy)",
        "Input should be 'Always', 'IfNotPresent' or 'Never'",
    ),
    "vllm-stack-no-model-url": Case(
        "servingEngineSpec:\n  modelSpec:\n  - name: a\n    replicaCount: 2\n",
        3,
        "servingEngineSpec.modelSpec[0]",
        "a modelSpec entry needs modelURL",
    ),
    "router-policy-for-unknown-model": Case(
        "models:\n  - name: chat\n    source: org/m\nrouter:\n  modelPolicies:\n    chit: prefix\n",
        6,
        "router.modelPolicies.chit",
        "no model is named or served as 'chit'",
    ),
    "yaml-duplicate-key": Case(
        # YAML lets the later key win silently; a spec must not drop what the user wrote.
        "models:\n  - name: chat\n    source: org/m\n    gpu: 0.5\n    gpu: 2\n",
        5,
        "models[0].gpu",
        "gpu",
    ),
}


# The CLI runs a subset (each run starts a Python process): the brief's cases and an importer's.
CLI_CASES = (
    "missing-file",
    "yaml-syntax",
    "unknown-key",
    "unknown-engine",
    "gpu-1.5",
    "gpu-0.125",
    "duplicate-model-names",
    "max-below-min-replicas",
    "unknown-format",
    "vllm-stack-gpu-1.5",
)


def spec_file(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / "fleet.yaml"
    if case.text is not None:
        path.write_text(case.text)
    return path


def where(path: Path, case: Case) -> str:
    """How the error begins: FILE[:LINE]: [FIELD: ]."""
    head = f"{path}:{case.line}" if case.line else str(path)
    return f"{head}: {case.at + ': ' if case.at else ''}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_error_names_file_line_and_field(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    path = spec_file(tmp_path, case)
    with pytest.raises(SpecError) as info:
        load([path])
    err = info.value
    assert (err.file, err.line, err.at) == (str(path), case.line, case.at), str(err)
    assert case.says in err.message, str(err)
    assert str(err).startswith(where(path, case)), str(err)
    assert "\n" not in str(err)


def vfleet(*args: str) -> subprocess.CompletedProcess[str]:
    return run_vfleet(*args, timeout_s=30)


@pytest.mark.parametrize("name", CLI_CASES)
def test_spec_check_prints_one_error_line(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    path = spec_file(tmp_path, case)
    res = vfleet("spec", "check", str(path))
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"Error: {where(path, case)}"), res.stderr
    assert case.says in lines[0], res.stderr
    assert res.stdout == ""


def test_no_file_given_is_an_error() -> None:
    with pytest.raises(SpecError, match="no spec file given"):
        load([])
    res = vfleet("spec", "check")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr


def test_a_directory_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load([tmp_path])
    assert str(info.value) == f"{tmp_path}: is a directory, not a spec file"


def test_the_first_bad_file_of_several_is_named(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  - name: chat\n    source: org/m\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n- not an object\n")
    with pytest.raises(SpecError) as info:
        load([good, bad])
    assert info.value.file == str(bad)
    assert "not all are Kubernetes objects" in info.value.message


def test_duplicate_models_across_files_are_an_error(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    for p in (a, b):
        p.write_text("models:\n  - name: chat\n    source: org/m\n")
    with pytest.raises(SpecError, match="model name 'chat' is already used by models"):
        load([a, b])


def test_spec_check_success_goes_to_stdout_and_notes_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("models:\n  - name: chat\n    source: org/m\n    replicas: 3\n")
    res = vfleet("spec", "check", "--json", str(path))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["apiVersion"] == "vfleet/v1"
    assert data["kind"] == "Fleet"
    assert data["models"][0]["replicas"] == 3
    assert res.stderr.strip().endswith("ok: 1 model(s), 3 replica(s), read as vfleet")


def test_spec_schema_is_json_with_models() -> None:
    res = vfleet("spec", "schema")
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    assert "models" in schema["properties"]
    assert "models" in schema.get("required", [])
    # camelCase, as in files
    model = schema["$defs"]["Model"]["properties"]
    assert "servedNames" in model
    assert "served_names" not in model


FLEET_A = "name: t\nengine: sim\nmodels:\n  - name: chat\n    source: org/m\n    gpu: 0.5\n"
VALUES_A = "servingEngineSpec:\n  modelSpec:\n  - name: x\n    modelURL: org/x\n"
FLEET_B = "# more models\nmodels:\n  - name: embed\n    source: org/e\n    gpu: 1.5\n"
VALUES_B = (
    "# more models\nservingEngineSpec:\n  modelSpec:\n  - name: embed\n    modelURL: org/e\n"
    "    requestGPU: 1.5\n"
)


@pytest.mark.parametrize(
    ("first", "second", "at"),
    [
        (FLEET_A, FLEET_B, "gpu"),
        (FLEET_A, VALUES_B, "servingEngineSpec.modelSpec[0].requestGPU"),
        (VALUES_A, FLEET_B, "gpu"),
        (VALUES_A, VALUES_B, "servingEngineSpec.modelSpec[0].requestGPU"),
    ],
    ids=["fleet+fleet", "fleet+values", "values+fleet", "values+values"],
)
def test_error_in_a_later_file_names_that_file_and_line(
    tmp_path: Path, first: str, second: str, at: str
) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(first)
    b = tmp_path / "b.yaml"
    b.write_text(second)
    with pytest.raises(SpecError) as info:
        load([a, b])
    err = info.value
    assert (err.file, err.line) == (str(b), len(second.splitlines())), str(err)
    assert at in err.at, str(err)
