"""A local model source on Kubernetes is a hostPath on the node: `vfleet k8s render` writes an
absolute path as the volume's path and the engine's mountPath (valid for Kubernetes' strict
schemas), refuses a relative or `~` path with one line naming the file, line and field (a node
has no spec directory to resolve it against), and leaves a path inside the image
(`hostPath: false`) alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_vfleet
from test_chart_validate import VERSIONS, _builtin, _errors, _validator

pytestmark = pytest.mark.timeout(120)


def _fleet(tmp_path: Path, source: str, host_path: bool | None = None) -> Path:
    model: dict[str, Any] = {"name": "chat", "source": source, "gpu": 1}
    if host_path is not None:
        model["kubernetes"] = {"hostPath": host_path}
    spec = tmp_path / "fleet.yaml"
    spec.write_text(yaml.safe_dump({"name": "demo", "models": [model]}, sort_keys=False))
    return spec


def _render(spec: Path) -> list[dict[str, Any]]:
    done = run_vfleet("k8s", "render", "-f", str(spec), timeout_s=60)
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def _engine_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    engines = [
        o for o in objects if o["kind"] == "Deployment" and "router" not in o["metadata"]["name"]
    ]
    assert len(engines) == 1, [o["metadata"]["name"] for o in engines]
    pod: dict[str, Any] = engines[0]["spec"]["template"]["spec"]
    return pod


def _valid(objects: list[dict[str, Any]]) -> None:
    for version in (VERSIONS[0], VERSIONS[-1]):
        for obj in filter(_builtin, objects):
            validator = _validator(version, obj["kind"], obj["apiVersion"])
            assert validator is not None
            assert not _errors(validator, obj), (version, obj["kind"], _errors(validator, obj))


def test_an_absolute_local_path_is_the_node_directory_mounted_at_the_same_path(
    tmp_path: Path,
) -> None:
    objects = _render(_fleet(tmp_path, "/mnt/models/chat"))
    pod = _engine_pod(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-host"]["hostPath"] == {"path": "/mnt/models/chat", "type": "Directory"}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["model-host"]["mountPath"] == "/mnt/models/chat"
    assert mounts["model-host"]["readOnly"] is True
    _valid(objects)


@pytest.mark.parametrize(
    ("source", "what"),
    [("./models/chat", "is relative"), ("../chat", "is relative"), ("~/models", "with ~")],
)
def test_a_relative_local_path_is_refused_in_one_line_naming_file_line_and_field(
    tmp_path: Path, source: str, what: str
) -> None:
    spec = _fleet(tmp_path, source)
    done = run_vfleet("k8s", "render", "-f", str(spec), timeout_s=60)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    line = lines[0]
    assert line.startswith(f"Error: {spec}:4: models[0].source: local path {source!r}"), line
    assert what in line and "absolute" in line and "hostPath: false" in line


def test_a_relative_path_inside_the_image_is_no_host_path(tmp_path: Path) -> None:
    objects = _render(_fleet(tmp_path, "./models/chat", host_path=False))
    pod = _engine_pod(objects)
    assert not any("hostPath" in v for v in pod.get("volumes", []))
    engine = pod["containers"][0]
    assert "./models/chat" in [*engine.get("command", []), *engine.get("args", [])]
    _valid(objects)
