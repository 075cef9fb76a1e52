"""A relative local model path in a spec file is read from that file's directory, whatever the
working directory (as Helm and compose read paths in a file): `vfleet up` starts the engine on
it, `vfleet spec check` prints it joined, `vfleet k8s render` still reads it as written (a path on
a node or in an image). Absolute, `~` and hub sources are left alone.

Every command runs as a real `vfleet` process from a working directory that is not the spec's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_vfleet
from httpclient import Client
from test_local_up import Up, start_up

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no models in it, the commands' cwd."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _spec(directory: Path, models: list[dict[str, Any]], name: str = "fleet.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / name
    body = {"name": "relpaths", "engine": "sim", "models": models}
    spec.write_text(yaml.safe_dump(body, sort_keys=False))
    return spec


def _checked(*files: Path) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", str(f))]
    done = run_vfleet("spec", "check", *args, "--json", timeout_s=60)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = yaml.safe_load(done.stdout)
    return out


def _sources(checked: dict[str, Any]) -> dict[str, Any]:
    return {m["name"]: m["source"] for m in checked["models"]}


def test_spec_check_joins_a_relative_path_to_the_spec_files_directory(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "conf"
    spec = _spec(
        conf,
        [
            {"name": "dot", "source": "./models/chat", "gpu": 0.5},
            {"name": "up", "source": "../weights/embed", "task": "embed", "gpu": 0.25},
            {"name": "bare", "source": {"kind": "local", "id": "models/bare"}, "gpu": 0.25},
        ],
    )
    # the spec named by a relative path too, as `-f conf/fleet.yaml` from a project directory
    sources = _sources(_checked(Path(os.path.relpath(spec, elsewhere))))
    assert sources["dot"]["id"] == f"{conf}/models/chat"
    assert sources["up"]["id"] == f"{tmp_path}/weights/embed"
    assert sources["bare"]["id"] == f"{conf}/models/bare"
    assert {s["kind"] for s in sources.values()} == {"local"}


def test_absolute_home_and_hub_sources_are_unchanged(tmp_path: Path, elsewhere: Path) -> None:
    spec = _spec(
        tmp_path / "conf",
        [
            {"name": "abs", "source": "/mnt/models/chat", "gpu": 0.25},
            {"name": "home", "source": "~/models/chat", "gpu": 0.25},
            {"name": "hub", "source": "hf://Qwen/Qwen3-0.6B@main", "gpu": 0.25},
            {"name": "s3", "source": "s3://bucket/prefix", "gpu": 0.25},
        ],
    )
    sources = _sources(_checked(spec))
    assert sources["abs"] == {"kind": "local", "id": "/mnt/models/chat"}
    assert sources["home"] == {"kind": "local", "id": "~/models/chat"}
    assert sources["hub"] == {"kind": "hf", "id": "Qwen/Qwen3-0.6B", "revision": "main"}
    assert sources["s3"] == {"kind": "s3", "id": "bucket/prefix"}


def test_each_file_of_several_reads_its_own_directory(tmp_path: Path, elsewhere: Path) -> None:
    first = _spec(tmp_path / "a", [{"name": "one", "source": "./m", "gpu": 0.5}])
    second = _spec(tmp_path / "b" / "c", [{"name": "two", "source": "./m", "gpu": 0.5}])
    sources = _sources(_checked(first, second))
    assert sources["one"]["id"] == f"{tmp_path}/a/m"
    assert sources["two"]["id"] == f"{tmp_path}/b/c/m"


def test_k8s_render_reads_the_path_as_written_for_a_node_or_an_image(
    tmp_path: Path, elsewhere: Path
) -> None:
    in_image = {"name": "chat", "source": "./models/chat", "kubernetes": {"hostPath": False}}
    done = run_vfleet("k8s", "render", "-f", str(_spec(tmp_path / "conf", [in_image])))
    assert done.returncode == 0, done.stderr
    assert str(tmp_path) not in done.stdout  # this machine's directory means nothing there
    args = [
        a
        for o in yaml.safe_load_all(done.stdout)
        if o and o["kind"] == "Deployment" and "router" not in o["metadata"]["name"]
        for c in o["spec"]["template"]["spec"]["containers"]
        for a in (*c.get("command", []), *c.get("args", []))
    ]
    assert "./models/chat" in args

    on_node = {"name": "chat", "source": "./models/chat"}
    spec = _spec(tmp_path / "node", [on_node])
    done = run_vfleet("k8s", "render", "-f", str(spec), timeout_s=60)
    assert done.returncode == 1
    assert "local path './models/chat' is relative" in done.stderr


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.stop()


def test_up_starts_the_engine_on_the_path_next_to_the_spec(
    tmp_path: Path, elsewhere: Path, fleets: list[Up]
) -> None:
    # the spec's directory says "embed"; the model is a chat model all the same, as its
    # written path and names say (the directories above a spec are no hint)
    conf = tmp_path / "embed-conf"
    (conf / "models" / "chat").mkdir(parents=True)
    spec = _spec(conf, [{"name": "chat", "source": "./models/chat", "gpu": 0.5}])
    fleets.append(start_up(tmp_path / "run", "-f", str(spec)))
    up = fleets[0]
    c = Client(up.url)
    cards = c.get("/v1/models").json()["data"]
    assert [(m["id"], m["root"]) for m in cards] == [("chat", f"{conf}/models/chat")]
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    res = c.post("/v1/chat/completions", body)
    assert res.status == 200, res.body
    assert res.json()["choices"][0]["message"]["content"]
    engine = up.state()["engines"][0]
    assert engine["model"] == "chat"


def test_up_names_the_joined_path_when_it_does_not_exist(tmp_path: Path, elsewhere: Path) -> None:
    conf = tmp_path / "conf"
    spec = _spec(conf, [{"name": "chat", "source": "./missing", "gpu": 0.5}])
    done = run_vfleet("up", "-f", str(spec), "--port", "0", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [f"Error: chat: model path {conf}/missing does not exist"], done.stderr
