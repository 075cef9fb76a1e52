"""Warnings on stderr wherever meaning changes or something is left out on the way from a user's
files to the chart (`vfleet k8s render`, `vfleet spec check`) or to `vfleet up`: one format,
`warning: FILE:LINE: message`. Also `env` as a mapping, `spec check -f`, and the API keys
`vfleet up` applies (or says it cannot)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_vfleet
from httpclient import Client
from test_local_up import START_S, one_error_line, reap
from vfleet.fleetspec.caveats import as_warning
from vfleet.fleetspec.load import load
from vfleet.local.keys import Keys, api_keys

ROOT = Path(__file__).parent.parent
SEEDS = ROOT / "examples" / "seeds"
SEED_000 = SEEDS / "000-embedding.yaml"
T9K = SEEDS / "003-t9k-bge-m3.yaml"
FORMAT = re.compile(r"^warning: [^:]+:\d+: \S")


def run(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return run_vfleet(*args, timeout_s=timeout_s, env=env)


def warnings_of(res: subprocess.CompletedProcess[str]) -> list[str]:
    assert res.returncode == 0, res.stderr
    found = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    for line in found:
        assert FORMAT.match(line), line
    return found


HAMI = (
    f"warning: {SEED_000}:23: gpuMemoryUtilization 0.15 with a 20% GPU share (qwen3embed): "
    "under HAMi the engine sees only its slice, so this is 3% of the GPU's memory (vfleet up: "
    "15% of the GPU); 15% of the GPU on Kubernetes is 0.75, or set gpuSharing.mode: timeslicing"
)


def test_render_warns_about_utilization_under_a_hami_slice(tmp_path: Path) -> None:
    res = run("k8s", "render", "-f", str(SEED_000), "-o", str(tmp_path / "out"))
    assert warnings_of(res) == [HAMI]
    assert res.stderr.splitlines()[-1].startswith("wrote ")


def test_spec_check_takes_f_and_warns_the_same(tmp_path: Path) -> None:
    assert warnings_of(run("spec", "check", "-f", str(SEED_000))) == [HAMI]
    # the positional form still works; no file at all is a usage error
    assert warnings_of(run("spec", "check", str(SEED_000))) == [HAMI]
    res = run("spec", "check")
    assert res.returncode == 2 and "give the files to check" in res.stderr


def test_no_hami_warning_when_sharing_is_timeslicing(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    text = SEED_000.read_text().replace(
        "    requestGPU: 0.2", "    requestGPU: 0.2\n    gpuSharing: {mode: timeslicing}"
    )
    values.write_text(text)
    found = warnings_of(run("spec", "check", "-f", str(values)))
    assert found and not [w for w in found if "HAMi" in w], found


def test_placeholders_and_limits_of_t9k_values() -> None:
    found = warnings_of(run("spec", "check", "-f", str(T9K)))
    prefix = f"warning: {T9K}:"
    assert f"{prefix}5: server.image.registry: $(T9K_APP_IMAGE_REGISTRY) is a placeholder" in (
        " ".join(found)
    )
    lines = {int(w[len(prefix) :].split(":")[0]) for w in found if w.startswith(prefix)}
    # 31: the importer's note on the initializer it leaves out (its placeholders at 33 and 34
    # are in that part: no second word about them)
    assert lines == {5, 6, 12, 13, 31}
    cpu = next(w for w in found if w.startswith(f"{prefix}12:"))
    assert cpu == (
        f"{prefix}12: server.resources.limits.cpu: limit 4 becomes a request (requestCPU: 4) "
        "with no cpu limit: the pod may use more (keep the limit with "
        "kubernetes.chartValues.limitCPU)"
    )


def test_ingress_that_bypasses_the_router(tmp_path: Path) -> None:
    ingress = SEEDS / "001-service-ingress.yaml"
    args = ("-f", str(SEEDS / "001-deployment.yaml"), "-f", str(ingress))
    found = warnings_of(run("k8s", "render", *args, "--release", "demo", "-o", str(tmp_path)))
    assert (
        f"warning: {ingress}:32: spec.rules[0].http.paths[0].backend.service: Ingress "
        "'vllm-ingress' sends traffic to Service 'vllm-service', not to the vfleet router "
        "(demo-router-service): its requests skip routing, API keys, rate limits and metrics; "
        "point the backend at the router's Service"
    ) in found
    # a memory limit next to a request: the limit is what is left out
    assert any(
        w.startswith(f"warning: {SEEDS / '001-deployment.yaml'}:52: ") and "left out" in w
        for w in found
    )


SECRET_VALUES = """\
servingEngineSpec:
  vllmApiKey:
    secretName: vllm-keys
    secretKey: key
  modelSpec:
  - name: chat
    modelURL: facebook/opt-125m
    replicaCount: 1
    requestGPU: 1
"""


def test_api_key_from_a_secret(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(SECRET_VALUES)
    expected = (
        f"warning: {values}:2: servingEngineSpec.vllmApiKey: the API key comes from Secret "
        "'vllm-keys' (key 'key'): Kubernetes applies it, but vfleet up cannot read Secrets, so "
        "locally the router checks no key unless you give one (router.apiKeys in a fleet file, "
        "or env VFLEET_API_KEYS)"
    )
    assert expected in warnings_of(run("spec", "check", "-f", str(values)))
    # `vfleet up` says so before it starts anything (here it then stops: its port is taken)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        res = run(
            "up",
            "-f",
            str(values),
            "--engine",
            "sim",
            "--port",
            port,
            "--run-dir",
            str(tmp_path / "r"),
        )
    assert res.returncode == 1
    assert res.stderr.splitlines()[0] == expected
    assert res.stderr.splitlines()[-1].startswith(f"Error: router port 127.0.0.1:{port}")


KEYED = """\
name: keyed
engine: sim
router:
  apiKeys: [from-spec]
models:
  - name: chat
    servedNames: [m]
    source: hf://facebook/opt-125m
    env: {{VLLM_LOGGING_LEVEL: INFO, RETRIES: 3}}
"""


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    spec = tmp_path / "keyed.yaml"
    spec.write_text(KEYED.format())
    run_dir = tmp_path / "run"
    yield spec, run_dir
    reap(run_dir)


def test_up_applies_api_keys_from_the_spec_and_a_key_file(keyed: tuple[Path, Path]) -> None:
    spec, run_dir = keyed
    keys = spec.parent / "keys.txt"
    keys.write_text("# client keys\nfrom-file\n")
    env = {k: v for k, v in os.environ.items() if k != "VFLEET_API_KEYS"}
    res = run(
        "up",
        "-f",
        str(spec),
        "--port",
        "0",
        "--detach",
        "--api-key-file",
        str(keys),
        "--run-dir",
        str(run_dir),
        env=env,
        timeout_s=START_S + 15,
    )
    assert res.returncode == 0, res.stderr
    assert f"vfleet: the router checks 2 API key(s) (1 from the spec, 1 from {keys})" in (
        res.stderr.splitlines()
    )
    url = re.search(r"send requests to (\S+)/v1", res.stdout)
    assert url, res.stdout
    client = Client(url.group(1))
    assert client.get("/v1/models").status == 401
    for key in ("from-spec", "from-file"):
        assert client.get("/v1/models", {"authorization": f"Bearer {key}"}).status == 200
    assert run("down", "--run-dir", str(run_dir)).returncode == 0


def test_env_as_a_mapping(tmp_path: Path) -> None:
    spec = tmp_path / "keyed.yaml"
    spec.write_text(KEYED.format())
    res = run("spec", "check", "-f", str(spec), "--json")
    assert res.returncode == 0, res.stderr
    assert '"env": [\n        {\n          "name": "VLLM_LOGGING_LEVEL"' in res.stdout
    assert '"value": "3"' in res.stdout


def test_env_of_the_wrong_shape_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(KEYED.format().replace("env: {VLLM_LOGGING_LEVEL: INFO, RETRIES: 3}", "env: 7"))
    line = one_error_line(run("spec", "check", "-f", str(spec)))
    assert f"{spec}:9" in line and "env" in line


def test_importer_notes_become_warnings() -> None:
    assert as_warning("note: a.yaml:3: x: y") == "warning: a.yaml:3: x: y"
    assert as_warning("warning: a.yaml:3: x: y") == "warning: a.yaml:3: x: y"


def test_env_keys_replace_the_spec_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "keyed.yaml"
    spec.write_text(KEYED.format())
    fleet = load([spec]).fleet
    monkeypatch.setenv("VFLEET_API_KEYS", "a, b")
    assert api_keys(fleet, None) == Keys(
        ("a", "b"),
        None,
        ("the router checks 2 API key(s) from env VFLEET_API_KEYS, replacing the 1 of the spec",),
    )
    monkeypatch.delenv("VFLEET_API_KEYS")
    assert api_keys(fleet, None).client == ("from-spec",)
    with pytest.raises(ValueError, match=r"nope\.txt"):
        api_keys(fleet, str(tmp_path / "nope.txt"))


def test_engines_that_want_different_keys(tmp_path: Path) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_KEYS)
    with pytest.raises(ValueError, match="models a, b require different API keys"):
        api_keys(load([spec]).fleet, None)


TWO_KEYS = """\
name: two
engine: sim
models:
  - {name: a, source: hf://facebook/opt-125m, gpu: 0.5, env: {VLLM_API_KEY: one}}
  - name: b
    source: hf://facebook/opt-125m
    gpu: 0.5
    vllm: {extraArgs: [--api-key, two]}
"""

ENGINE_KEY = """\
name: engine-key
engine: sim
models:
  - name: chat
    servedNames: [m]
    source: hf://facebook/opt-125m
    env: {VLLM_API_KEY: engine-secret}
"""


def test_up_gives_the_engines_their_key(tmp_path: Path) -> None:
    spec = tmp_path / "engine-key.yaml"
    spec.write_text(ENGINE_KEY)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("VFLEET_API_KEYS", "VLLM_API_KEY")}
    try:
        res = run(
            "up",
            "-f",
            str(spec),
            "--port",
            "0",
            "--detach",
            "--run-dir",
            str(run_dir),
            env=env,
            timeout_s=START_S + 15,
        )
        assert res.returncode == 0, res.stderr
        assert (
            "vfleet: chat require(s) an API key (VLLM_API_KEY or --api-key): the router sends it "
            "to the engines and accepts it from clients"
        ) in res.stderr.splitlines()
        url = re.search(r"send requests to (\S+)/v1", res.stdout)
        assert url, res.stdout
        client = Client(url.group(1))
        assert client.get("/v1/models").status == 401
        ok = client.post(
            "/v1/completions",
            {"model": "m", "prompt": "hi", "max_tokens": 2},
            headers={"authorization": "Bearer engine-secret"},
        )
        assert ok.status == 200, ok.body
    finally:
        reap(run_dir)
