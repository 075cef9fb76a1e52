"""vLLM flags read out of hand-written argument lists, and `vllm serve` command lines built for
the vLLM version that will run them. Pure functions: no processes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from vfleet.engines.flags import lift, tokens
from vfleet.engines.rulefile import load_rules, rules_path
from vfleet.engines.rules import RulesError, parse
from vfleet.engines.sim import sim_command
from vfleet.engines.vllm import Version, parse_version, serve_command, translate
from vfleet.fleetspec.models import EngineSettings, Lora, Model

RULES = load_rules()

# -- lifting flags -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "settings"),
    [
        (["--tensor-parallel-size=4"], {"tensor_parallel_size": 4}),
        (["--tensor-parallel-size", "4"], {"tensor_parallel_size": 4}),
        (["-tp", "2"], {"tensor_parallel_size": 2}),
        (["-tp=2"], {"tensor_parallel_size": 2}),
        (["-pp", "3"], {"pipeline_parallel_size": 3}),
        (["--max-model-len", "8192"], {"max_model_len": 8192}),
        (["--max-model-len=8192"], {"max_model_len": 8192}),
        (["--gpu_memory_utilization", "0.5"], {"gpu_memory_utilization": 0.5}),
        (["--gpu-memory-utilization=0.95"], {"gpu_memory_utilization": 0.95}),
        (["--quantization=bitsandbytes"], {"quantization": "bitsandbytes"}),
        (
            ["--enforce-eager", "--trust-remote-code"],
            {"enforce_eager": True, "trust_remote_code": True},
        ),
        (["--no-enable-prefix-caching"], {"enable_prefix_caching": False}),
        (["--enable-chunked-prefill"], {"enable_chunked_prefill": True}),
        # vLLM reads the last of a repeated flag
        (["-tp", "4", "--tensor-parallel-size", "2"], {"tensor_parallel_size": 2}),
    ],
)
def test_typed_settings_are_lifted(args: list[str], settings: dict[str, Any]) -> None:
    out = lift(args)
    assert out.settings == settings
    assert out.rest == []
    assert out.notices == []


def test_tke_style_item_with_spaces_is_several_words() -> None:
    out = lift(["--cuda-graph-sizes 1 2 4"])
    assert out.rest == ["--cuda-graph-sizes", "1", "2", "4"]
    assert out.settings == {}
    assert tokens(["--cuda-graph-sizes 1 2 4", "plain value"]) == [
        "--cuda-graph-sizes",
        "1",
        "2",
        "4",
        "plain value",  # not a flag: kept as one word
    ]


def test_tke_style_items_can_hold_typed_flags() -> None:
    out = lift(["--max-model-len 4096", "--disable-log-requests"])
    assert out.settings == {"max_model_len": 4096}
    assert out.rest == ["--disable-log-requests"]


def test_served_model_name_takes_several_values() -> None:
    out = lift(["--served-model-name", "a", "b", "--max-model-len", "8192", "--foo"])
    assert out.model == {"served_names": ("a", "b")}
    assert out.settings == {"max_model_len": 8192}
    assert out.rest == ["--foo"]


def test_served_model_name_with_equals() -> None:
    assert lift(["--served-model-name=a"]).model == {"served_names": ("a",)}


@pytest.mark.parametrize(
    ("args", "task"),
    [
        (["--task", "embed"], "embed"),
        (["--task", "embedding"], "embed"),
        (["--task=score"], "score"),
        (["--task", "generate"], "generate"),
        (["--runner", "pooling"], "embed"),
        (["--runner", "pooling", "--convert", "classify"], "classify"),
        (["--convert", "embed"], "embed"),
    ],
)
def test_task_flags_become_the_model_task(args: list[str], task: str) -> None:
    out = lift(args)
    assert out.model == {"task": task}
    assert out.rest == []


def test_unknown_task_value_stays_as_given() -> None:
    out = lift(["--task", "bogus"])
    assert out.model == {}
    assert out.rest == ["--task", "bogus"]


def test_value_that_does_not_parse_stays_as_given() -> None:
    out = lift(["--max-model-len", "lots"])
    assert out.settings == {}
    assert out.rest == ["--max-model-len", "lots"]


def test_flag_without_value_is_kept_with_a_notice() -> None:
    out = lift(["--max-model-len"])
    assert out.rest == ["--max-model-len"]
    assert out.notices == ["--max-model-len has no value; passed on as given"]


def test_host_and_port_are_dropped_with_notices() -> None:
    out = lift(["--port", "8000", "--host=0.0.0.0", "--seed", "1"])
    assert out.rest == ["--seed", "1"]
    assert out.notices == [
        "--port 8000 dropped: vfleet assigns hosts and ports",
        "--host 0.0.0.0 dropped: vfleet assigns hosts and ports",
    ]


def test_lora_and_tool_flags() -> None:
    out = lift(
        [
            "--lora-modules",
            "a=/x",
            "b=/y",
            "--max-loras",
            "4",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
        ]
    )
    assert out.lora == {"modules": {"a": "/x", "b": "/y"}, "enabled": True, "max_loras": 4}
    assert out.tools == {"enabled": True, "parser": "hermes"}
    assert out.rest == []


def test_unknown_flags_keep_their_order_and_values() -> None:
    args = ["--load-format=bitsandbytes", "--kv-cache-dtype", "fp8", "--swap-space", "4"]
    out = lift(args)
    assert out.rest == args
    assert out.settings == {}


FLAG_WORD = st.sampled_from(
    [
        "--seed",
        "--kv-cache-dtype",
        "fp8",
        "1",
        "--max-model-len",
        "2048",
        "-tp",
        "2",
        "--disable-log-requests",
        "--enforce-eager",
        "x=y",
    ]
)


@given(st.lists(FLAG_WORD, max_size=12))
def test_lift_never_loses_an_unknown_flag(words: list[str]) -> None:
    out = lift(words)
    for flag in ("--seed", "--kv-cache-dtype", "--disable-log-requests"):
        assert out.rest.count(flag) == words.count(flag)


# -- the vllm serve command --------------------------------------------------------------------


def model(**fields: Any) -> Model:
    data: dict[str, Any] = {"name": "m", "source": "hf://org/m"}
    data.update(fields)
    return Model.model_validate(data)


EMBED = model(
    task="embed",
    gpu=0.2,
    servedNames=["E"],
    vllm={
        "maxModelLen": 8192,
        "extraArgs": ["--disable-log-requests", "--cuda-graph-sizes", "1", "2", "4", "--seed", "7"],
    },
)

VERSIONS: list[Version | None] = [(0, 8, 0), (0, 10, 2), (0, 11, 1), (0, 26, 0), None]


def argv_for(
    m: Model, version: Version | None, gmu: float | None = None
) -> tuple[list[str], list[str]]:
    cmd = serve_command(m, "org/m", "127.0.0.1", 9000, version, gmu, engine_rules=RULES)
    return cmd.argv, cmd.notices


def after(argv: list[str], flag: str, n: int = 1) -> list[str]:
    i = argv.index(flag)
    return argv[i + 1 : i + 1 + n]


@pytest.mark.parametrize("version", VERSIONS)
def test_command_basics(version: Version | None) -> None:
    argv, _ = argv_for(EMBED, version)
    assert argv[:7] == ["vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "9000"]
    assert after(argv, "--served-model-name") == ["E"]
    assert after(argv, "--max-model-len") == ["8192"]
    assert after(argv, "--seed") == ["7"]  # unknown flags pass through
    assert argv.count("--port") == 1


def test_vllm_0_8_keeps_old_flags_and_uses_task() -> None:
    argv, notices = argv_for(EMBED, (0, 8, 0))
    assert after(argv, "--task") == ["embed"]
    assert "--runner" not in argv and "--convert" not in argv
    assert "--disable-log-requests" in argv
    assert after(argv, "--cuda-graph-sizes", 3) == ["1", "2", "4"]
    assert notices == []


def test_vllm_0_10_1_is_the_first_with_runner_and_convert() -> None:
    old, _ = argv_for(EMBED, (0, 10, 0))
    assert "--task" in old
    new, _ = argv_for(EMBED, (0, 10, 1))
    assert after(new, "--runner") == ["pooling"]
    assert after(new, "--convert") == ["embed"]
    assert "--task" not in new


def test_vllm_0_10_2_drops_disable_log_requests_with_a_notice() -> None:
    argv, notices = argv_for(EMBED, (0, 10, 2))
    assert "--disable-log-requests" not in argv
    assert after(argv, "--runner", 3) == ["pooling", "--convert", "embed"]
    assert "--task" not in argv
    assert after(argv, "--cuda-graph-sizes", 3) == ["1", "2", "4"]  # still valid before 0.11.1
    assert len(notices) == 1
    assert notices[0].startswith("--disable-log-requests dropped")
    assert "0.10.2" in notices[0]


@pytest.mark.parametrize("version", [(0, 11, 1), (0, 26, 0), None])
def test_vllm_0_11_1_renames_cuda_graph_sizes(version: Version | None) -> None:
    argv, notices = argv_for(EMBED, version)
    assert "--cuda-graph-sizes" not in argv
    assert after(argv, "--cudagraph-capture-sizes", 3) == ["1", "2", "4"]
    assert "--disable-log-requests" not in argv
    assert after(argv, "--runner", 3) == ["pooling", "--convert", "embed"]
    assert notices == [
        "--disable-log-requests dropped: vLLM >= 0.10.2 logs no requests unless "
        "--enable-log-requests is given",
        "--cuda-graph-sizes 1 2 4 is now --cudagraph-capture-sizes 1 2 4 (vLLM >= 0.11.1)",
    ]


def test_one_cuda_graph_size_is_the_largest_capture_size() -> None:
    notices: list[str] = []
    assert translate(["--cuda-graph-sizes", "512"], (0, 11, 1), notices, engine_rules=RULES) == [
        "--max-cudagraph-capture-size",
        "512",
    ]
    assert notices == [
        "--cuda-graph-sizes 512 is now --max-cudagraph-capture-size 512 (vLLM >= 0.11.1)"
    ]


def test_cuda_graph_sizes_with_equals_and_commas() -> None:
    assert translate(["--cuda-graph-sizes=1,2,4", "--seed", "1"], None, [], engine_rules=RULES) == [
        "--cudagraph-capture-sizes",
        "1",
        "2",
        "4",
        "--seed",
        "1",
    ]


def test_translate_leaves_everything_else_alone() -> None:
    args = ["--seed", "1", "--kv-cache-dtype", "fp8", "--enable-log-requests"]
    notices: list[str] = []
    assert translate(args, None, notices, engine_rules=RULES) == args
    assert notices == []


@pytest.mark.parametrize(
    ("task", "old", "new"),
    [
        ("embed", ["--task", "embed"], ["--runner", "pooling", "--convert", "embed"]),
        ("classify", ["--task", "classify"], ["--runner", "pooling", "--convert", "classify"]),
        ("score", ["--task", "score"], ["--runner", "pooling", "--convert", "classify"]),
        ("generate", [], ["--runner", "generate"]),
        ("auto", [], []),
    ],
)
def test_task_flags_by_version(task: str, old: list[str], new: list[str]) -> None:
    m = model(task=task)
    base = ["vllm", "serve", "org/m", "--host", "h", "--port", "1", "--served-model-name", "m"]
    assert serve_command(m, "org/m", "h", 1, (0, 8, 0), engine_rules=RULES).argv == base + old
    assert serve_command(m, "org/m", "h", 1, (0, 26, 0), engine_rules=RULES).argv == base + new


def test_derived_memory_is_used_only_when_the_model_sets_none() -> None:
    argv, _ = argv_for(model(gpu=0.3), (0, 26, 0), gmu=0.27)
    assert after(argv, "--gpu-memory-utilization") == ["0.27"]
    own = model(gpu=0.3, vllm={"gpuMemoryUtilization": 0.15})
    argv, _ = argv_for(own, (0, 26, 0), gmu=0.27)
    assert after(argv, "--gpu-memory-utilization") == ["0.15"]
    assert argv.count("--gpu-memory-utilization") == 1
    argv, _ = argv_for(model(), (0, 26, 0), gmu=None)
    assert "--gpu-memory-utilization" not in argv


def test_typed_settings_become_flags() -> None:
    m = model(
        source="hf://org/m@v2",
        servedNames=["a", "b"],
        vllm={
            "tensorParallelSize": 4,
            "pipelineParallelSize": 2,
            "maxNumSeqs": 64,
            "quantization": "awq",
            "dtype": "bfloat16",
            "enablePrefixCaching": False,
            "enforceEager": True,
            "trustRemoteCode": True,
            "lora": {"enabled": True, "maxLoras": 2, "modules": {"sql": "/l/sql"}},
            "toolCalling": {"enabled": True, "parser": "hermes"},
        },
    )
    argv, _ = argv_for(m, None)
    assert after(argv, "--served-model-name", 2) == ["a", "b"]
    assert after(argv, "--revision") == ["v2"]
    assert after(argv, "--tensor-parallel-size") == ["4"]
    assert after(argv, "--pipeline-parallel-size") == ["2"]
    assert after(argv, "--max-num-seqs") == ["64"]
    assert after(argv, "--quantization") == ["awq"]
    assert after(argv, "--dtype") == ["bfloat16"]
    assert "--no-enable-prefix-caching" in argv
    assert "--enforce-eager" in argv and "--trust-remote-code" in argv
    assert after(argv, "--enable-lora", 3) == ["--max-loras", "2", "--lora-modules"]
    assert after(argv, "--lora-modules") == ["sql=/l/sql"]
    assert "--enable-auto-tool-choice" in argv
    assert after(argv, "--tool-call-parser") == ["hermes"]


def test_custom_executable() -> None:
    cmd = serve_command(
        model(), "org/m", "h", 1, None, None, ("/opt/venv/bin/vllm",), engine_rules=RULES
    )
    assert cmd.argv[:2] == ["/opt/venv/bin/vllm", "serve"]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("0.26.0", (0, 26, 0)),
        ("0.10.1.1", (0, 10, 1)),
        ("0.11.1rc2", (0, 11, 1)),
        ("0.9.2+cu126", (0, 9, 2)),
        ("0.11.1.dev42+gabc", (0, 11, 1)),
        ("", None),
        (None, None),
        ("dev", None),
    ],
)
def test_parse_version(text: str | None, version: Version | None) -> None:
    assert parse_version(text) == version


# -- the simulator's command -------------------------------------------------------------------


def test_sim_command_mirrors_the_model() -> None:
    argv = sim_command(EMBED, "org/m", "127.0.0.1", 9001, gpu_memory_utilization=0.18)
    assert argv[argv.index("sim") + 1 : argv.index("sim") + 3] == ["--model", "org/m"]
    assert after(argv, "--port") == ["9001"]
    assert after(argv, "--served-model-name") == ["E"]
    assert after(argv, "--task") == ["embed"]
    assert after(argv, "--max-model-len") == ["8192"]
    assert after(argv, "--gpu-memory-utilization") == ["0.18"]
    # vLLM-only flags do not reach the simulator
    assert "--cuda-graph-sizes" not in argv and "--disable-log-requests" not in argv
    assert "--enable-auto-tool-choice" not in argv


def test_sim_command_turns_on_auto_tool_choice_with_tool_calling() -> None:
    # the simulator, like vLLM, refuses tool_choice "auto" without both flags
    chat = model(vllm={"toolCalling": {"enabled": True, "parser": "mistral"}})
    argv = sim_command(chat, "org/m", "127.0.0.1", 9001)
    assert "--enable-auto-tool-choice" in argv
    assert after(argv, "--tool-call-parser") == ["mistral"]


# -- the engine rules (charts/vfleet/files/engine-rules.yaml) ----------------------------------

CHART = Path(__file__).resolve().parents[1] / "charts" / "vfleet"


def rules_dict() -> dict[str, Any]:
    raw = yaml.safe_load((CHART / "files" / "engine-rules.yaml").read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def test_every_rule_names_a_spec_field_and_a_chart_key() -> None:
    """The table's two ends exist: the fleet spec's field and the chart's values key."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    spec = schema["properties"]["servingEngineSpec"]["properties"]["modelSpec"]["items"]
    chart_keys = {*spec["properties"]["vllmConfig"]["properties"], *spec["properties"]}
    r = load_rules(CHART)
    assert r.settings
    for s in r.settings:
        assert s.field in EngineSettings.model_fields, s.field
        assert s.key in chart_keys, s.key
    assert r.lora.settings
    for s in r.lora.settings:
        assert s.field in Lora.model_fields, s.field
        assert s.key in chart_keys, s.key
    for keyed in (r.lora.enable, r.lora.modules, r.tools.enable, r.tools.parser):
        assert keyed.key in chart_keys, keyed.key
    assert set(r.convert) == {"embed", "classify", "score", "reward"}


def test_lifting_and_writing_follow_the_rules_given() -> None:
    """A flag the rules file adds is read into its field and written back in its place."""
    raw = rules_dict()
    raw["settings"] = [
        {"field": "dtype", "key": "dtype", "flag": "--kind-of-float", "type": "str"},
        *[s for s in raw["settings"] if s["field"] != "dtype"],
    ]
    r = parse(raw)
    out = lift(["--kind-of-float", "half", "--dtype", "bf16"], r)
    assert out.settings == {"dtype": "half"}
    assert out.rest == ["--dtype", "bf16"]  # no longer a typed flag under these rules
    argv = serve_command(model(vllm={"dtype": "half"}), "m", "h", 1, engine_rules=r).argv
    assert argv[argv.index("--served-model-name") + 2 :] == ["--kind-of-float", "half"]


def test_rewrites_come_from_the_rules() -> None:
    raw = rules_dict()
    raw["rewrites"] = [
        {"flag": "--old-name", "since": "0.20", "to": "--new-name"},
        {"flag": "--noisy", "since": "0.5.0", "drop": True, "why": "gone in 0.5"},
    ]
    r = parse(raw)
    notices: list[str] = []
    args = ["--old-name=1,2", "--noisy", "--cuda-graph-sizes", "8"]
    assert translate(args, (0, 26, 0), notices, engine_rules=r) == [
        "--new-name",
        "1",
        "2",
        "--cuda-graph-sizes",
        "8",
    ]
    assert notices == [
        "--old-name 1 2 is now --new-name 1 2 (vLLM >= 0.20)",
        "--noisy dropped: gone in 0.5",
    ]
    assert translate(args, (0, 4, 0), [], engine_rules=r) == args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("rewrites"), "missing key 'rewrites'"),
        (lambda d: d["settings"][0].update(type="number"), "type 'number' is not one of"),
        (lambda d: d["rewrites"][0].update(to="--x"), "give either `drop: true` or `to`"),
        (lambda d: d["gpuShare"].update(headroomPercent=0.9), "a whole percent, 1-100"),
        (lambda d: d["task"].update(runnerSince="soon"), "'soon' is not a version"),
        (lambda d: d["settings"][0].update(place="router"), "place 'router' is not one of"),
        (lambda d: d["lora"].pop("enable"), "missing key 'enable'"),
        (lambda d: d["model"]["revision"].pop("sources"), "missing key 'sources'"),
    ],
)
def test_a_broken_rules_file_is_one_clear_error(change: Any, message: str) -> None:
    raw = rules_dict()
    change(raw)
    with pytest.raises(RulesError, match="^where: .*" + re.escape(message)):
        parse(raw, "where")


def test_rules_come_from_the_chart_vfleet_chart_names(tmp_path: Path, monkeypatch: Any) -> None:
    shutil.copytree(CHART / "files", tmp_path / "files")
    shutil.copy(CHART / "Chart.yaml", tmp_path / "Chart.yaml")
    path = tmp_path / "files" / "engine-rules.yaml"
    monkeypatch.setenv("VFLEET_CHART", str(tmp_path))
    assert rules_path() == path
    assert load_rules().headroom_pct == 90
    edited = path.read_text().replace("headroomPercent: 90", "headroomPercent: 70  # edited")
    path.write_text(edited)
    assert load_rules().headroom_pct == 70  # an edited file is read again
    path.unlink()
    with pytest.raises(RulesError, match=re.escape("engine-rules.yaml")):
        load_rules()


def test_lifting_reads_the_model_lora_and_tool_flags_the_rules_name() -> None:
    """Renamed in the rules, the served-name, LoRA and tool flags are read under the new names
    and written under them; the old names are no longer vfleet's."""
    raw = rules_dict()
    raw["model"]["served"] = "--names"
    raw["lora"]["settings"][0]["flag"] = "--adapters-at-once"
    raw["toolCalling"]["parser"]["flag"] = "--parser"
    r = parse(raw)
    out = lift(["--names", "a", "b", "--adapters-at-once", "3", "--parser", "hermes"], r)
    assert out.model == {"served_names": ("a", "b")}
    assert out.lora == {"max_loras": 3}
    assert out.tools == {"parser": "hermes"}
    assert out.rest == []
    old = lift(["--served-model-name", "a", "--max-loras", "3", "--tool-call-parser", "x"], r)
    assert (old.model, old.lora, old.tools) == ({}, {}, {})
    assert old.rest == ["--served-model-name", "a", "--max-loras", "3", "--tool-call-parser", "x"]
    m = model(vllm={"lora": {"maxLoras": 3}, "toolCalling": {"parser": "hermes"}})
    argv = serve_command(m, "m", "h", 1, engine_rules=r).argv
    assert argv[argv.index("--names") + 2 :] == ["--parser", "hermes"]  # LoRA is off
    m = model(vllm={"lora": {"enabled": True, "maxLoras": 3}})
    argv = serve_command(m, "m", "h", 1, engine_rules=r).argv
    assert argv[argv.index("--enable-lora") :] == ["--enable-lora", "--adapters-at-once", "3"]
