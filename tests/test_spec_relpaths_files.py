"""The other local files a spec names are read from the spec file's directory too, as a relative
model source is (tests/test_spec_relpaths.py): `router.tenantsFile` and LoRA adapters written as
paths (`./…`, `../…`; a bare `org/name` is a hub id). `vfleet up` and `vfleet spec check` read
them joined, `vfleet k8s render` as written (a path in the image or on a node), and `vfleet up`
names the field, the spec's line and the joined path when one is missing. `vllm.chatTemplate` too,
when it names a file written as a path rather than holding the template (`chat_template_is_path`,
`chat_template_is_local`), except that `k8s render` reads a relative (or `~`) one as `up` does and
ships it in the chart's ConfigMap.

The commands run as real `vfleet` processes from a working directory that is not the spec's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_vfleet
from httpclient import Client
from test_local_up import Up, one_error_line, start_up
from vfleet.fleetspec.load import load, missing_local_files
from vfleet.fleetspec.models import chat_template_is_local, chat_template_is_path
from vfleet.kube.values import shipped_chat_templates

pytestmark = pytest.mark.timeout(120)

KEY = "sk-team-a"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with nothing the spec names, the commands' cwd."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("VFLEET_API_KEYS", raising=False)  # it would replace the spec's keys
    return cwd


def _spec(conf: Path, modules: dict[str, str], tenants: str | None = "./tenants.yaml") -> Path:
    """conf/fleet.yaml: one simulated chat model with `modules` as its LoRA adapters and the
    router's tenants file `tenants`."""
    conf.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"name": "relfiles", "engine": "sim"}
    if tenants is not None:
        body["router"] = {"tenantsFile": tenants}
    body["models"] = [
        {
            "name": "chat",
            "source": "hf://facebook/opt-125m",
            "vllm": {"lora": {"enabled": True, "modules": modules}},
        }
    ]
    spec = conf / "fleet.yaml"
    spec.write_text(yaml.safe_dump(body, sort_keys=False))
    return spec


def _line(spec: Path, text: str) -> int:
    """The 1-based line of `spec` holding `text`."""
    return next(i for i, ln in enumerate(spec.read_text().splitlines(), 1) if text in ln)


def _files(conf: Path) -> None:
    """What the spec names, next to it."""
    (conf / "tenants.yaml").write_text(f"keys: [{{name: team-a, key: {KEY}}}]\n")
    (conf / "adapters" / "sql").mkdir(parents=True)
    (conf.parent / "shared-adapters" / "law").mkdir(parents=True)


MODULES = {"sql": "./adapters/sql", "law": "../shared-adapters/law", "hub": "org/adapter"}


def test_spec_check_joins_the_tenants_file_and_adapter_paths(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "conf"
    spec = _spec(conf, {**MODULES, "abs": "/mnt/adapters/abs", "home": "~/adapters/home"})
    done = run_vfleet("spec", "check", "-f", os.path.relpath(spec, elsewhere), "--json")
    assert done.returncode == 0, done.stderr
    checked = yaml.safe_load(done.stdout)
    assert checked["router"]["tenantsFile"] == f"{conf}/tenants.yaml"
    assert checked["models"][0]["vllm"]["lora"]["modules"] == {
        "sql": f"{conf}/adapters/sql",
        "law": f"{tmp_path}/shared-adapters/law",
        "hub": "org/adapter",  # a hub id, not a path
        "abs": "/mnt/adapters/abs",
        "home": "~/adapters/home",
    }


def test_the_fleet_as_written_gives_back_every_path_its_file_wrote(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "conf", MODULES)
    fleet = load([spec]).fleet
    assert fleet.router.tenants_file == f"{tmp_path}/conf/tenants.yaml"
    written = fleet.paths_as_written()
    assert written.router.tenants_file == "./tenants.yaml"
    assert written.models[0].vllm.lora.modules == MODULES
    assert written.paths_as_written() == written
    # absolute and `~` paths are not joined, so there is nothing to give back
    absolute = load([_spec(tmp_path / "abs", {"a": "/x"}, "~/t.yaml")]).fleet
    assert absolute.paths_as_written() == absolute
    assert absolute.router.tenants_file == "~/t.yaml"


def test_k8s_render_passes_adapter_paths_as_written(tmp_path: Path, elsewhere: Path) -> None:
    conf = tmp_path / "conf"
    spec = _spec(conf, MODULES)  # nothing exists: the paths are the cluster's
    done = run_vfleet("k8s", "render", "-f", str(spec), timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path) not in done.stdout
    args = [
        a
        for o in yaml.safe_load_all(done.stdout)
        if o and o["kind"] == "Deployment" and "router" not in o["metadata"]["name"]
        for c in o["spec"]["template"]["spec"]["containers"]
        for a in (*c.get("command", []), *c.get("args", []))
    ]
    assert "sql=./adapters/sql" in args and "law=../shared-adapters/law" in args, args
    # the tenants file is still the local one the chart cannot carry, under the spec's line
    assert (
        f"{spec}:{_line(spec, 'tenantsFile:')}: router.tenantsFile: a local file, not carried"
        in done.stderr
    )


@pytest.fixture
def fleets() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.stop()


def test_up_reads_the_tenants_file_and_adapters_next_to_the_spec(
    tmp_path: Path, elsewhere: Path, fleets: list[Up]
) -> None:
    conf = tmp_path / "conf"
    spec = _spec(conf, MODULES)
    _files(conf)
    fleets.append(start_up(tmp_path / "run", "-f", os.path.relpath(spec, elsewhere)))
    up = fleets[0]
    said = (
        f"vfleet: the router checks 1 named key(s) from {conf}/tenants.yaml (model allowlists, "
        "budgets; re-read when it changes)\n"
    )
    assert said in up.err, "".join(up.err)
    c = Client(up.url)
    assert c.get("/v1/models").status == 401  # the tenants file's key is required
    listed = c.get("/v1/models", {"authorization": f"Bearer {KEY}"})
    assert listed.status == 200, listed.body
    roots = {m["id"]: m["root"] for m in listed.json()["data"]}
    assert roots["sql"] == f"{conf}/adapters/sql"
    assert roots["law"] == f"{tmp_path}/shared-adapters/law"
    assert roots["hub"] == "org/adapter"


def test_up_names_the_field_and_the_joined_path_of_a_missing_tenants_file(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "conf"
    spec = _spec(conf, {})
    done = run_vfleet("up", "-f", str(spec), "--port", "0", "--run-dir", str(tmp_path / "run"))
    line = one_error_line(done)
    at = _line(spec, "tenantsFile:")
    want = f"router.tenantsFile: tenants file {conf}/tenants.yaml does not exist"
    assert line == f"Error: {spec}:{at}: {want}"


def test_up_names_the_field_and_the_joined_path_of_a_missing_adapter(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "conf"
    spec = _spec(conf, {"hub": "org/adapter", "sql": "./adapters/sql"}, tenants=None)
    done = run_vfleet("up", "-f", str(spec), "--port", "0", "--run-dir", str(tmp_path / "run"))
    line = one_error_line(done)
    at = _line(spec, "sql: ./adapters/sql")
    assert line == (
        f"Error: {spec}:{at}: models[0].vllm.lora.modules.sql: LoRA adapter 'sql': "
        f"{conf}/adapters/sql does not exist"
    )


def test_missing_files_are_listed_with_their_fields(tmp_path: Path) -> None:
    """Every missing file, in spec order; a hub adapter and files that exist are not."""
    conf = tmp_path / "conf"
    (conf / "present").mkdir(parents=True)
    (conf / "tenants.yaml").mkdir()  # a directory where the file should be
    modules = {"hub": "org/a", "ok": "./present", "gone": "./gone", "abs": "/nonexistent/x"}
    fleet = load([_spec(conf, modules)]).fleet
    assert missing_local_files(fleet) == [
        (("router", "tenantsFile"), f"tenants file {conf}/tenants.yaml is a directory, not a file"),
        (
            ("models", 0, "vllm", "lora", "modules", "gone"),
            f"LoRA adapter 'gone': {conf}/gone does not exist",
        ),
        (
            ("models", 0, "vllm", "lora", "modules", "abs"),
            "LoRA adapter 'abs': /nonexistent/x does not exist",
        ),
    ]


# --- vllm.chatTemplate: a file (read from the spec's directory) or the template itself ---

INLINE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def _template_spec(conf: Path, templates: dict[str, str], engine: str = "sim") -> Path:
    """conf/fleet.yaml: one model per entry of `templates`, named by its key, with the value as
    its chat template."""
    conf.mkdir(parents=True, exist_ok=True)
    models = [
        {"name": name, "source": "hf://facebook/opt-125m", "vllm": {"chatTemplate": template}}
        for name, template in templates.items()
    ]
    spec = conf / "fleet.yaml"
    spec.write_text(yaml.safe_dump({"name": "templates", "engine": engine, "models": models}))
    return spec


TEMPLATES = {"here": "./chat.jinja", "shared": "../templates/chat.jinja", "inline": INLINE}


@pytest.mark.parametrize(
    ("value", "is_path", "is_local"),
    [
        ("./chat.jinja", True, True),
        ("../t/chat.jinja", True, True),
        ("/etc/vfleet/chat.jinja", True, True),
        ("~/chat.jinja", True, True),
        # vLLM opens these too, from its own working directory (its image's examples/...)
        ("chat.jinja", True, False),
        ("examples/tool_chat_template_mistral.jinja", True, False),
        ("chatml", True, False),  # vLLM stops: it looks like a path
        (INLINE, False, False),
        ("./{{ not a path }}", False, False),
        ("no braces but\ntwo lines", False, False),
        ("", False, False),
        ("   ", False, False),
    ],
)
def test_a_chat_template_is_a_file_unless_it_holds_template_characters(
    value: str, is_path: bool, is_local: bool
) -> None:
    assert chat_template_is_path(value) is is_path
    assert chat_template_is_local(value) is is_local


def test_spec_check_joins_a_chat_template_file_and_leaves_an_inline_one(
    tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    conf = tmp_path / "conf"
    templates = {**TEMPLATES, "bare": "chat.jinja", "abs": "/etc/t.jinja", "home": "~/t.jinja"}
    spec = _template_spec(conf, templates)
    done = run_vfleet("spec", "check", "-f", os.path.relpath(spec, elsewhere), "--json")
    assert done.returncode == 0, done.stderr
    checked = {m["name"]: m["vllm"]["chatTemplate"] for m in yaml.safe_load(done.stdout)["models"]}
    assert checked == {
        "here": f"{conf}/chat.jinja",
        "shared": f"{tmp_path}/templates/chat.jinja",
        "inline": INLINE,  # the template itself, passed on untouched
        "bare": "chat.jinja",  # vLLM's to open, as written
        "abs": "/etc/t.jinja",
        "home": f"{tmp_path}/home/t.jinja",  # vLLM's open() would not expand `~`
    }


def test_the_fleet_as_written_gives_back_the_chat_template_its_file_wrote(tmp_path: Path) -> None:
    templates = {**TEMPLATES, "home": "~/t.jinja"}
    fleet = load([_template_spec(tmp_path / "conf", templates)]).fleet
    assert fleet.models[0].vllm.chat_template == f"{tmp_path}/conf/chat.jinja"
    written = fleet.paths_as_written()
    assert {m.name: m.vllm.chat_template for m in written.models} == templates
    assert written.paths_as_written() == written
    inline = load([_template_spec(tmp_path / "inline", {"inline": INLINE})]).fleet
    assert inline.paths_as_written() == inline


def _plan_argv(plan: dict[str, Any]) -> dict[str, list[str]]:
    return {e["model"]: e["argv"] for e in plan["engines"]}


def test_up_passes_vllm_the_chat_template_next_to_the_spec(tmp_path: Path, elsewhere: Path) -> None:
    conf = tmp_path / "conf"
    spec = _template_spec(conf, TEMPLATES)
    (conf / "chat.jinja").write_text(INLINE)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "chat.jinja").write_text(INLINE)
    args = ("up", "-f", os.path.relpath(spec, elsewhere), "--engine", "vllm", "--port", "0")
    env = {**os.environ, "VFLEET_STATE_DIR": str(tmp_path / "state")}  # no vLLM needed
    done = run_vfleet(*args, "--gpus", "0,1,2", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    argv = _plan_argv(json.loads(done.stdout))
    after = {m: a[a.index("--chat-template") + 1] for m, a in argv.items()}
    assert after == {
        "here": f"{conf}/chat.jinja",
        "shared": f"{tmp_path}/templates/chat.jinja",
        "inline": INLINE,
    }


def test_k8s_render_ships_a_local_chat_template_in_a_configmap(
    tmp_path: Path, elsewhere: Path
) -> None:
    """A template file written as a local path is read from the spec's directory, as `vfleet up`
    reads it, and shipped in the chart's ConfigMap, mounted at /templates; an absolute path or
    a bare name is the pod's (the image's), passed as written and not read here."""
    conf = tmp_path / "conf"
    templates = {**TEMPLATES, "bare": "chat.jinja", "abs": "/vllm-workspace/examples/t.jinja"}
    spec = _template_spec(conf, templates, engine="vllm")
    (conf / "chat.jinja").write_text(INLINE + "\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "chat.jinja").write_text("shared {{ messages }}")
    done = run_vfleet("k8s", "render", "-f", os.path.relpath(spec, elsewhere), timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path) not in done.stdout
    found, shipped = {}, {}
    for o in yaml.safe_load_all(done.stdout):
        if o and o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-chat-templates"):
            shipped[o["metadata"]["labels"]["model"]] = o["data"]
        if not o or o["kind"] != "Deployment" or "router" in o["metadata"]["name"]:
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            words = [*c.get("command", []), *c.get("args", [])]
            if "--chat-template" in words:
                found[o["spec"]["template"]["metadata"]["labels"]["model"]] = words[
                    words.index("--chat-template") + 1
                ]
    assert found == {
        **templates,
        "here": "/templates/chat.jinja",
        "shared": "/templates/chat.jinja",
    }
    assert shipped == {
        "here": {"chat.jinja": INLINE + "\n"},
        "shared": {"chat.jinja": "shared {{ messages }}"},
    }


def test_which_chat_templates_a_kubernetes_render_ships(tmp_path: Path) -> None:
    """A relative or `~` file; not an absolute one, a bare name, an inline template, nor one
    whose text the file gives itself (vllm-stack's chatTemplateConfigMap, read without a
    warning: the chart takes it)."""
    templates = {**TEMPLATES, "home": "~/t.jinja", "bare": "t.jinja", "abs": "/srv/t.jinja"}
    fleet = load([_template_spec(tmp_path / "conf", templates)]).fleet.paths_as_written()
    assert [fleet.models[i].name for i in shipped_chat_templates(fleet)] == [
        "here",
        "shared",
        "home",
    ]
    stack = tmp_path / "stack.yaml"
    model = {"name": "m", "modelURL": "facebook/opt-125m", "chatTemplate": "./t.jinja"}
    model["chatTemplateConfigMap"] = INLINE
    stack.write_text(yaml.safe_dump({"servingEngineSpec": {"modelSpec": [model]}}))
    loaded = load([stack])
    assert not [n for n in loaded.notes if "chatTemplate" in n], loaded.notes
    assert shipped_chat_templates(loaded.fleet.paths_as_written()) == []


def test_k8s_render_names_the_field_and_the_joined_path_of_a_missing_chat_template(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "conf"
    spec = _template_spec(conf, {"inline": INLINE, "here": "./chat.jinja"}, engine="vllm")
    done = run_vfleet("k8s", "render", "-f", str(spec), timeout_s=60)
    at = _line(spec, "chatTemplate: ./chat.jinja")
    assert one_error_line(done) == (
        f"Error: {spec}:{at}: models[1].vllm.chatTemplate: chat template {conf}/chat.jinja "
        "does not exist (k8s render ships it in a ConfigMap)"
    )


def test_up_names_the_field_and_the_joined_path_of_a_missing_chat_template(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = tmp_path / "conf"
    spec = _template_spec(conf, {"inline": INLINE, "bare": "gone.jinja", "here": "./chat.jinja"})
    done = run_vfleet("up", "-f", str(spec), "--port", "0", "--run-dir", str(tmp_path / "run"))
    line = one_error_line(done)
    at = _line(spec, "chatTemplate: ./chat.jinja")
    assert line == (
        f"Error: {spec}:{at}: models[2].vllm.chatTemplate: chat template {conf}/chat.jinja "
        "does not exist"
    )


def test_a_missing_chat_template_is_listed_before_the_models_adapters(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "chat.jinja").mkdir(parents=True)  # a directory where the file should be
    spec = _spec(conf, {"gone": "./gone"}, tenants=None)
    body = yaml.safe_load(spec.read_text())
    body["models"][0]["vllm"]["chatTemplate"] = "./chat.jinja"
    body["models"].append(
        {"name": "inline", "source": "hf://facebook/opt-125m", "vllm": {"chatTemplate": INLINE}}
    )
    spec.write_text(yaml.safe_dump(body, sort_keys=False))
    assert missing_local_files(load([spec]).fleet) == [
        (
            ("models", 0, "vllm", "chatTemplate"),
            f"chat template {conf}/chat.jinja is a directory, not a file",
        ),
        (
            ("models", 0, "vllm", "lora", "modules", "gone"),
            f"LoRA adapter 'gone': {conf}/gone does not exist",
        ),
    ]
