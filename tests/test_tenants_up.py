"""`router.tenantsFile` in a fleet spec: `vfleet up` checks the file, says what it applies, and its
router enforces the file's allowlists (and makes an admin key for the supervisor, as with plain
keys); `vfleet k8s render` warns that a local file does not reach the chart, unless the spec names
the Secret the chart's router reads it from (routerSpec.tenants)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import run_vfleet
from httpclient import Client
from test_local_up import START_S, one_error_line, reap

SPEC = """\
name: tenanted
engine: sim
router:
  tenantsFile: {tenants}
models:
  - name: chat
    servedNames: [m]
    source: hf://facebook/opt-125m
  - name: other
    servedNames: [n]
    source: hf://facebook/opt-125m
"""


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("keys: [{name: team-a, key: sk-team-a, models: [m]}]\n")
    spec = tmp_path / "fleet.yaml"
    spec.write_text(SPEC.format(tenants=tenants))
    run_dir = tmp_path / "run"
    yield spec, tenants, run_dir
    reap(run_dir)


def test_up_applies_the_tenants_file(spec: tuple[Path, Path, Path]) -> None:
    fleet, tenants, run_dir = spec
    env = {k: v for k, v in os.environ.items() if k != "VFLEET_API_KEYS"}
    res = run_vfleet(
        *("up", "-f", str(fleet), "--port", "0", "--detach", "--run-dir", str(run_dir)),
        env=env,
        timeout_s=START_S + 15,
    )
    assert res.returncode == 0, res.stderr
    said = (
        f"vfleet: the router checks 1 named key(s) from {tenants} (model allowlists, budgets; "
        "re-read when it changes)"
    )
    assert said in res.stderr.splitlines(), res.stderr
    url = re.search(r"send requests to (\S+)/v1", res.stdout)
    assert url, res.stdout
    client = Client(url.group(1))
    assert client.get("/v1/models").status == 401
    listed = client.get("/v1/models", {"authorization": "Bearer sk-team-a"})
    assert listed.status == 200 and [c["id"] for c in listed.json()["data"]] == ["m"]
    assert run_vfleet("down", "--run-dir", str(run_dir)).returncode == 0


def test_a_bad_tenants_file_stops_up_in_one_line(spec: tuple[Path, Path, Path]) -> None:
    fleet, tenants, run_dir = spec
    tenants.write_text("keys: [{name: team-a, key: sk-team-a, models: m}]\n")
    line = one_error_line(
        run_vfleet("up", "-f", str(fleet), "--port", "0", "--detach", "--run-dir", str(run_dir))
    )
    assert "models must be a list" in line and "sk-team-a" not in line


def test_render_warns_that_a_local_tenants_file_needs_a_secret(
    spec: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    fleet, _, _ = spec
    res = run_vfleet("k8s", "render", "-f", str(fleet), "-o", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    warned = [
        line
        for line in res.stderr.splitlines()
        if line.startswith(f"warning: {fleet}:4: router.tenantsFile: a local file, not carried")
    ]
    assert len(warned) == 1 and "router.kubernetes.tenants.secretName" in warned[0], res.stderr
    assert "--tenants-file" not in _router_args(tmp_path / "out")


def test_render_with_the_secret_named_passes_it_and_does_not_warn(
    spec: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    fleet, tenants, _ = spec
    fleet.write_text(
        SPEC.format(tenants=tenants).replace(
            "router:\n", "router:\n  kubernetes: {tenants: {secretName: fleet-tenants}}\n"
        )
    )
    res = run_vfleet("k8s", "render", "-f", str(fleet), "-o", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "tenantsFile" not in res.stderr, res.stderr
    args = _router_args(tmp_path / "out")
    assert args[args.index("--tenants-file") + 1] == "/etc/vfleet/tenants/tenants.yaml"


def _router_args(out: Path) -> list[str]:
    for f in sorted(out.rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "Deployment"
                and doc["metadata"]["name"].endswith("-deployment-router")
            ):
                args: list[str] = doc["spec"]["template"]["spec"]["containers"][0]["args"]
                return args
    raise AssertionError(f"no router Deployment under {out}")
